"""The int8 and bf16 GEMMs on AMX tiles (`tdpbusd`, `tdpbf16ps`), for hosts with amx_int8 / amx_bf16.

The wheel has no AMX intrinsic, but LLVM's work through `call_llvm_intrin`: `ldtilecfg`,
`tilezero`, `tileloadd64`, `tdpbusd`, `tilestored64`, `tilerelease` (tile numbers must be
immediates, so every call is spelled out). Each parallel task owns an output block of rb x cb
16 x 16 int32 tiles (tmm0-3), loads rb A tiles (16 rows x 64 u8 of the quantised input, tmm4-5)
and cb B tiles (16 groups of 4 k x 16 outputs of the packed weights, tmm6-7) per 64 k, stores
its tiles into a buffer and applies the epilogue (int8: the VNNI kernel's dequantisation,
dlrmlib.schedules.reduced). int8 weights use the VNNI packing with K padded to 64; bf16 ones
pairs of K per output, [N/16, Kp/2, 16, 2], with K padded to 32.

Linux hands out the tile state only on request: every call first asks for it (syscall 158,
arch_prctl ARCH_REQ_XCOMP_PERM 0x1023, XFEATURE_XTILEDATA 18; cheap once granted), so neither
runner needs to know; without it the first tile instruction raises SIGILL. The tile
configuration is per thread, so each task loads it.
"""
from __future__ import annotations

from dlrmlib.core.errors import DlrmError
from dlrmlib.schedules.dense import DenseShape
from dlrmlib.schedules.reduced import parse_prim_func, padded_k

TILE = 16  # rows and int32 columns of an AMX tile
K_STEP = 64  # bytes per tile row: 64 u8 of K per tdpbusd
MATTR = ["+amx-tile", "+amx-int8", "+amx-bf16"]  # what LLVM needs to emit them (mcpu may not say)
ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18


def amx_supported(shape: DenseShape) -> bool:
    return shape.m % TILE == 0 and shape.n % TILE == 0 and not shape.narrow


def amx_blocks(shape: DenseShape, rb: int = 0, cb: int = 0) -> tuple[int, int]:
    """(rb, cb): 16-row and 16-column tiles per task, at most 2 x 2 (tmm0-3 hold the sums):
    given (knobs from a kernel log, checked to fit), or the most that divide M and N."""
    rb = rb or (2 if shape.m % (2 * TILE) == 0 else 1)
    cb = cb or (2 if shape.n % (2 * TILE) == 0 else 1)
    if rb > 2 or cb > 2 or shape.m % (rb * TILE) or shape.n % (cb * TILE):
        raise DlrmError(f"int8 knobs mr={rb}, nb={cb} (AMX tiles) do not fit {shape.name} (at most 2 x 2 tiles of "
                        f"16 x 16 that divide {shape.m} x {shape.n})")
    return rb, cb


def _call(name: str, *args: str) -> str:
    return f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.{name}", {", ".join(args)}))'


def amx_int8_dense_func(shape: DenseShape, rb: int = 0, cb: int = 0, parallel: bool | None = None):
    """u8 x s8 -> s32 tiles (tdpbusd), then the VNNI kernel's dequantising epilogue; rb x cb
    tiles per task as amx_blocks, `parallel` None: by the layer's size."""
    m, n, kp = shape.m, shape.n, padded_k(shape.k, K_STEP)
    col = "t % {cols} * {width} + j"
    value = ("T.Cast('float32', acc[i * {width} + j] - xz[{row}] * wsum[{col}]) * (xs[{row}] * ws[{col}]) "
             "+ b[{col}]")
    params = (f'xq: T.Buffer(({m}, {kp}), "uint8"), xs: T.Buffer(({m},), "float32"), xz: T.Buffer(({m},), "int32"), '
              f'wq: T.Buffer(({n // 16}, {kp // 4}, 64), "int8"), ws: T.Buffer(({n},), "float32"), '
              f'wsum: T.Buffer(({n},), "int32"), ')
    return _amx_func(shape, f"amx_int8_{shape.name}", params, "tdpbusd", "int32", kp, 1, value.replace("{col}", col),
                     amx_blocks(shape, rb, cb), shape.parallel if parallel is None else parallel)


def amx_bf16_dense_func(shape: DenseShape):
    """bf16 x bf16 -> fp32 tiles (tdpbf16ps) over activations and weights as bf16 bits
    (dlrmlib.schedules.reduced.bf16_rows_func, bf16_pair_pack_func), then bias and ReLU."""
    m, n, kp = shape.m, shape.n, padded_k(shape.k, K_STEP // 2)
    col = "t % {cols} * {width} + j"
    params = (f'xq: T.Buffer(({m}, {kp}), "uint16"), wq: T.Buffer(({n // 16}, {kp // 2}, 32), "uint16"), ')
    return _amx_func(shape, f"amx_bf16_{shape.name}", params, "tdpbf16ps", "float32", kp, 2,
                     f"acc[i * {{width}} + j] + b[{col}]")


def _amx_func(shape: DenseShape, name: str, params: str, product: str, acc_dtype: str, kp: int, item: int,
              value: str, blocks: tuple[int, int] | None = None, parallel: bool | None = None):
    """The tile loop shared by both precisions: `item` bytes per activation element, so a tile
    row holds 64 / item of K and a B tile row 16 outputs x (4 / item) of K."""
    m, n = shape.m, shape.n
    rb, cb = blocks or amx_blocks(shape)
    threads = shape.parallel if parallel is None else parallel
    col_blocks = n // (TILE * cb)
    width = TILE * cb  # columns of the task's stack buffer
    step = K_STEP // item  # K per tile row
    row0, panel0 = f"t // {col_blocks} * {rb * TILE}", f"t % {col_blocks} * {cb}"
    pad = " " * 12
    loads = [_call("tileloadd64", f"T.int8({4 + r})", f"T.address_of(xq[{row0} + {r * TILE}, g * {step}])",
                   f"T.int64({kp * item})") for r in range(rb)]
    loads += [_call("tileloadd64", f"T.int8({6 + c})", f"T.address_of(wq[{panel0} + {c}, g * {TILE}, 0])",
                    "T.int64(64)") for c in range(cb)]
    products = [_call(product, f"T.int8({r * cb + c})", f"T.int8({4 + r})", f"T.int8({6 + c})")
                for r in range(rb) for c in range(cb)]
    stores = [_call("tilestored64", f"T.int8({r * cb + c})", f"T.address_of(acc[{r * TILE * width + c * TILE}])",
                    f"T.int64({width * 4})") for r in range(rb) for c in range(cb)]
    zeros = [_call("tilezero", f"T.int8({t})") for t in range(rb * cb)]
    value = value.format(cols=col_blocks, width=width, row=f"{row0} + i")
    row, col = f"{row0} + i", f"t % {col_blocks} * {width} + j"
    nl = "\n"
    source = f'''
@T.prim_func
def {name}({params}b: T.Buffer(({n},), "float32"), out: T.Buffer(({m}, {n}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    T.evaluate(T.call_extern("int64", "syscall", T.int64({ARCH_PRCTL}), T.int64({ARCH_REQ_XCOMP_PERM}),
                             T.int64({XFEATURE_XTILEDATA})))
    for t in {"T.parallel" if threads else "range"}({m // (rb * TILE) * col_blocks}):
        config = T.decl_buffer((64,), "uint8")
        acc = T.decl_buffer(({rb * TILE * width},), "{acc_dtype}")
        for c in range(64):
            config[c] = T.uint8(0)
        config[0] = T.uint8(1)
        for c in range(8):
            config[16 + 2 * c] = T.uint8(64)
            config[48 + c] = T.uint8(16)
        {_call("ldtilecfg", "T.address_of(config[0])")}
        {(nl + "        ").join(zeros)}
        for g in range({kp // step}):
{nl.join(pad + line for line in loads + products)}
        {(nl + "        ").join(stores)}
        {_call("tilerelease")}
        for i in range({rb * TILE}):
            for j in T.vectorized({width}):
                out[{row}, {col}] = {f"T.max({value}, T.float32(0))" if shape.relu else value}
'''
    return parse_prim_func(source, name)
