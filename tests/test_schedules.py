"""The hand-written kernels (dlrmlib.schedules) against numpy, and a custom-schedule build
against ONNX Runtime, on the tiny preset's shapes."""
from __future__ import annotations

import numpy as np
import pytest

from dlrmlib.formats.presets import PRESETS

TINY = PRESETS["tiny"]


def _compile(name: str, func):
    import tvm

    from dlrmlib.core.target import host_target

    return tvm.compile(tvm.IRModule({name: func}), target=tvm.target.Target(host_target())).jit()[name]


@pytest.mark.parametrize("m,k,n,relu", [(16, 13, 32, True), (16, 367, 64, True), (1, 64, 32, False),
                                        (16, 64, 32, False)])
def test_packed_dense_matches_numpy(m, k, n, relu):
    import tvm

    from dlrmlib.schedules.dense import PANEL, DenseShape, dense_func, pack_func, pack_name

    shape = DenseShape(m, k, n, relu)
    rng = np.random.default_rng(m * k + n)
    x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (n, k), (n,)))
    packed = tvm.runtime.empty((n // PANEL, k, PANEL), "float32", tvm.cpu())
    _compile(pack_name(n, k), pack_func(n, k))(tvm.runtime.tensor(w), packed)
    assert np.array_equal(packed.numpy(), w.reshape(n // PANEL, PANEL, k).transpose(0, 2, 1))
    out = tvm.runtime.empty((m, n), "float32", tvm.cpu())
    _compile(shape.name, dense_func(shape))(tvm.runtime.tensor(x), packed, tvm.runtime.tensor(b), out)
    expected = x @ w.T + b
    np.testing.assert_allclose(out.numpy(), np.maximum(expected, 0) if relu else expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m,k,n,relu", [(16, 32, 1, False), (1, 37, 3, True), (300, 256, 1, False)])
def test_narrow_dense_matches_numpy(m, k, n, relu):
    """Fewer outputs than a panel (the last layer): unpacked weights, K not always a multiple of
    the lanes, one thread or many."""
    import tvm

    from dlrmlib.schedules.dense import DenseShape, narrow_dense_func

    shape = DenseShape(m, k, n, relu)
    rng = np.random.default_rng(m + k + n)
    x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (n, k), (n,)))
    out = tvm.runtime.empty((m, n), "float32", tvm.cpu())
    _compile(shape.name, narrow_dense_func(shape))(*[tvm.runtime.tensor(a) for a in (x, w, b)], out)
    expected = x @ w.T + b
    np.testing.assert_allclose(out.numpy(), np.maximum(expected, 0) if relu else expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stacked_ids,row_block", [(False, 2), (True, 1), (True, 2), (True, 3)])
def test_interaction_matches_numpy(stacked_ids, row_block):
    import tvm

    from dlrmlib.schedules.interaction import InteractionShape, interaction_func, tril_pairs

    batch, dim, rows = 16, TINY.embedding_dim, TINY.table_rows
    shape = InteractionShape(batch, dim, rows, id_rows=tuple(range(len(rows))) if stacked_ids else None)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, dim), dtype=np.float32)
    ids = [rng.integers(-r, r, batch) if stacked_ids else rng.integers(0, r, batch) for r in rows]
    tables = [rng.standard_normal((r, dim), dtype=np.float32) for r in rows]
    out = tvm.runtime.empty((batch, shape.width), "float32", tvm.cpu())
    args = [x, np.stack(ids), *tables] if stacked_ids else [x, *ids, *tables]
    _compile(shape.name, interaction_func(shape, rows=row_block))(*[tvm.runtime.tensor(a) for a in args], out)
    z = np.stack([x] + [t[i] for t, i in zip(tables, ids)], axis=1)
    pairs = np.einsum("bid,bjd->bij", z, z).reshape(batch, -1)[:, tril_pairs(shape.vectors)]
    np.testing.assert_allclose(out.numpy(), np.concatenate([x, pairs], axis=1), rtol=1e-5, atol=1e-5)
    assert shape.width == TINY.top_input_width


def test_custom_build_matches_onnxruntime(tiny_experiment):
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom
    from dlrmlib.formats.weights import read_manifest

    result = build(tiny_experiment, Custom(), log=lambda _: None)
    assert result.verification["within_tolerance"]
    assert result.verification["max_abs_error"] <= 1e-5
    manifest = read_manifest(result.manifest)
    assert manifest["weights"]["transform"] == "main_transform_params"
    assert manifest["build"]["prepack"] is True and manifest["build"]["schedule"] == "custom"
    names = [p["name"] for p in manifest["params"]]
    assert all(f"emb_l.{t}.weight" in names for t in range(26)), "tables must stay untouched"
    assert any(n.startswith("main_transform_params[") for n in names)


def test_rewrite_uses_the_kernels(tiny_experiment):
    """Every packable Dense and the interaction leave the generic lowering; the tables are not
    part of the weight transform."""
    from dlrmlib.core.target import host_target
    from dlrmlib.formats.normalise import load_graph
    from dlrmlib.frontend.relax import NUM_INPUTS, import_relax
    from dlrmlib.schedules import custom_module

    mod, plan = custom_module(import_relax(load_graph(tiny_experiment.normalised_model)), host_target(), NUM_INPUTS)
    names = {gv.name_hint for gv in mod.functions}
    assert {"dense_m16_k13_n32_relu", "dense_m16_k367_n64_relu", "dense_m16_k64_n32_relu", "dense_m16_k32_n1"} <= names
    assert "interaction_b16_d16_t26_ids" in names
    assert len(plan.sources) < 10 and len(plan.untouched) >= 26
