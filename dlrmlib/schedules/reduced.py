"""Reduced-precision Dense kernels: int8 (u8 x s8 -> s32 with AVX512-VNNI) and bf16 weights.

int8: weights per output channel, symmetric: s_w[j] = max|W[j, :]| / 127, Wq = round(W / s_w),
packed once at build time into [N/16, Kp/4, 64] (16 outputs x 4 consecutive k: one `vpdpbusd`
operand; K padded to a multiple of 4 with zero weights) together with s_w and the column sums of
Wq. Activations: u8, asymmetric, one scale and zero point per row of every batch (dynamic, so no
calibration: the rows' min/max are computed by a small kernel before each GEMM). The GEMM keeps
an mr x (nb * 16) int32 tile in registers over K and applies, while the tile is there,
out = (acc - z_x[i] * colsum[j]) * s_x[i] * s_w[j] + b[j], then the ReLU.

`vpdpbusd` is called directly through `call_llvm_pure_intrin` with `<64 x i8>` operands, which is
what the wheel's LLVM 22 declares (TVM's own `dot_16x4_vnni` passes int32x16 and does not compile;
importing `tvm.s_tir.tensor_intrin` to re-register it costs ~27 s per process).

bf16: weights rounded to bf16 (round to nearest even) and packed [N/bn, K, bn] as uint16 bits
(numpy and DLPack have no bfloat16); the kernel widens them to fp32 in registers (a 16-bit
shift) and accumulates in fp32: half the weight bytes, the same FMAs. (`vdpbf16ps` does not
survive TVM's bf16 legalisation, see docs/precision.md.)
"""
from __future__ import annotations

from dlrmlib.core.errors import DlrmError
from dlrmlib.schedules.dense import DenseShape, register_tiles, row_block
from dlrmlib.schedules.script import parse_prim_func as _parse


def parse_prim_func(source: str, name: str, root_block: bool = False):
    """As dlrmlib.schedules.script's; with `root_block`, the body inside a root block (s_tir):
    Relax's HasReshapePattern, run on the quantisation kernel (several outputs), insists on one."""
    if not root_block:
        return _parse(source.replace("@T.prim_func(s_tir=True)", "@T.prim_func"), name)
    head, body = source.split('    T.func_attr({"tirx.noalias": True})\n', 1)
    indented = "".join(f"    {line}" if line.strip() else line for line in body.splitlines(keepends=True))
    return _parse(f'{head}    T.func_attr({{"tirx.noalias": True}})\n    with T.sblock("root"):\n{indented}', name)

PRECISIONS = ("fp32", "bf16", "int8")
VNNI_LANES = 16  # int32 accumulators per zmm; one packed weight vector = 16 outputs x 4 k
MAX_TILE_VECTORS = 24  # zmm accumulators of one int8 tile (32 registers: the rest load and broadcast)
BF16_PANEL = 32


def padded_k(k: int, multiple: int = 4) -> int:
    """K rounded up: to 4 for a `vpdpbusd` operand, to 64 for an AMX tile row."""
    return (k + multiple - 1) // multiple * multiple


def int8_supported(shape: DenseShape) -> bool:
    return shape.n % VNNI_LANES == 0 and not shape.narrow


def int8_tile(shape: DenseShape, mr: int = 0, nb: int = 0) -> tuple[int, int]:
    """(mr rows, nb 16-wide panels) of the register tile: given (knobs from a kernel log, checked
    to fit), or the widest panel group that divides N, then the most rows that divide M within the
    accumulator budget."""
    panels = shape.n // VNNI_LANES
    nb = nb or next(b for b in (4, 2, 1) if panels % b == 0)
    mr = mr or next(r for r in range(max(1, min(MAX_TILE_VECTORS // nb, shape.m)), 0, -1) if shape.m % r == 0)
    if panels % nb or shape.m % mr or mr * nb > MAX_TILE_VECTORS:
        raise DlrmError(f"int8 knobs mr={mr}, nb={nb} do not fit {shape.name} with VNNI (mr must divide {shape.m}, "
                        f"nb {panels} panels of 16, mr x nb <= {MAX_TILE_VECTORS} accumulators)")
    return mr, nb


# -- build-time weight transforms (lifted into main_transform_params) --------------------------

def _int8_weights(n: int, k: int, kp: int):
    """TE stages: W -> (s_w, Wq padded to Kp) with Wq = clamp(round(W / s_w), -127, 127)."""
    from tvm import te, tirx

    w = te.placeholder((n, k), "float32", name="w")
    r = te.reduce_axis((0, k), name="r")
    amax = te.compute((n,), lambda j: te.max(tirx.abs(w[j, r]), axis=r), name="amax")
    scale = te.compute((n,), lambda j: tirx.Select(amax[j] > 0, amax[j] / 127.0, tirx.const(1.0, "float32")),
                       name="scale")
    q = te.compute((n, kp), lambda j, c: tirx.if_then_else(
        c < k, tirx.max(tirx.min(tirx.nearbyint(w[j, tirx.min(c, k - 1)] / scale[j]), 127.0), -127.0), 0.0
    ).astype("int8"), name="q")
    return w, scale, q, kp


def int8_pack_func(n: int, k: int, kp: int):
    """W[N, K] -> Wq packed [N/16, Kp/4, 64] int8 (element [j, c] at [j/16, c/4, (j%16)*4 + c%4]);
    the same layout is a sequence of AMX B tiles (16 rows of 4-byte groups x 16 columns)."""
    from tvm import te

    w, _, q, kp = _int8_weights(n, k, kp)
    packed = te.compute((n // VNNI_LANES, kp // 4, 64), lambda p, g, l: q[p * VNNI_LANES + l // 4, g * 4 + l % 4],
                        name="pack")
    return te.create_prim_func([w, packed]).with_attr("global_symbol", f"int8_pack_n{n}_k{k}_kp{kp}")


def int8_scale_func(n: int, k: int, kp: int):
    """W[N, K] -> s_w[N], the per-output-channel weight scale."""
    from tvm import te

    w, scale, _, _ = _int8_weights(n, k, kp)
    out = te.compute((n,), lambda j: scale[j], name="out")
    return te.create_prim_func([w, out]).with_attr("global_symbol", f"int8_scale_n{n}_k{k}_kp{kp}")


def int8_colsum_func(n: int, k: int, kp: int):
    """W[N, K] -> sum_k Wq[j, k] (int32): the zero-point correction of the u8 activations."""
    from tvm import te

    w, _, q, kp = _int8_weights(n, k, kp)
    r = te.reduce_axis((0, kp), name="r")
    out = te.compute((n,), lambda j: te.sum(q[j, r].astype("int32"), axis=r), name="colsum")
    return te.create_prim_func([w, out]).with_attr("global_symbol", f"int8_colsum_n{n}_k{k}_kp{kp}")


def bf16_pack_func(n: int, k: int, bn: int = BF16_PANEL):
    """W[N, K] -> panels [N/bn, K, bn] of bf16 bits (uint16), rounded to nearest even."""
    from tvm import te

    w = te.placeholder((n, k), "float32", name="w")
    packed = te.compute((n // bn, k, bn), lambda j, kk, i: _bf16_bits(w[j * bn + i, kk]), name="pack")
    return te.create_prim_func([w, packed]).with_attr("global_symbol", f"bf16_pack_n{n}_k{k}_p{bn}")


def bf16_pair_pack_func(n: int, k: int, kp: int):
    """W[N, K] -> bf16 bits [N/16, Kp/2, 32] (element [j, c] at [j/16, c/2, (j%16)*2 + c%2]; K
    padded with zeros): AMX B tiles for tdpbf16ps."""
    from tvm import te, tirx

    w = te.placeholder((n, k), "float32", name="w")

    def bits(p, g, l):
        j, c = p * 16 + l // 2, g * 2 + l % 2
        return tirx.if_then_else(c < k, _bf16_bits(w[j, tirx.min(c, k - 1)]), tirx.const(0, "uint16"))

    packed = te.compute((n // 16, kp // 2, 32), bits, name="pack")
    return te.create_prim_func([w, packed]).with_attr("global_symbol", f"bf16_pairs_n{n}_k{k}_kp{kp}")


def _bf16_bits(value):
    """fp32 -> bf16 bits, round to nearest even (uint16)."""
    from tvm import tirx

    u = tirx.reinterpret("uint32", value)
    rounded = u + tirx.const(0x7FFF, "uint32") + ((u >> tirx.const(16, "uint32")) & tirx.const(1, "uint32"))
    return (rounded >> tirx.const(16, "uint32")).astype("uint16")


def bf16_rows_func(m: int, k: int, kp: int, parallel: bool):
    """x[M, K] f32 -> bf16 bits [M, Kp] (round to nearest even, K padded with zeros): the AMX
    bf16 kernel's activations, converted per batch."""
    name = f"to_bf16_m{m}_k{k}_kp{kp}"
    bits = ("T.Cast('uint16', (T.reinterpret('uint32', x[i, r]) + T.uint32(32767) + "
            "((T.reinterpret('uint32', x[i, r]) >> T.uint32(16)) & T.uint32(1))) >> T.uint32(16))")
    source = f'''
@T.prim_func(s_tir=True)
def {name}(x: T.Buffer(({m}, {k}), "float32"), xb: T.Buffer(({m}, {kp}), "uint16")):
    T.func_attr({{"tirx.noalias": True}})
    for i in {"T.parallel" if parallel else "range"}({m}):
        for r0 in range({k // 16}):
            for l in T.vectorized(16):
                xb[i, r0 * 16 + l] = {bits.replace("x[i, r]", "x[i, r0 * 16 + l]")}
        for r in range({k - k % 16}, {k}):
            xb[i, r] = {bits}
        for r in range({k}, {kp}):
            xb[i, r] = T.uint16(0)
'''
    return parse_prim_func(source, name, root_block=True)


# -- the kernels -------------------------------------------------------------------------------

QUANTIZE_ROWS = 8  # rows per task: a buffer declared inside a parallel loop costs a workspace allocation
MINMAX_CHAINS = 4  # 16-lane min/max accumulators per row, folded into one after the pass


def quantize_rows_func(m: int, k: int, kp: int, parallel: bool, lanes: int = 16, chains: int = MINMAX_CHAINS,
                       levels: int = 255, dtype: str = "uint8"):
    """x[M, K] f32 -> (xq[M, Kp] u8, s_x[M], z_x[M]): per row, the range [min(x, 0), max(x, 0)]
    mapped onto 0..levels (zero exactly representable; ReLU outputs get z = 0). No scalar
    temporaries: TVMScript makes each a buffer, which inside a parallel loop is a heap allocation.
    `chains` independent min/max accumulators per row (1: the former kernel, kept to compare);
    `dtype` int16: the same values widened (AVX2's vpmaddwd operands)."""
    main = k - k % lanes
    rows = next(r for r in (QUANTIZE_ROWS, 4, 2, 1) if m % r == 0)
    # independent min/max chains: one chain waits on vminps' latency for every vector
    chains = chains if main // lanes >= chains else 1
    vectors, blocked = main // lanes, main // lanes // chains * chains
    name = f"quantize_u8_m{m}_k{k}_kp{kp}" + ("" if levels == 255 else f"_l{levels}") + (
        "" if dtype == "uint8" else f"_{dtype}")
    i = f"t * {rows} + ii"
    tail_minmax = "" if main == k else (
        f"\n            for r in range({main}, {k}):\n"
        f"                lo[0] = T.min(lo[0], x[{i}, r])\n                hi[0] = T.max(hi[0], x[{i}, r])")
    merge = "\n".join(f"            for l in T.vectorized({lanes}):\n"
                      f"                lo[l] = T.min(lo[l], lo[{c * lanes} + l])\n                hi[l] = T.max(hi[l], hi[{c * lanes} + l])"
                      for c in range(1, chains))
    fold = merge + ("\n" if merge else "") + "\n".join(f"            for l in T.vectorized({h}):\n"
                     f"                lo[l] = T.min(lo[l], lo[l + {h}])\n                hi[l] = T.max(hi[l], hi[l + {h}])"
                     for h in (8, 4, 2, 1) if h < lanes)
    # floor(v + 0.5), not nearbyint: TVM's vectoriser leaves a loop with nearbyint scalar
    quant = (f"T.Cast('{dtype}', T.max(T.min(T.floor(x[{i}, {{c}}] * (T.float32(1) / xs[{i}]) + T.float32(0.5)) + "
             f"T.Cast('float32', xz[{i}]), T.float32({levels})), T.float32(0)))")
    source = f'''
@T.prim_func(s_tir=True)
def {name}(x: T.Buffer(({m}, {k}), "float32"), xq: T.Buffer(({m}, {kp}), "{dtype}"),
           xs: T.Buffer(({m},), "float32"), xz: T.Buffer(({m},), "int32")):
    T.func_attr({{"tirx.noalias": True}})
    for t in {"T.parallel" if parallel else "range"}({m // rows}):
        lo = T.decl_buffer(({chains * lanes},), "float32")
        hi = T.decl_buffer(({chains * lanes},), "float32")
        for ii in range({rows}):
            for l in T.vectorized({chains * lanes}):
                lo[l] = T.float32(0)
                hi[l] = T.float32(0)
            for r0 in range({blocked // chains}):
                for c in T.unroll({chains}):
                    for l in T.vectorized({lanes}):
                        lo[c * {lanes} + l] = T.min(lo[c * {lanes} + l], x[{i}, (r0 * {chains} + c) * {lanes} + l])
                        hi[c * {lanes} + l] = T.max(hi[c * {lanes} + l], x[{i}, (r0 * {chains} + c) * {lanes} + l])
            for r0 in range({blocked}, {vectors}):
                for l in T.vectorized({lanes}):
                    lo[l] = T.min(lo[l], x[{i}, r0 * {lanes} + l])
                    hi[l] = T.max(hi[l], x[{i}, r0 * {lanes} + l])
{fold}{tail_minmax}
            xs[{i}] = T.if_then_else(hi[0] > lo[0], (hi[0] - lo[0]) / T.float32({levels}), T.float32(1))
            xz[{i}] = T.Cast("int32", T.nearbyint(T.float32(0) - lo[0] / xs[{i}]))
            for r0 in range({main // lanes}):
                for l in T.vectorized({lanes}):
                    xq[{i}, r0 * {lanes} + l] = {quant.format(c=f"r0 * {lanes} + l")}
            for r in range({main}, {k}):
                xq[{i}, r] = {quant.format(c="r")}
            for r in range({k}, {kp}):
                xq[{i}, r] = T.Cast("{dtype}", 0)
'''
    return parse_prim_func(source, name, root_block=True)


def int8_dense_func(shape: DenseShape, mr: int = 0, nb: int = 0, parallel: bool | None = None):
    """The VNNI GEMM with its dequantisation, bias and ReLU epilogue (module docstring); tile
    knobs as int8_tile, `parallel` None: by the layer's size."""
    m, k, n = shape.m, shape.k, shape.n
    kp = padded_k(k)
    mr, nb = int8_tile(shape, mr, nb)
    threads = shape.parallel if parallel is None else parallel
    row_blocks = m // mr
    name = f"int8_{shape.name}"
    acc = f"acc[T.ramp((ii * {nb} + jj) * 16, 1, 16)]"
    # the row's 4 u8 broadcast to 64 lanes, inline: a named temporary would be a buffer per use
    a = (f'T.reinterpret("uint8x64", T.broadcast(T.reinterpret("int32", xq[t % {row_blocks} * {mr} + ii, '
         f'T.ramp(g * 4, 1, 4)]), 16))')
    row, col = f"t % {row_blocks} * {mr} + ii", f"(t // {row_blocks} * {nb} + jj) * 16 + l"
    value = (f"T.Cast('float32', acc[(ii * {nb} + jj) * 16 + l] - xz[{row}] * wsum[{col}]) * (xs[{row}] * "
             f"ws[{col}]) + b[{col}]")
    source = f'''
@T.prim_func(s_tir=True)
def {name}(xq: T.Buffer(({m}, {kp}), "uint8"), xs: T.Buffer(({m},), "float32"), xz: T.Buffer(({m},), "int32"),
           wq: T.Buffer(({n // 16}, {kp // 4}, 64), "int8"), ws: T.Buffer(({n},), "float32"),
           wsum: T.Buffer(({n},), "int32"), b: T.Buffer(({n},), "float32"), out: T.Buffer(({m}, {n}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    for t in {"T.parallel" if threads else "range"}({n // 16 // nb * row_blocks}):
        acc = T.decl_buffer(({mr * nb * 16},), "int32")
        for ii in T.unroll({mr}):
            for jj in T.unroll({nb}):
                {acc} = T.broadcast(T.int32(0), 16)
        for g in range({kp // 4}):
            for ii in T.unroll({mr}):
                for jj in T.unroll({nb}):
                    {acc} = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", {acc}, {a},
                                                    wq[t // {row_blocks} * {nb} + jj, g, T.ramp(0, 1, 64)])
        for ii in T.unroll({mr}):
            for jj in range({nb}):
                for l in T.vectorized(16):
                    out[{row}, {col}] = {f"T.max({value}, T.float32(0))" if shape.relu else value}
'''
    return parse_prim_func(source, name)


def bf16_dense_func(shape: DenseShape, vector_lanes: int = 16, bn: int = BF16_PANEL):
    """The packed fp32 GEMM of dlrmlib.schedules.dense over bf16 weights widened in registers."""
    from tvm import s_tir, te, tirx

    m, k, n = shape.m, shape.k, shape.n
    x = te.placeholder((m, k), "float32", name="x")
    wp = te.placeholder((n // bn, k, bn), "uint16", name="wp")
    b = te.placeholder((n,), "float32", name="b")
    r = te.reduce_axis((0, k), name="r")

    def widen(v):
        return tirx.reinterpret("float32", v.astype("uint32") << tirx.const(16, "uint32"))

    acc = te.compute((m, n), lambda i, j: te.sum(x[i, r] * widen(wp[j // bn, r, j % bn]), axis=r), name="dense")
    zero = tirx.const(0, "float32")
    out = te.compute((m, n), (lambda i, j: tirx.max(acc[i, j] + b[j], zero)) if shape.relu else
                     (lambda i, j: acc[i, j] + b[j]), name="epilogue")
    sch = s_tir.Schedule(te.create_prim_func([x, wp, b, out]))
    register_tiles(sch, row_block(m, vector_lanes), bn, bool(shape.parallel))
    return sch.mod["main"].with_attr("global_symbol", f"bf16_{shape.name}")


def quantization_facts(precision: str, seen: dict, isa: str = "avx512_vnni") -> dict:
    """What the manifest records about a reduced-precision build's numbers: the scheme, and the
    layers that use it (the others, e.g. the 1-wide last layer and the interaction, stay fp32)."""
    # per layer, the kernel it got: on an AMX host a batch that is not a multiple of 16 rows uses VNNI
    layers = {name: kernel for name, (kind, _, kernel) in sorted(seen.items()) if kind == precision}
    if precision == "int8":
        return {"weights": "int8, symmetric, one scale per output channel (max|W| / 127)",
                "weight_layout": "[N/16, Kp/4, 16, 4] int8 (Kp: K padded to 64 for AMX layers, to 4 for VNNI "
                                 "ones), + scales [N] float32, + column sums [N] int32",
                "activations": "uint8, asymmetric, scale and zero point per row of every batch (dynamic)",
                "accumulation": "int32 (AMX tdpbusd or vpdpbusd, per layer), dequantised in the epilogue",
                "calibration_samples": 0,
                "layers": layers}
    if isa == "amx_bf16":
        return {"weights": "bfloat16 (round to nearest even), stored as uint16 bits",
                "weight_layout": f"[N/16, Kp/2, 16, 2] uint16 (Kp: K padded to 32) for AMX layers, [N/{BF16_PANEL}, "
                                 f"K, {BF16_PANEL}] for the others", "activations": "bfloat16 (round to nearest even, "
                "converted per batch) for AMX layers, else float32", "accumulation": "float32 (AMX tdpbf16ps or FMA)",
                "calibration_samples": 0,
                "layers": layers}
    return {"weights": "bfloat16 (round to nearest even), stored as uint16 bits",
            "weight_layout": f"[N/{BF16_PANEL}, K, {BF16_PANEL}] uint16", "activations": "float32",
            "accumulation": "float32", "calibration_samples": 0, "layers": layers}
