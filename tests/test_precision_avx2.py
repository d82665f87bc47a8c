"""The int8 kernels for AVX2 hosts without VNNI (dlrmlib.schedules.avx2_int8): the weight
conversion and the vpmaddubsw GEMM against numpy, exactly in integers, including the largest
pair sums (where 8-bit weights would saturate int16), and the choice of instruction set. The
AVX2 int8 build itself (gate, both runners) is tested by tests/test_precision.py wherever
int8's instruction set is AVX2."""

import numpy as np
import pytest

from dlrmlib.core.machine import cpu_flags
from dlrmlib.schedules.dense import DenseShape

pytestmark = pytest.mark.skipif("avx2" not in cpu_flags(), reason="the AVX2 int8 kernel needs AVX2, which this "
                                                                  "host's CPU lacks")


def _lib(funcs: dict):
    import tvm

    from dlrmlib.core.target import host_target

    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    return tvm.compile(mod, target=tvm.target.Target(host_target()))


def _unpack(packed: np.ndarray, n: int, kp: int) -> np.ndarray:
    return packed.reshape(n // 8, kp // 4, 8, 4).transpose(0, 2, 1, 3).reshape(n, kp)


def _gemm(lib, xq, xs, xz, wq, ws, wsum, b, m: int, n: int) -> np.ndarray:
    import tvm

    t = tvm.runtime.tensor
    out = t(np.zeros((m, n), np.float32))
    lib["g"](t(xq), t(xs), t(xz), t(wq), t(ws), t(wsum), t(b), out)
    return out.numpy()


def test_avx2_int8_layer_equals_its_numpy_emulation():
    """Quantised activations, 7-bit weights packed 8 outputs x 4 k, the GEMM over a 3 x 2 register
    tile with K not a multiple of 4: integer sums exact, dequantised to fp32 rounding, and within
    int8 noise of the fp32 layer."""
    import tvm

    from dlrmlib.schedules import avx2_int8 as a, reduced

    m, k, n = 6, 37, 48
    kp = reduced.padded_k(k)
    lib = _lib({"q": reduced.quantize_rows_func(m, k, kp, False, levels=a.ACTIVATION_LEVELS),
                "g": a.avx2_int8_dense_func(DenseShape(m=m, k=k, n=n, relu=True), mr=3, nb=2),
                **{what: a.weight_func(what, n, k, kp) for what in ("pack", "scale", "colsum")}})
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    t = tvm.runtime.tensor
    xq, xs, xz = t(np.zeros((m, kp), np.uint8)), t(np.zeros(m, np.float32)), t(np.zeros(m, np.int32))
    lib["q"](t(x), xq, xs, xz)
    weights = {"pack": t(np.zeros((n // 8, kp // 4, 32), np.int8)), "scale": t(np.zeros(n, np.float32)),
               "colsum": t(np.zeros(n, np.int32))}
    for what, result in weights.items():
        lib[what](t(w), result)
    wq, ws, wsum = (weights[what].numpy() for what in ("pack", "scale", "colsum"))
    out = _gemm(lib, xq.numpy(), xs.numpy(), xz.numpy(), wq, ws, wsum, b, m, n)

    qmax = a.WEIGHT_QMAX
    scale = np.abs(w).max(axis=1) / qmax
    q = np.clip(np.rint(w / scale[:, None]), -qmax, qmax).astype(np.int64)
    assert np.allclose(ws, scale) and (wsum == q.sum(axis=1)).all()
    unpacked = _unpack(wq, n, kp)
    assert (unpacked[:, :k] == q).all() and (unpacked[:, k:] == 0).all()
    xq_, xz_ = xq.numpy().astype(np.int64), xz.numpy().astype(np.int64)
    assert xq_.max() <= a.ACTIVATION_LEVELS
    expected = np.maximum(((xq_[:, :k] - xz_[:, None]) @ q.T) * (xs.numpy()[:, None] * scale[None, :]) + b, 0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(out - np.maximum(x @ w.T + b, 0)).max() < 0.05 * np.abs(x @ w.T).max()


def test_the_largest_pair_sums_are_exact_and_8_bit_activations_would_saturate():
    """Activations at their largest (127) times weights at +-127: every vpmaddubsw pair sum is
    +-2 * 127 * 127 = 32258, within int16, so the result is the exact integer; activations of 255
    (what 8 bits would allow) give pair sums of +-64770, which vpmaddubsw clamps to int16."""
    from dlrmlib.schedules import avx2_int8 as a

    m, k, n = 2, 64, 16
    lib = _lib({"g": a.avx2_int8_dense_func(DenseShape(m=m, k=k, n=n, relu=False), mr=2, nb=2)})
    signs = np.where(np.arange(n) % 2, -1, 1)  # odd outputs negative: both ends of int16
    q = np.repeat((signs * a.WEIGHT_QMAX)[:, None], k, axis=1).astype(np.int8)
    packed = np.ascontiguousarray(q.reshape(n // 8, 8, k // 4, 4).transpose(0, 2, 1, 3).reshape(n // 8, k // 4, 32))
    assert (_unpack(packed, n, k) == q).all()
    ones, zeros = np.ones(n, np.float32), np.zeros(n, np.int32)

    def run(activation: int) -> np.ndarray:
        xq = np.full((m, k), activation, np.uint8)
        return _gemm(lib, xq, ones[:m], zeros[:m], packed, ones, zeros, np.zeros(n, np.float32), m, n)

    assert 2 * a.ACTIVATION_LEVELS * a.WEIGHT_QMAX <= 32767
    exact = run(a.ACTIVATION_LEVELS)
    assert (exact == a.ACTIVATION_LEVELS * a.WEIGHT_QMAX * k * signs[None, :]).all()
    clamped = np.where(signs > 0, 32767, -32768) * (k // 2)  # each of the k / 2 pair sums clamped
    assert (run(255) == clamped[None, :]).all()


def test_a_lesser_instruction_set_is_chosen_only_where_it_runs():
    """`Custom(isa="avx2")` builds the AVX2 kernels on any AVX2 host (AVX-512 and AMX ones too,
    for comparison); an instruction set the host lacks is a one-line error."""
    from dlrmlib.building.recipes import Custom
    from dlrmlib.core.errors import DlrmError
    from dlrmlib.core.machine import precision_isa
    from dlrmlib.core.target import host_target

    target = host_target()
    assert Custom(precision="int8", isa="avx2").precision_facts(target)["isa"] == "avx2"
    if precision_isa("int8") == "avx2":
        with pytest.raises(DlrmError, match="cannot run here"):
            Custom(precision="int8", isa="avx512_vnni").precision_facts(target)
