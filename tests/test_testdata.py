"""Test data: Criteo-like synthesis, the folder format, MLPerf's layout, and input checks."""
import numpy as np
import pytest

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.metrics import auc
from dlrmlib.formats.presets import TINY_ROWS
from dlrmlib.formats.testdata import (
    TestData,
    check_inputs,
    read_mlperf_day23,
    read_test_data,
    synthesize_inputs,
    write_test_data,
)

TABLES = list(TINY_ROWS)


def test_synthetic_inputs_are_deterministic_skewed_and_in_range():
    dense, sparse = synthesize_inputs(4000, [100_000] * 26, seed=5)
    again, _ = synthesize_inputs(4000, [100_000] * 26, seed=5)
    np.testing.assert_array_equal(dense, again)
    assert dense.dtype == np.float32 and np.isfinite(dense).all() and (dense >= 0).all()
    assert sparse.min() >= 0 and sparse.max() < 100_000
    counts = np.sort(np.bincount(sparse[:, 0], minlength=100_000))[::-1]
    assert counts[:1000].sum() / len(sparse) > 0.3  # the hottest 1% of rows take far more than 1%


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300), 2)  # with ties
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(labels, scores) == pytest.approx(pairwise)
    assert np.isnan(auc(np.ones(5), np.arange(5)))


def test_folder_round_trip_and_shape_mismatch(tmp_path):
    dense, sparse = synthesize_inputs(10, TABLES)
    data = TestData(dense, sparse, np.zeros(10, np.float32), np.full(10, 0.5, np.float32))
    write_test_data(tmp_path / "td", data, {"tables": TABLES})
    back = read_test_data(tmp_path / "td", TABLES)
    np.testing.assert_array_equal(back.sparse, sparse)
    np.save(tmp_path / "td" / "dense.npy", dense[:, :12])
    with pytest.raises(DlrmError, match="dense features have shape \\[10, 12\\], expected \\[N, 13\\]"):
        read_test_data(tmp_path / "td", TABLES)
    np.save(tmp_path / "td" / "dense.npy", dense.astype(np.float64))
    with pytest.raises(DlrmError, match="dense.npy holds float64"):
        read_test_data(tmp_path / "td", TABLES)
    np.save(tmp_path / "td" / "dense.npy", dense[:9])
    with pytest.raises(DlrmError, match="labels.npy has 10 rows, dense.npy has 9"):
        read_test_data(tmp_path / "td", TABLES)


def test_bad_values_are_refused_or_wrapped():
    dense, sparse = synthesize_inputs(6, TABLES)
    sparse[2, 4] = TABLES[4] + 3
    with pytest.raises(DlrmError, match="id 71 of sample 2 is out of range for table 4 with 68 rows"):
        check_inputs(dense, sparse, TABLES)
    wrapped = check_inputs(dense, sparse, TABLES, ids="modulo")
    assert wrapped[2, 4] == 3
    sparse[2, 4] = -1
    assert check_inputs(dense, sparse, TABLES, ids="modulo")[2, 4] == TABLES[4] - 1
    dense[1, 7] = np.nan
    with pytest.raises(DlrmError, match="dense feature 7 of sample 1 is nan"):
        check_inputs(dense, sparse, TABLES, ids="modulo")


def test_mlperf_layouts(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(-1, 1000, size=(20, 13))
    cat = rng.integers(0, 10**9, size=(20, 26))
    y = rng.integers(0, 2, size=20)
    np.savez(tmp_path / "day_23_reordered.npz", X_int=raw, X_cat=cat, y=y)
    data = read_mlperf_day23(tmp_path / "day_23_reordered.npz", TABLES)
    np.testing.assert_allclose(data.dense, np.log1p(np.maximum(raw, 0)).astype(np.float32))
    np.testing.assert_array_equal(data.sparse, cat % np.array(TABLES))
    with pytest.raises(DlrmError, match="out of range"):
        read_mlperf_day23(tmp_path / "day_23_reordered.npz", TABLES, ids="reject")
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "day_23_int.npy", raw)
    np.save(folder / "day_23_sparse.npy", cat)
    np.save(folder / "day_23_labels.npy", y)
    same = read_mlperf_day23(folder, TABLES, samples=10)
    np.testing.assert_array_equal(same.sparse, data.sparse[:10])
    np.savez(tmp_path / "wrong.npz", X_int=raw)
    with pytest.raises(DlrmError, match="lacks"):
        read_mlperf_day23(tmp_path / "wrong.npz", TABLES)
