"""Statically calibrated int8 activations: one scale and zero point per layer, from the min/max
of its input over the calibration slice (dlrmlib.building.calibrate), instead of the per-row
min/max pass of the dynamic kernels (dlrmlib.schedules.reduced.quantize_rows_func).

The quantisation kernel takes the layer's scale and zero point as two one-element tensors
(Relax constants: two layers of one shape share the kernel, not the scale) and writes the same
three outputs as the per-row kernel (u8 rows, per-row scales and zero points, here all equal),
so every int8 GEMM (VNNI, AMX, or any later one) runs unchanged on them. The mapping is the
dynamic one's: the range [min(lo, 0), max(hi, 0)] onto 0..255 (zero exact); values outside the
calibrated range saturate.
"""
from __future__ import annotations

import numpy as np

from dlrmlib.schedules.reduced import QUANTIZE_ROWS, parse_prim_func


def scale_and_zero(lo: float, hi: float, levels: int = 255) -> tuple[float, int]:
    """The scale and zero point of a calibrated range onto 0..levels (as the dynamic kernel maps a row's)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = np.float32((hi - lo) / levels if hi > lo else 1.0)
    return float(scale), int(np.rint(np.float32(0) - np.float32(lo) / scale))


def quantize_static_func(m: int, k: int, kp: int, parallel: bool, lanes: int = 16, levels: int = 255,
                         dtype: str = "uint8"):
    """x[M, K] f32, scale[1], zero[1] -> (xq[M, Kp] u8, s_x[M], z_x[M]): no min/max pass. `levels`
    and `dtype` as the per-row kernel's (AVX2's int16 operands: the same values widened)."""
    main = k - k % lanes
    rows = next(r for r in (QUANTIZE_ROWS, 4, 2, 1) if m % r == 0)
    name = f"quantize_static_u8_m{m}_k{k}_kp{kp}" + ("" if levels == 255 else f"_l{levels}") + (
        "" if dtype == "uint8" else f"_{dtype}")
    i = f"t * {rows} + ii"
    # floor(v + 0.5), as the dynamic kernel: TVM's vectoriser leaves a loop with nearbyint scalar
    quant = (f"T.Cast('{dtype}', T.max(T.min(T.floor(x[{i}, {{c}}] * (T.float32(1) / qs[0]) + T.float32(0.5)) + "
             f"T.Cast('float32', qz[0]), T.float32({levels})), T.float32(0)))")
    source = f'''
@T.prim_func(s_tir=True)
def {name}(x: T.Buffer(({m}, {k}), "float32"), qs: T.Buffer((1,), "float32"), qz: T.Buffer((1,), "int32"),
           xq: T.Buffer(({m}, {kp}), "{dtype}"), xs: T.Buffer(({m},), "float32"), xz: T.Buffer(({m},), "int32")):
    T.func_attr({{"tirx.noalias": True}})
    for t in {"T.parallel" if parallel else "range"}({m // rows}):
        for ii in range({rows}):
            xs[{i}] = qs[0]
            xz[{i}] = qz[0]
            for r0 in range({main // lanes}):
                for l in T.vectorized({lanes}):
                    xq[{i}, r0 * {lanes} + l] = {quant.format(c=f"r0 * {lanes} + l")}
            for r in range({main}, {k}):
                xq[{i}, r] = {quant.format(c="r")}
            for r in range({k}, {kp}):
                xq[{i}, r] = T.Cast("{dtype}", 0)
'''
    return parse_prim_func(source, name, root_block=True)


def static_quantized_input(kernels, x, w, m: int, k: int, kp: int, parallel: bool, levels: int = 255,
                           dtype: str = "uint8"):
    """The Relax call quantising layer input `x` with the calibrated range of weight `w`'s layer
    (`kernels.ranges`: weight name -> [min, max]); the same outputs as the per-row kernel's."""
    from tvm import relax

    if w.name not in kernels.ranges:
        raise KeyError(f"no calibrated range for the layer of weight {w.name!r}")
    scale, zero = scale_and_zero(*kernels.ranges[w.name], levels=levels)
    func = quantize_static_func(m, k, kp, parallel, levels=levels, dtype=dtype)
    quantize = kernels.get(str(func.attrs["global_symbol"]), lambda: func)
    return relax.call_tir(quantize, [x, relax.const(np.array([scale], np.float32)),
                                     relax.const(np.array([zero], np.int32))],
                          [relax.TensorType((m, kp), dtype), relax.TensorType((m,), "float32"),
                           relax.TensorType((m,), "int32")])
