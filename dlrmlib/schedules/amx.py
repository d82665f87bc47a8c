"""The int8 GEMM on AMX tiles (`tdpbusd`), for hosts with amx_int8.

The wheel has no AMX intrinsic, but LLVM's work through `call_llvm_intrin`: `ldtilecfg`,
`tilezero`, `tileloadd64`, `tdpbusd`, `tilestored64`, `tilerelease` (tile numbers must be
immediates, so every call is spelled out). Each parallel task owns an output block of rb x cb
16 x 16 int32 tiles (tmm0-3), loads rb A tiles (16 rows x 64 u8 of the quantised input, tmm4-5)
and cb B tiles (16 groups of 4 k x 16 outputs of the packed weights, tmm6-7) per 64 k, stores
its tiles into a stack buffer and applies the same epilogue as the VNNI kernel
(dlrmlib.schedules.reduced). The weights use the VNNI packing with K padded to 64.

Linux hands out the tile state only on request: every call first asks for it (syscall 158,
arch_prctl ARCH_REQ_XCOMP_PERM 0x1023, XFEATURE_XTILEDATA 18; cheap once granted), so neither
runner needs to know; without it the first tile instruction raises SIGILL. The tile
configuration is per thread, so each task loads it.
"""
from __future__ import annotations

from dlrmlib.schedules.dense import DenseShape
from dlrmlib.schedules.reduced import parse_prim_func, padded_k

TILE = 16  # rows and int32 columns of an AMX tile
K_STEP = 64  # bytes per tile row: 64 u8 of K per tdpbusd
MATTR = ["+amx-tile", "+amx-int8", "+amx-bf16"]  # what LLVM needs to emit them (mcpu may not say)
ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18


def amx_supported(shape: DenseShape) -> bool:
    return shape.m % TILE == 0 and shape.n % TILE == 0 and not shape.narrow


def amx_blocks(shape: DenseShape) -> tuple[int, int]:
    """(rb, cb): 16-row and 16-column tiles per task, at most 2 x 2 (tmm0-3 hold the sums)."""
    return (2 if shape.m % (2 * TILE) == 0 else 1), (2 if shape.n % (2 * TILE) == 0 else 1)


def _call(name: str, *args: str) -> str:
    return f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.{name}", {", ".join(args)}))'


def amx_int8_dense_func(shape: DenseShape):
    m, k, n = shape.m, shape.k, shape.n
    kp = padded_k(k, K_STEP)
    rb, cb = amx_blocks(shape)
    col_blocks = n // (TILE * cb)
    width = TILE * cb  # int32 columns of the task's stack buffer
    row0, panel0 = f"t // {col_blocks} * {rb * TILE}", f"t % {col_blocks} * {cb}"
    pad = " " * 12
    loads = [_call("tileloadd64", f"T.int8({4 + r})", f"T.address_of(xq[{row0} + {r * TILE}, g * {K_STEP}])",
                   f"T.int64({kp})") for r in range(rb)]
    loads += [_call("tileloadd64", f"T.int8({6 + c})", f"T.address_of(wq[{panel0} + {c}, g * {K_STEP // 4}, 0])",
                    "T.int64(64)") for c in range(cb)]
    products = [_call("tdpbusd", f"T.int8({r * cb + c})", f"T.int8({4 + r})", f"T.int8({6 + c})")
                for r in range(rb) for c in range(cb)]
    stores = [_call("tilestored64", f"T.int8({r * cb + c})", f"T.address_of(acc[{r * TILE * width + c * TILE}])",
                    f"T.int64({width * 4})") for r in range(rb) for c in range(cb)]
    zeros = [_call("tilezero", f"T.int8({t})") for t in range(rb * cb)]
    row, col = f"{row0} + i", f"t % {col_blocks} * {width} + j"
    value = (f"T.Cast('float32', acc[i * {width} + j] - xz[{row}] * wsum[{col}]) * (xs[{row}] * ws[{col}]) "
             f"+ b[{col}]")
    name = f"amx_int8_{shape.name}"
    nl = "\n"
    source = f'''
@T.prim_func
def {name}(xq: T.Buffer(({m}, {kp}), "uint8"), xs: T.Buffer(({m},), "float32"), xz: T.Buffer(({m},), "int32"),
           wq: T.Buffer(({n // 16}, {kp // 4}, 64), "int8"), ws: T.Buffer(({n},), "float32"),
           wsum: T.Buffer(({n},), "int32"), b: T.Buffer(({n},), "float32"), out: T.Buffer(({m}, {n}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    T.evaluate(T.call_extern("int64", "syscall", T.int64({ARCH_PRCTL}), T.int64({ARCH_REQ_XCOMP_PERM}),
                             T.int64({XFEATURE_XTILEDATA})))
    for t in {"T.parallel" if shape.parallel else "range"}({m // (rb * TILE) * col_blocks}):
        config = T.decl_buffer((64,), "uint8", scope="local")
        acc = T.decl_buffer(({rb * TILE * width},), "int32", scope="local")
        for c in range(64):
            config[c] = T.uint8(0)
        config[0] = T.uint8(1)
        for c in range(8):
            config[16 + 2 * c] = T.uint8(64)
            config[48 + c] = T.uint8(16)
        {_call("ldtilecfg", "T.address_of(config[0])")}
        {(nl + "        ").join(zeros)}
        for g in range({kp // K_STEP}):
{nl.join(pad + line for line in loads + products)}
        {(nl + "        ").join(stores)}
        {_call("tilerelease")}
        for i in range({rb * TILE}):
            for j in T.vectorized({width}):
                out[{row}, {col}] = {f"T.max({value}, T.float32(0))" if shape.relu else value}
'''
    return parse_prim_func(source, name)
