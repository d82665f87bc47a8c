"""Test data: Criteo-like synthesis, the folder format, MLPerf's layout, and input checks."""
import os
import subprocess
import sys
from pathlib import Path

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
    read_test_meta,
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


def test_multi_hot_folder_holds_k_ids_per_bag_and_batches_with_offsets_0_k_2k(tmp_path):
    from dlrmlib.backends import model_inputs

    k = 3
    dense, one_hot = synthesize_inputs(10, TABLES, seed=4)
    _, sparse = synthesize_inputs(10, TABLES, seed=4, per_bag=k)
    assert sparse.shape == (10, 26, k) and (sparse < np.array(TABLES)[None, :, None]).all() and sparse.min() >= 0
    folder = write_test_data(tmp_path / "td", TestData(dense, sparse, np.zeros(10, np.float32)), {"tables": TABLES})
    back = read_test_data(folder, TABLES, per_bag=k)
    np.testing.assert_array_equal(back.sparse, sparse)
    assert read_test_meta(folder)["ids_per_bag"] == k
    with pytest.raises(DlrmError, match=r"3 id\(s\) per bag .*model takes 1; .*--ids-per-bag 1"):
        read_test_data(folder, TABLES, per_bag=1)

    inputs, real = model_inputs(back.dense, back.sparse, 8, 4)  # samples 8, 9, then 9 repeated
    assert real == 2
    np.testing.assert_array_equal(inputs["lS_o"], np.tile([0, 3, 6, 9], (26, 1)))
    assert inputs["lS_i"].shape == (26, 12)
    np.testing.assert_array_equal(inputs["lS_i"][5, 3:6], sparse[9, 5])  # bag 1 of table 5 = sample 9's
    one, _ = model_inputs(dense, one_hot, 0, 4)  # a one-hot folder batches as before
    np.testing.assert_array_equal(one["lS_o"][0], [0, 1, 2, 3])
    np.testing.assert_array_equal(one["lS_i"], one_hot[:4].T)

    sparse[6, 2, 2] = TABLES[2]  # the third id of a bag, out of range: found and named
    with pytest.raises(DlrmError, match=f"id {TABLES[2]} of sample 6 is out of range for table 2"):
        check_inputs(dense, sparse, TABLES)
    assert check_inputs(dense, sparse, TABLES, ids="modulo")[6, 2, 2] == 0


@pytest.mark.parametrize("args, says", [
    (["--ids-per-bag", "0"], "positive integer"),
    (["--ids-per-bag", "1025"], "at most 1,024"),
    (["--ids-per-bag", "3", "--bags", "one_per_bag"], "--bags any"),
    (["--ids-per-bag", "3", "--mlperf-data", "day_23.npz"], "one id per bag"),
])
def test_prepare_refuses_ids_per_bag_out_of_bounds_or_with_one_per_bag(args, says, tmp_path):
    env = {**os.environ, "DLRM_EXPERIMENTS_DIR": str(tmp_path / "experiments")}
    done = subprocess.run([str(Path(sys.executable).parent / "dlrm"), "prepare", "--preset", "tiny",
                           "--experiment", "k", *args], capture_output=True, text=True, env=env)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
    assert not (tmp_path / "experiments" / "k").exists()
