"""Relax passes that route the DLRM's layers to the hand-written kernels.

They run BEFORE the default CPU pipeline: what they match becomes `R.call_tir` to an already
scheduled PrimFunc (marked opaque so FuseOps leaves it alone); everything else is legalised
and fused as usual. Weight packing is a separate `call_tir` on the weight parameter alone,
so `LiftTransformParams` moves it into `main_transform_params`, run once at build time.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard

from dlrmlib.schedules.dense import DenseConfig, DenseShape, dense_func, narrow_dense_func, pack_func, pack_name
from dlrmlib.schedules.amx import K_STEP, amx_bf16_dense_func, amx_supported
from dlrmlib.schedules.avx2_int8 import avx2_int8_layer
from dlrmlib.schedules.int8_tiles import Int8Config, int8_gemm_func, int8_kernel_name
from dlrmlib.schedules.reduced import (
    bf16_dense_func,
    bf16_pack_func,
    bf16_pair_pack_func,
    bf16_rows_func,
    int8_colsum_func,
    int8_pack_func,
    int8_scale_func,
    int8_supported,
    padded_k,
    quantize_rows_func,
)
from dlrmlib.schedules.static import static_quantized_input
from dlrmlib.schedules.interaction import (
    PREFETCH_LOCALITY,
    PREFETCH_SAMPLES,
    InteractionShape,
    interaction_func,
    tril_pairs,
)

OPAQUE = 8  # relay/relax OpPatternKind kOpaque: never fused into a neighbour


def _static_shape(expr) -> tuple[int, ...] | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape.values):
        return None
    return tuple(int(d) for d in shape.values)


def _dense_patterns():
    """x @ permute_dims(W) + b, with and without a following ReLU."""
    x, w, b = wildcard(), wildcard(), wildcard()
    biased = is_op("relax.add")(is_op("relax.matmul")(x, is_op("relax.permute_dims")(w)), b)
    return (is_op("relax.nn.relu")(biased), biased), (x, w, b)


class _KernelTable:
    """Adds each distinct PrimFunc to the module once and hands back its GlobalVar; knows each
    kernel's tuned knobs (`configs`: name -> knob values) and tells `seen` what it made (name ->
    (kind, shape, extra)), for the tuner."""

    def __init__(self, builder: relax.BlockBuilder, configs: dict | None = None, seen: dict | None = None,
                 fallbacks: dict | None = None, precision: str = "fp32", amx: bool = False, avx2: str | None = None):
        self.builder = builder
        self.precision = precision
        self.amx = amx
        self.avx2 = avx2  # int8 on AVX2 alone (dlrmlib.schedules.avx2_int8): its operands, "s16" or "u8s8"
        self.known: dict[str, tvm.ir.GlobalVar] = {}
        self.configs = configs or {}
        self.seen = seen if seen is not None else {}
        self.fallbacks = fallbacks if fallbacks is not None else {}  # layer -> why the default lowering

    def config(self, name: str) -> dict:
        return dict(self.configs.get(name, {}))

    def get(self, name: str, make):
        if name not in self.known:
            func = make().with_attr("op_pattern", OPAQUE).with_attr("global_symbol", name)
            self.known[name] = self.builder.add_func(func, name)
        return self.known[name]


def _dense_rewriter(kernels: _KernelTable, relu: bool, vars_, vector_lanes: int, only=None):
    x_pat, w_pat, b_pat = vars_

    def rewrite(expr, matches):
        x, w, b = matches[x_pat], matches[w_pat], matches[b_pat]
        xs, ws, bs = _static_shape(x), _static_shape(w), _static_shape(b)
        if not (xs and ws and bs) or len(xs) != 2 or len(ws) != 2 or bs != (ws[0],):
            return expr
        if any(str(e.ty.dtype) != "float32" for e in (x, w, b)) or not isinstance(w, relax.Var):
            return expr
        shape = DenseShape(m=xs[0], k=xs[1], n=ws[0], relu=relu)
        if ws[1] != shape.k or (only is not None and not shape.narrow and shape.name not in only):
            return expr  # with `only`: a layer the tuned build leaves to its tuned kernels
        if shape.narrow:
            kernels.seen[shape.name] = ("narrow", shape, None)
            dense = kernels.get(shape.name, lambda: narrow_dense_func(shape))
            return relax.call_tir(dense, [x, w, b], relax.TensorType((shape.m, shape.n), "float32"))
        if kernels.precision != "fp32":
            reduced = _reduced_dense(kernels, shape, x, w, b, vector_lanes)
            if reduced is not None:
                return reduced  # else the fp32 kernel below, or the default lowering
        config = DenseConfig(**kernels.config(shape.name))
        if not shape.packable(config.bn):
            kernels.fallbacks[shape.name] = f"width {shape.n} is not a multiple of the panel width {config.bn}"
            return expr
        kernels.seen[shape.name] = ("dense", shape, None)
        bn = config.bn
        pack = kernels.get(pack_name(shape.n, shape.k, bn), lambda: pack_func(shape.n, shape.k, bn))
        dense = kernels.get(shape.name, lambda: dense_func(shape, vector_lanes, config))
        packed = relax.call_tir(pack, [w], relax.TensorType((shape.n // bn, shape.k, bn), "float32"))
        return relax.call_tir(dense, [x, packed, b], relax.TensorType((shape.m, shape.n), "float32"))

    return rewrite


def vector_lanes(target: tvm.target.Target) -> int:
    """fp32 lanes of the widest vector unit the target really has."""
    features = str(target.attrs.get("mcpu", ""))
    has_avx512 = tvm.target.codegen.target_has_features("avx512f", target) if hasattr(
        tvm.target.codegen, "target_has_features") else "avx512" in features
    return 16 if has_avx512 else 8


def use_dense_kernels(target: tvm.target.Target, configs: dict | None = None, seen: dict | None = None,
                      fallbacks: dict | None = None, precision: str = "fp32", amx: bool = False,
                      ranges: dict | None = None, avx2: str | None = None, only: set[str] | None = None):
    """Module pass: every float32 Dense(+bias)(+ReLU) with a packable width -> packed GEMM (int8
    or bf16 weights with `precision`, on AMX tiles with `amx`, int8 on AVX2 alone with `avx2`, the
    operands' name); one narrower than a panel (the
    last layer) -> a dot product per output, in fp32. A width that is neither keeps the default
    lowering, and `fallbacks` says so (layer name -> why). `ranges` (int8): each layer's calibrated
    input range by weight name, for static activation scales (dlrmlib.schedules.static). `only`: the
    packed GEMM for these layer names alone (the narrow kernel always), the rest left as imported
    (the tuned build)."""

    @tvm.transform.module_pass(opt_level=0, name="UseDenseKernels")
    def _pass(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        builder = relax.BlockBuilder(mod)
        kernels = _KernelTable(builder, configs, seen, fallbacks, precision, amx, avx2)
        kernels.ranges = ranges
        lanes = vector_lanes(target)
        (with_relu, plain), vars_ = _dense_patterns()
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, relax.Function):
                continue
            func = relax.dpl.rewrite_call(with_relu, _dense_rewriter(kernels, True, vars_, lanes, only), func)
            func = relax.dpl.rewrite_call(plain, _dense_rewriter(kernels, False, vars_, lanes, only), func)
            updates[gv] = func
        out = builder.get()
        for gv, func in updates.items():
            out[gv] = func
        return out

    return _pass


def _reduced_dense(kernels: _KernelTable, shape: DenseShape, x, w, b, lanes: int):
    """The layer in int8 (per-row u8 quantisation, then the VNNI GEMM) or with bf16 weights; the
    weight conversions are call_tirs on W alone, so they are lifted and run at build time.
    None when the shape does not fit the kernel (the layer then stays fp32)."""
    m, k, n = shape.m, shape.k, shape.n
    out = relax.TensorType((m, n), "float32")
    if kernels.precision == "bf16" and kernels.amx and amx_supported(shape):
        kernels.seen[shape.name] = ("bf16", shape, "amx_bf16")
        kp = padded_k(k, K_STEP // 2)
        convert = kernels.get(f"to_bf16_m{m}_k{k}_kp{kp}", lambda: bf16_rows_func(m, k, kp, shape.parallel))
        pack = kernels.get(f"bf16_pairs_n{n}_k{k}_kp{kp}", lambda: bf16_pair_pack_func(n, k, kp))
        dense = kernels.get(f"amx_bf16_{shape.name}", lambda: amx_bf16_dense_func(shape))
        xb = relax.call_tir(convert, [x], relax.TensorType((m, kp), "uint16"))
        packed = relax.call_tir(pack, [w], relax.TensorType((n // 16, kp // 2, 32), "uint16"))
        return relax.call_tir(dense, [xb, packed, b], out)
    if kernels.precision == "bf16":
        if n % 32:
            return None
        kernels.seen[shape.name] = ("bf16", shape, "storage")
        pack = kernels.get(f"bf16_pack_n{n}_k{k}_p32", lambda: bf16_pack_func(n, k))
        dense = kernels.get(f"bf16_{shape.name}", lambda: bf16_dense_func(shape, lanes))
        packed = relax.call_tir(pack, [w], relax.TensorType((n // 32, k, 32), "uint16"))
        return relax.call_tir(dense, [x, packed, b], out)
    if kernels.avx2:
        return avx2_int8_layer(kernels, shape, x, w, b, kernels.avx2)
    if not int8_supported(shape):
        return None
    amx = kernels.amx and amx_supported(shape)
    isa = "amx_int8" if amx else "avx512_vnni"
    kernels.seen[shape.name] = ("int8", shape, isa)
    kp = padded_k(k, K_STEP if amx else 4)
    if getattr(kernels, "ranges", None) is not None:  # calibrated: dlrmlib.schedules.static
        q = static_quantized_input(kernels, x, w, m, k, kp, shape.parallel)
    else:
        quantize = kernels.get(f"quantize_u8_m{m}_k{k}_kp{kp}", lambda: quantize_rows_func(m, k, kp, shape.parallel))
        q = relax.call_tir(quantize, [x], [relax.TensorType((m, kp), "uint8"), relax.TensorType((m,), "float32"),
                                           relax.TensorType((m,), "int32")])
    weights = [relax.call_tir(kernels.get(f"int8_{what}_n{n}_k{k}_kp{kp}", lambda f=make: f(n, k, kp)), [w],
                              relax.TensorType(s, dt))
               for what, make, s, dt in (("pack", int8_pack_func, (n // 16, kp // 4, 64), "int8"),
                                         ("scale", int8_scale_func, (n,), "float32"),
                                         ("colsum", int8_colsum_func, (n,), "int32"))]
    name = int8_kernel_name(shape, isa)  # tuned knobs by this name (dlrmlib.schedules.int8_tiles)
    dense = kernels.get(name, lambda: int8_gemm_func(shape, isa, None, Int8Config(**kernels.config(name))))
    return relax.call_tir(dense, [relax.TupleGetItem(q, 0), relax.TupleGetItem(q, 1), relax.TupleGetItem(q, 2),
                                  *weights, b], out)


def _const_values(const) -> list:
    """A Relax constant's values (0.27 renamed `.data` to `.value`)."""
    value = getattr(const, "value", None)
    value = value if value is not None else const.data
    return value.numpy().reshape(-1).tolist()


def _interaction_pattern(tables: int):
    """concat(x, take(reshape(Z @ Z^T), tril)) with Z = reshape(concat(x, take(E_t, I_t)...)),
    the shape the ONNX export of DLRM's dot interaction imports as."""
    from tvm.relax.dpl import is_const, is_tuple

    x = wildcard()
    tabs = [wildcard() for _ in range(tables)]
    stacked = wildcard()
    rows = [is_const() for _ in range(tables)]
    ids = [_normalised_id_pattern(stacked, r) for r in rows]
    gathers = [is_op("relax.take")(e, i) for e, i in zip(tabs, ids)]
    z = is_op("relax.reshape")(is_op("relax.concat")(is_tuple([x, *gathers])), wildcard())
    full = is_op("relax.reshape")(is_op("relax.matmul")(z, is_op("relax.permute_dims")(z)), wildcard())
    const = is_const()
    index = is_op("relax.where")(is_op("relax.less")(const, wildcard()), wildcard(), const)
    x_again = wildcard()
    out = is_op("relax.concat")(is_tuple([x_again, is_op("relax.take")(full, index)]))
    return out, (x, x_again, tabs, ids, const, gathers, stacked, rows)


def _normalised_id_pattern(stacked, row):
    """where(g < 0, g + rows, g) with g = take(lS_i, row): the importer's ONNX Gather on the
    [T, B] id input, then its negative-id wrap (both folded into the kernel)."""
    from tvm.relax.dpl import is_const

    row_index = is_op("relax.where")(is_op("relax.less")(row, is_const()), wildcard(), row)
    g = is_op("relax.take")(stacked, row_index)
    return is_op("relax.where")(is_op("relax.less")(g, is_const()), is_op("relax.add")(g, wildcard()), g)


def _interaction_rewriter(kernels: _KernelTable, parts):

    x_pat, x_again_pat, tab_pats, id_pats, const_pat, gather_pats, stacked_pat, row_pats = parts

    def rewrite(expr, matches):
        x, tabs, stacked = matches[x_pat], [matches[p] for p in tab_pats], matches[stacked_pat]
        id_rows = tuple(int(_const_values(matches[r])[0]) for r in row_pats)
        if not matches[x_again_pat].same_as(x) or any(int(matches[g].attrs.axis) != 0 for g in gather_pats):
            return expr
        xs, ids_shape = _static_shape(x), _static_shape(stacked)
        tab_shapes = [_static_shape(t) for t in tabs]
        if not xs or ids_shape is None or len(ids_shape) != 2 or ids_shape[1] != xs[0] or any(
                s is None or len(s) != 2 or s[1] != xs[1] for s in tab_shapes):
            return expr
        if any(str(t.ty.dtype) != "float32" for t in [x, *tabs]) or min(id_rows) < 0 or max(id_rows) >= ids_shape[0]:
            return expr
        n = len(tabs) + 1
        if _const_values(matches[const_pat]) != tril_pairs(n):
            return expr  # another pair order: leave it to the generic lowering
        shape = InteractionShape(batch=xs[0], dim=xs[1], table_rows=tuple(s[0] for s in tab_shapes),
                                 index_dtype=str(stacked.ty.dtype), id_rows=id_rows)
        if ids_shape[0] != max(id_rows) + 1:
            return expr
        kernels.seen[shape.name] = ("interaction", shape, tabs)
        knobs = {"prefetch": PREFETCH_SAMPLES, "locality": PREFETCH_LOCALITY, **kernels.config(shape.name)}
        kernel = kernels.get(shape.name, lambda: interaction_func(shape, knobs["prefetch"], knobs["locality"]))
        return relax.call_tir(kernel, [x, stacked, *tabs], relax.TensorType((shape.batch, shape.width), "float32"))

    return rewrite


def use_interaction_kernel(tables: int = 26, configs: dict | None = None, seen: dict | None = None):
    """Module pass: the gathers + dot interaction + concatenation -> one fused kernel."""

    @tvm.transform.module_pass(opt_level=0, name="UseInteractionKernel")
    def _pass(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        builder = relax.BlockBuilder(mod)
        kernels = _KernelTable(builder, configs, seen)
        pattern, parts = _interaction_pattern(tables)
        updates = {gv: relax.dpl.rewrite_call(pattern, _interaction_rewriter(kernels, parts), func)
                   for gv, func in mod.functions.items() if isinstance(func, relax.Function)}
        out = builder.get()
        for gv, func in updates.items():
            out[gv] = func
        return relax.transform.DeadCodeElimination()(out)

    return _pass
