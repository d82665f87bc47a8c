"""int8 Dense kernels for AVX2 hosts without VNNI (e.g. AMD Zen 3): u8 x s8 -> s32 with
`vpmaddubsw` + `vpmaddwd`.

`vpmaddubsw` multiplies 32 u8 activations by 32 s8 weights and adds adjacent pairs into 16 int16
lanes *with saturation*; `vpmaddwd` against ones then adds adjacent int16 pairs into 8 int32
lanes, added to the accumulator (4 k per 32-bit lane: the VNNI layout with 8 lanes). To make the
saturation impossible the activations are quantised to 7 bits (0..127: 2 * 127 * 127 = 32258 <=
32767), so every integer sum is exact. (7-bit weights, |q| <= 64 with 8-bit activations, what
ONNX Runtime calls reduce_range, also fit; on the small preset's 8192 test samples they kept
0.99876 of the fp32 AUC against 0.99916 with 7-bit activations: below the 0.999 gate.)

Weights: per output channel, symmetric, s_w[j] = max|W[j, :]| / 127, packed once at build time
into [N/8, Kp/4, 32] (8 outputs x 4 consecutive k: one ymm operand; K padded to a multiple of 4
with zeros), with s_w and the column sums. Activations: the VNNI build's per-row quantisation
(dlrmlib.schedules.reduced.quantize_rows_func) onto 0..127. The GEMM keeps an mr x (nb * 8) int32 tile in
registers over K (16 ymm: mr * nb accumulators, nb weight vectors, the broadcast, the ones) and
applies the VNNI kernel's epilogue: (acc - z_x[i] colsum[j]) s_x[i] s_w[j] + b[j], ReLU.
"""
from __future__ import annotations

from dlrmlib.schedules.dense import DenseShape
from dlrmlib.schedules.reduced import padded_k, parse_prim_func, quantize_rows_func

LANES = 8  # int32 accumulators per ymm; one packed weight vector = 8 outputs x 4 k
WEIGHT_QMAX = 127  # int8 weights, |q| <= 127
ACTIVATION_LEVELS = 127  # 7-bit activations: 2 * 127 * 127 = 32258, vpmaddubsw's int16 pair sums cannot saturate
MAX_ACCUMULATORS = 12  # of 16 ymm: the rest hold the weights, the broadcast and the ones


def avx2_int8_supported(shape: DenseShape) -> bool:
    return shape.n % LANES == 0 and not shape.narrow


def avx2_int8_tile(shape: DenseShape, mr: int = 0, nb: int = 0) -> tuple[int, int]:
    """(mr rows, nb 8-wide panels) of the register tile: given, or the widest panel group that
    divides N (at most 4) and then the most rows that divide M within the accumulator budget."""
    panels = shape.n // LANES
    nb = nb or next(b for b in (4, 2, 1) if panels % b == 0)
    limit = max(1, min(MAX_ACCUMULATORS // nb, shape.m))
    mr = mr or next(r for r in range(limit, 0, -1) if shape.m % r == 0)
    return mr, nb


# -- build-time weight transforms (lifted into main_transform_params) --------------------------

def _weights(n: int, k: int, kp: int, qmax: int):
    """TE stages: W -> (s_w, Wq padded to Kp) with Wq = clamp(round(W / s_w), -qmax, qmax)."""
    from tvm import te, tirx

    w = te.placeholder((n, k), "float32", name="w")
    r = te.reduce_axis((0, k), name="r")
    amax = te.compute((n,), lambda j: te.max(tirx.abs(w[j, r]), axis=r), name="amax")
    scale = te.compute((n,), lambda j: tirx.Select(amax[j] > 0, amax[j] / float(qmax), tirx.const(1.0, "float32")),
                       name="scale")
    q = te.compute((n, kp), lambda j, c: tirx.if_then_else(
        c < k, tirx.max(tirx.min(tirx.nearbyint(w[j, tirx.min(c, k - 1)] / scale[j]), float(qmax)), -float(qmax)), 0.0
    ).astype("int8"), name="q")
    return w, scale, q


def weight_func(what: str, n: int, k: int, kp: int, qmax: int = WEIGHT_QMAX):
    """W[N, K] -> `pack`: Wq packed [N/8, Kp/4, 32] int8 (element [j, c] at [j/8, c/4, (j%8)*4 +
    c%4]); `scale`: s_w[N]; `colsum`: sum_k Wq[j, k] (int32, the zero-point correction)."""
    from tvm import te

    w, scale, q = _weights(n, k, kp, qmax)
    if what == "pack":
        out = te.compute((n // LANES, kp // 4, 4 * LANES), lambda p, g, l: q[p * LANES + l // 4, g * 4 + l % 4],
                         name="pack")
    elif what == "scale":
        out = te.compute((n,), lambda j: scale[j], name="out")
    else:
        r = te.reduce_axis((0, kp), name="r")
        out = te.compute((n,), lambda j: te.sum(q[j, r].astype("int32"), axis=r), name="colsum")
    return te.create_prim_func([w, out]).with_attr("global_symbol", weight_name(what, n, k, kp, qmax))


def weight_name(what: str, n: int, k: int, kp: int, qmax: int = WEIGHT_QMAX) -> str:
    return f"avx2_int8_{what}_n{n}_k{k}_kp{kp}_q{qmax}"


WEIGHT_OUTPUTS = (("pack", lambda n, kp: (n // LANES, kp // 4, 4 * LANES), "int8"),
                  ("scale", lambda n, kp: (n,), "float32"), ("colsum", lambda n, kp: (n,), "int32"))


# -- the GEMM ----------------------------------------------------------------------------------

def avx2_int8_dense_func(shape: DenseShape, mr: int = 0, nb: int = 0):
    """The vpmaddubsw GEMM with the dequantising epilogue (module docstring)."""
    m, k, n = shape.m, shape.k, shape.n
    kp = padded_k(k)
    mr, nb = avx2_int8_tile(shape, mr, nb)
    row_blocks = m // mr
    name = f"avx2_int8_{shape.name}"
    acc = f"acc[T.ramp((ii * {nb} + jj) * 8, 1, 8)]"
    row, col = f"t % {row_blocks} * {mr} + ii", f"(t // {row_blocks} * {nb} + jj) * 8 + l"
    # the row's 4 u8 broadcast to 32 lanes, inline: a named temporary would be a buffer per use
    a = (f'T.reinterpret("uint8x32", T.broadcast(T.reinterpret("int32", xq[{row}, T.ramp(g * 4, 1, 4)]), 8))')
    pairs = f'T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", {a}, wq[t // {row_blocks} * {nb} + jj, g, T.ramp(0, 1, 32)])'
    quads = f'T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", {pairs}, T.broadcast(T.int16(1), 16))'
    value = (f"T.Cast('float32', acc[(ii * {nb} + jj) * 8 + l] - xz[{row}] * wsum[{col}]) * (xs[{row}] * "
             f"ws[{col}]) + b[{col}]")
    source = f'''
@T.prim_func
def {name}(xq: T.Buffer(({m}, {kp}), "uint8"), xs: T.Buffer(({m},), "float32"), xz: T.Buffer(({m},), "int32"),
           wq: T.Buffer(({n // LANES}, {kp // 4}, 32), "int8"), ws: T.Buffer(({n},), "float32"),
           wsum: T.Buffer(({n},), "int32"), b: T.Buffer(({n},), "float32"), out: T.Buffer(({m}, {n}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    for t in {"T.parallel" if shape.parallel else "range"}({n // LANES // nb * row_blocks}):
        acc = T.decl_buffer(({mr * nb * LANES},), "int32")
        for ii in T.unroll({mr}):
            for jj in T.unroll({nb}):
                {acc} = T.broadcast(T.int32(0), 8)
        for g in range({kp // 4}):
            for ii in T.unroll({mr}):
                for jj in T.unroll({nb}):
                    {acc} = {acc} + {quads}
        for ii in T.unroll({mr}):
            for jj in range({nb}):
                for l in T.vectorized(8):
                    out[{row}, {col}] = {f"T.max({value}, T.float32(0))" if shape.relu else value}
'''
    return parse_prim_func(source, name)


# -- the layer in the Relax module (called by dlrmlib.schedules.rewrite) ----------------------

def avx2_int8_layer(kernels, shape: DenseShape, x, w, b):
    """The Dense layer as the per-row u8 quantisation then the vpmaddubsw GEMM; the weight
    conversions are call_tirs on W alone, so they are lifted and run at build time. `kernels`:
    rewrite's kernel table (adds each PrimFunc once; tuned knobs `mr`, `nb` by kernel name).
    None when the shape does not fit (the layer then stays fp32)."""
    from tvm import relax

    if not avx2_int8_supported(shape):
        return None
    m, k, n = shape.m, shape.k, shape.n
    kp = padded_k(k)
    kernels.seen[shape.name] = ("int8", shape, "avx2")
    levels, qmax = ACTIVATION_LEVELS, WEIGHT_QMAX
    quantize = quantize_rows_func(m, k, kp, shape.parallel, levels=levels)
    quantize = kernels.get(str(quantize.attrs["global_symbol"]), lambda: quantize)
    q = relax.call_tir(quantize, [x], [relax.TensorType((m, kp), "uint8"), relax.TensorType((m,), "float32"),
                                       relax.TensorType((m,), "int32")])
    weights = [relax.call_tir(kernels.get(weight_name(what, n, k, kp, qmax),
                                          lambda what=what: weight_func(what, n, k, kp, qmax)),
                              [w], relax.TensorType(out_shape(n, kp), dtype))
               for what, out_shape, dtype in WEIGHT_OUTPUTS]
    name = f"avx2_int8_{shape.name}"
    knobs = kernels.config(name)
    dense = kernels.get(name, lambda: avx2_int8_dense_func(shape, knobs.get("mr", 0), knobs.get("nb", 0)))
    return relax.call_tir(dense, [relax.TupleGetItem(q, i) for i in range(3)] + [*weights, b],
                          relax.TensorType((m, n), "float32"))


def avx2_quantization_facts(seen: dict) -> dict:
    """The manifest's `precision.quantization` of an AVX2 int8 build (`seen`: rewrite's kernels)."""
    layers = {name: kernel for name, (kind, _, kernel) in sorted(seen.items()) if kind == "int8"}
    return {"weights": f"int8, symmetric, one scale per output channel (max|W| / {WEIGHT_QMAX})",
            "weight_qmax": WEIGHT_QMAX, "activation_levels": ACTIVATION_LEVELS,
            "weight_layout": "[N/8, Kp/4, 8, 4] int8 (Kp: K padded to 4), + scales [N] float32, "
                             "+ column sums [N] int32",
            "activations": f"uint8 with 7 bits (0..{ACTIVATION_LEVELS}: vpmaddubsw's int16 pair sums cannot "
                           "saturate), asymmetric, scale and zero point per row of every batch (dynamic)",
            "accumulation": "int32 (vpmaddubsw + vpmaddwd), dequantised in the epilogue",
            "calibration_samples": 0,
            "layers": layers}
