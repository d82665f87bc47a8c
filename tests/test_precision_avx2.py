"""The int8 kernels for AVX2 hosts without VNNI (dlrmlib.schedules.avx2_int8): the weight
conversion and the GEMMs (int16 operands with vpmaddwd; u8 x s8 with vpmaddubsw) against numpy,
exactly in integers, including the largest products (where vpmaddubsw would saturate with 8-bit
activations), and the choice of instruction set. The AVX2 int8 build itself (gate, manifest,
both runners) is tested by tests/test_precision.py wherever int8's instruction set is AVX2."""

import numpy as np
import pytest

from dlrmlib.core.machine import cpu_flags
from dlrmlib.schedules.dense import DenseShape

pytestmark = pytest.mark.skipif("avx2" not in cpu_flags(), reason="the AVX2 int8 kernels need AVX2, which this "
                                                                  "host's CPU lacks")


def _lib(funcs: dict):
    import tvm

    from dlrmlib.core.target import host_target

    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    return tvm.compile(mod, target=tvm.target.Target(host_target()))


def _pack(q: np.ndarray, group: int) -> np.ndarray:
    """W[N, Kp] -> [N/8, Kp/g, 8 g], as the build packs it."""
    n, kp = q.shape
    return np.ascontiguousarray(q.reshape(n // 8, 8, kp // group, group).transpose(0, 2, 1, 3)
                                .reshape(n // 8, kp // group, 8 * group))


def _gemm(lib, xq, xs, xz, wq, ws, wsum, b, m: int, n: int) -> np.ndarray:
    import tvm

    t = tvm.runtime.tensor
    out = t(np.zeros((m, n), np.float32))
    lib["g"](t(xq), t(xs), t(xz), t(wq), t(ws), t(wsum), t(b), out)
    return out.numpy()


@pytest.mark.parametrize("operands", ["s16", "u8s8"])
def test_avx2_int8_layer_equals_its_numpy_emulation(operands):
    """Quantised activations, int8 weights packed 8 outputs x g k, the GEMM over a 3 x 2 register
    tile with K not a multiple of g: integer sums exact, dequantised to fp32 rounding, and within
    int8 noise of the fp32 layer."""
    import tvm

    from dlrmlib.schedules import avx2_int8 as a, reduced

    op = a.OPERANDS[operands]
    m, k, n = 6, 37, 48
    kp = reduced.padded_k(k, op.group)
    lib = _lib({"q": a.quantize_func(m, k, False, operands),
                "g": a.avx2_int8_dense_func(DenseShape(m=m, k=k, n=n, relu=True), mr=3, nb=2, operands=operands),
                **{what: a.weight_func(what, n, k, operands) for what in ("pack", "scale", "colsum")}})
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    t = tvm.runtime.tensor
    xq, xs, xz = t(np.zeros((m, kp), op.activation)), t(np.zeros(m, np.float32)), t(np.zeros(m, np.int32))
    lib["q"](t(x), xq, xs, xz)
    weights = {what: t(np.zeros(shape, dtype)) for what, shape, dtype in a.weight_outputs(n, k, operands)}
    for what, result in weights.items():
        lib[what](t(w), result)
    wq, ws, wsum = (weights[what].numpy() for what in ("pack", "scale", "colsum"))
    out = _gemm(lib, xq.numpy(), xs.numpy(), xz.numpy(), wq, ws, wsum, b, m, n)

    scale = np.abs(w).max(axis=1) / 127
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int64)
    assert np.allclose(ws, scale) and (wsum == q.sum(axis=1)).all()
    assert (wq == _pack(np.pad(q, ((0, 0), (0, kp - k))), op.group)).all()
    xq_, xz_ = xq.numpy().astype(np.int64), xz.numpy().astype(np.int64)
    assert xq_.max() <= op.levels and (xq_[:, k:] == 0).all()
    expected = np.maximum(((xq_[:, :k] - xz_[:, None]) @ q.T) * (xs.numpy()[:, None] * scale[None, :]) + b, 0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(out - np.maximum(x @ w.T + b, 0)).max() < 0.05 * np.abs(x @ w.T).max()


@pytest.mark.parametrize("operands", ["s16", "u8s8"])
def test_the_largest_products_are_exact(operands):
    """Activations at their largest times weights at +-127 give the exact integer: with int16
    operands 255 x 127 (vpmaddwd's int32 pair sums are far from overflowing); with u8 x s8, 127 x
    127 (vpmaddubsw's int16 pair sums reach 32258 <= 32767), while activations of 255, what 8 bits
    would allow, give pair sums of +-64770, which vpmaddubsw clamps to int16."""
    from dlrmlib.schedules import avx2_int8 as a

    op = a.OPERANDS[operands]
    m, k, n = 2, 64, 16
    lib = _lib({"g": a.avx2_int8_dense_func(DenseShape(m=m, k=k, n=n, relu=False), mr=2, nb=2, operands=operands)})
    signs = np.where(np.arange(n) % 2, -1, 1)  # odd outputs negative: both ends of the range
    packed = _pack(np.repeat((signs * a.WEIGHT_QMAX)[:, None], k, axis=1), op.group).astype(op.weight)
    ones, zeros = np.ones(n, np.float32), np.zeros(n, np.int32)

    def run(activation: int) -> np.ndarray:
        xq = np.full((m, k), activation, op.activation)
        return _gemm(lib, xq, ones[:m], zeros[:m], packed, ones, zeros, np.zeros(n, np.float32), m, n)

    assert (run(op.levels) == op.levels * a.WEIGHT_QMAX * k * signs[None, :]).all()
    if operands == "u8s8":
        assert 2 * op.levels * a.WEIGHT_QMAX <= 32767
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
