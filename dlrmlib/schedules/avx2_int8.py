"""int8 Dense kernels for AVX2 hosts without VNNI (e.g. AMD Zen 3), two ways to multiply.

AVX2 has no u8 x s8 -> s32 dot product (VNNI's `vpdpbusd`). Two ways around it, both exact in
integers:
- `s16`: activations and weights stored as int16 (the same 8-bit values, widened) and `vpmaddwd`:
  16 int16 x int16 products, adjacent pairs added into 8 int32 lanes (2 k per lane), added to the
  accumulator. Full 8-bit operands (u8 activations 0..255, int8 weights), so the numbers are the
  VNNI build's exactly; twice the operand bytes.
- `u8s8`: u8 activations x s8 weights with `vpmaddubsw` (32 products, adjacent pairs added into 16
  int16 lanes *with saturation*), then `vpmaddwd` against ones (4 k per int32 lane: the VNNI
  layout with 8 lanes). To make the saturation impossible one side loses a bit: activations onto
  0..127 (2 * 127 * 127 = 32258 <= 32767). (7-bit weights instead, ONNX Runtime's reduce_range,
  kept less of the AUC.) The 7-bit activations failed the 0.999 gate on one of the small preset's
  test sets, so `s16` is the default; docs/precision.md has the figures.

Weights: per output channel, symmetric, s_w[j] = max|W[j, :]| / 127, packed once at build time
into [N/8, Kp/g, 8 * g] (8 outputs x g consecutive k, g = 2 (s16) or 4 (u8s8): one ymm operand;
K padded to a multiple of g with zeros), with s_w and the column sums. Activations: the VNNI
build's per-row quantisation (dlrmlib.schedules.reduced.quantize_rows_func), or with static calibration
one scale per layer (dlrmlib.schedules.static). The GEMM keeps an
mr x (nb * 8) int32 tile in registers over K (16 ymm: mr * nb accumulators, nb weight vectors,
the broadcast, the ones) and applies the VNNI kernel's epilogue:
(acc - z_x[i] colsum[j]) s_x[i] s_w[j] + b[j], ReLU.
"""
from __future__ import annotations

from dataclasses import dataclass

from dlrmlib.core.errors import DlrmError
from dlrmlib.schedules.dense import DenseShape
from dlrmlib.schedules.reduced import padded_k, parse_prim_func, quantize_rows_func
from dlrmlib.schedules.static import static_quantized_input

LANES = 8  # int32 accumulators per ymm; one packed weight vector = 8 outputs x g k
WEIGHT_QMAX = 127  # int8 weights, |q| <= 127
MAX_ACCUMULATORS = 12  # of 16 ymm: the rest hold the weights, the broadcast and the ones


@dataclass(frozen=True)
class Operands:
    """How the kernel multiplies: storage types, k per int32 lane, activation levels."""

    name: str
    activation: str  # storage dtype of the quantised activations
    weight: str  # storage dtype of the packed weights
    group: int  # consecutive k per int32 lane (one 4-byte broadcast of a row's activations)
    levels: int  # activations quantised onto 0..levels

    def vector(self, dtype: str) -> str:
        return f"{dtype}x{32 // (1 if dtype.endswith('int8') else 2)}"


OPERANDS = {"s16": Operands("s16", "int16", "int16", 2, 255),
            "u8s8": Operands("u8s8", "uint8", "int8", 4, 127)}  # 2 * 127 * 127 = 32258: no saturation
DEFAULT_OPERANDS = "s16"


def avx2_int8_supported(shape: DenseShape) -> bool:
    return shape.n % LANES == 0 and not shape.narrow


def avx2_int8_tile(shape: DenseShape, mr: int = 0, nb: int = 0, operands: str = DEFAULT_OPERANDS) -> tuple[int, int]:
    """(mr rows, nb 8-wide panels) of the register tile: given (knobs from a kernel log, checked
    to fit), or the widest panel group that divides N (at most 4 for u8s8, 2 for s16: its weight
    vectors hold half the k, so rows reuse them more) and then the most rows that divide M within
    the accumulator budget."""
    panels = shape.n // LANES
    nb = nb or next(b for b in ((4, 2, 1) if operands == "u8s8" else (2, 1)) if panels % b == 0)
    limit = max(1, min(MAX_ACCUMULATORS // nb, shape.m))
    mr = mr or next(r for r in range(limit, 0, -1) if shape.m % r == 0)
    if panels % nb or shape.m % mr or mr * nb > MAX_ACCUMULATORS:
        raise DlrmError(f"int8 knobs mr={mr}, nb={nb} do not fit {shape.name} on AVX2 (mr must divide {shape.m}, "
                        f"nb {panels} panels of 8, mr x nb <= {MAX_ACCUMULATORS} accumulators)")
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


def weight_func(what: str, n: int, k: int, operands: str = DEFAULT_OPERANDS, qmax: int = WEIGHT_QMAX):
    """W[N, K] -> `pack`: Wq packed [N/8, Kp/g, 8 g] (element [j, c] at [j/8, c/g, (j%8) g + c%g]);
    `scale`: s_w[N]; `colsum`: sum_k Wq[j, k] (int32, the zero-point correction)."""
    from tvm import te

    op = OPERANDS[operands]
    g, kp = op.group, padded_k(k, op.group)
    w, scale, q = _weights(n, k, kp, qmax)
    if what == "pack":
        out = te.compute((n // LANES, kp // g, g * LANES),
                         lambda p, c, l: q[p * LANES + l // g, c * g + l % g].astype(op.weight), name="pack")
    elif what == "scale":
        out = te.compute((n,), lambda j: scale[j], name="out")
    else:
        r = te.reduce_axis((0, kp), name="r")
        out = te.compute((n,), lambda j: te.sum(q[j, r].astype("int32"), axis=r), name="colsum")
    return te.create_prim_func([w, out]).with_attr("global_symbol", weight_name(what, n, k, operands, qmax))


def weight_name(what: str, n: int, k: int, operands: str = DEFAULT_OPERANDS, qmax: int = WEIGHT_QMAX) -> str:
    return f"avx2_int8_{what}_n{n}_k{k}_{operands}_q{qmax}"


def weight_outputs(n: int, k: int, operands: str = DEFAULT_OPERANDS) -> list[tuple[str, tuple, str]]:
    """(what, shape, dtype) of the three weight transforms."""
    op = OPERANDS[operands]
    kp = padded_k(k, op.group)
    return [("pack", (n // LANES, kp // op.group, op.group * LANES), op.weight), ("scale", (n,), "float32"),
            ("colsum", (n,), "int32")]


def quantize_func(m: int, k: int, parallel: bool, operands: str = DEFAULT_OPERANDS):
    """The per-row activation quantisation for these operands (levels, storage, K padding)."""
    op = OPERANDS[operands]
    return quantize_rows_func(m, k, padded_k(k, op.group), parallel, levels=op.levels, dtype=op.activation)


# -- the GEMM ----------------------------------------------------------------------------------

def avx2_int8_dense_func(shape: DenseShape, mr: int = 0, nb: int = 0, operands: str = DEFAULT_OPERANDS,
                         parallel: bool | None = None):
    """The GEMM with the dequantising epilogue (module docstring); `parallel` None: by the
    layer's size."""
    op = OPERANDS[operands]
    m, k, n, g = shape.m, shape.k, shape.n, op.group
    kp = padded_k(k, g)
    mr, nb = avx2_int8_tile(shape, mr, nb, operands)
    threads = shape.parallel if parallel is None else parallel
    row_blocks = m // mr
    name = f"avx2_int8_{operands}_{shape.name}"
    acc = f"acc[T.ramp((ii * {nb} + jj) * 8, 1, 8)]"
    row, col = f"t % {row_blocks} * {mr} + ii", f"(t // {row_blocks} * {nb} + jj) * 8 + l"
    # the row's 4 bytes broadcast to 32, inline: a named temporary would be a buffer per use
    a = (f'T.reinterpret("{op.vector(op.activation)}", '
         f'T.broadcast(T.reinterpret("int32", xq[{row}, T.ramp(c * {g}, 1, {g})]), 8))')
    w = f"wq[t // {row_blocks} * {nb} + jj, c, T.ramp(0, 1, {8 * g})]"
    if op.activation == "uint8":
        pairs = f'T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", {a}, {w})'
        quads = f'T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", {pairs}, T.broadcast(T.int16(1), 16))'
    else:
        quads = f'T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", {a}, {w})'
    value = (f"T.Cast('float32', acc[(ii * {nb} + jj) * 8 + l] - xz[{row}] * wsum[{col}]) * (xs[{row}] * "
             f"ws[{col}]) + b[{col}]")
    source = f'''
@T.prim_func
def {name}(xq: T.Buffer(({m}, {kp}), "{op.activation}"), xs: T.Buffer(({m},), "float32"),
           xz: T.Buffer(({m},), "int32"), wq: T.Buffer(({n // LANES}, {kp // g}, {8 * g}), "{op.weight}"),
           ws: T.Buffer(({n},), "float32"), wsum: T.Buffer(({n},), "int32"), b: T.Buffer(({n},), "float32"),
           out: T.Buffer(({m}, {n}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    for t in {"T.parallel" if threads else "range"}({n // LANES // nb * row_blocks}):
        acc = T.decl_buffer(({mr * nb * LANES},), "int32")
        for ii in T.unroll({mr}):
            for jj in T.unroll({nb}):
                {acc} = T.broadcast(T.int32(0), 8)
        for c in range({kp // g}):
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

def avx2_int8_layer(kernels, shape: DenseShape, x, w, b, operands: str = DEFAULT_OPERANDS):
    """The Dense layer as the per-row quantisation then the GEMM; the weight conversions are
    call_tirs on W alone, so they are lifted and run at build time. `kernels`: rewrite's kernel
    table (adds each PrimFunc once; tuned knobs `mr`, `nb` by kernel name). None when the shape
    does not fit (the layer then stays fp32)."""
    from tvm import relax

    if not avx2_int8_supported(shape):
        return None
    op = OPERANDS[operands]
    m, k, n = shape.m, shape.k, shape.n
    kp = padded_k(k, op.group)
    kernels.seen[shape.name] = ("int8", shape, "avx2")
    if getattr(kernels, "ranges", None) is not None:  # calibrated: dlrmlib.schedules.static
        q = static_quantized_input(kernels, x, w, m, k, kp, shape.parallel, levels=op.levels, dtype=op.activation)
    else:
        quantize = quantize_func(m, k, shape.parallel, operands)
        quantize = kernels.get(str(quantize.attrs["global_symbol"]), lambda: quantize)
        q = relax.call_tir(quantize, [x], [relax.TensorType((m, kp), op.activation),
                                           relax.TensorType((m,), "float32"), relax.TensorType((m,), "int32")])
    weights = [relax.call_tir(kernels.get(weight_name(what, n, k, operands),
                                          lambda what=what: weight_func(what, n, k, operands)),
                              [w], relax.TensorType(out_shape, dtype))
               for what, out_shape, dtype in weight_outputs(n, k, operands)]
    name = f"avx2_int8_{operands}_{shape.name}"
    knobs = kernels.config(name)
    dense = kernels.get(name, lambda: avx2_int8_dense_func(shape, knobs.get("mr", 0), knobs.get("nb", 0), operands,
                                                           knobs.get("parallel")))
    return relax.call_tir(dense, [relax.TupleGetItem(q, i) for i in range(3)] + [*weights, b],
                          relax.TensorType((m, n), "float32"))


def avx2_quantization_facts(seen: dict, operands: str = DEFAULT_OPERANDS) -> dict:
    """The manifest's `precision.quantization` of an AVX2 int8 build (`seen`: rewrite's kernels)."""
    op = OPERANDS[operands]
    layers = {name: kernel for name, (kind, _, kernel) in sorted(seen.items()) if kind == "int8"}
    multiply = ("vpmaddwd on int16 operands (the 8-bit values widened)" if operands == "s16" else
                "vpmaddubsw + vpmaddwd (7-bit activations: int16 pair sums cannot saturate)")
    return {"weights": f"int8, symmetric, one scale per output channel (max|W| / {WEIGHT_QMAX})",
            "weight_qmax": WEIGHT_QMAX, "activation_levels": op.levels, "operands": operands,
            "weight_layout": f"[N/8, Kp/{op.group}, 8, {op.group}] {op.weight} (Kp: K padded to {op.group}), "
                             "+ scales [N] float32, + column sums [N] int32",
            "activations": f"0..{op.levels} stored as {op.activation}, asymmetric, scale and zero point per row "
                           "of every batch (dynamic)",
            "accumulation": f"int32 ({multiply}), dequantised in the epilogue",
            "calibration_samples": 0,
            "layers": layers}
