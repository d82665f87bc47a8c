"""Faults: a full disk mid-write, wrong model interfaces, and property tests of the readers."""
import errno
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.files import write_json, write_npy
from dlrmlib.formats.model import generate_model
from dlrmlib.formats.normalise import load_graph, normalise_model
from dlrmlib.formats.presets import TINY_ROWS, preset_config
from dlrmlib.formats.testdata import TestData, check_inputs, read_test_data, write_test_data

TABLES = list(TINY_ROWS)


class FullDisk:
    """A file object whose writes fail as on a full disk, after `allowed` bytes."""

    def __init__(self, real, allowed=10):
        self.real, self.allowed = real, allowed

    def write(self, data):
        if len(data) > self.allowed:  # what fits lands, then the disk is full
            self.real.write(data[: self.allowed])
            self.allowed = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.allowed -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_full_disk_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """Fault injection at the OS boundary: `open` hands out files that run out of space."""
    import builtins
    import io

    target = tmp_path / "result.json"
    write_json(target, {"old": True})
    real_open = io.open

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle) if any(m in mode for m in "wa") else handle

    monkeypatch.setattr(builtins, "open", full_disk_open)
    monkeypatch.setattr(io, "open", full_disk_open)  # pathlib's write_text goes through io.open
    with pytest.raises(OSError, match="No space"):
        write_json(target, {"new": list(range(1000))})
    with pytest.raises(OSError, match="No space"):
        write_npy(tmp_path / "a.npy", np.arange(1000))
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temporary left behind


def test_declared_input_shapes_must_fit_the_interface(tmp_path):
    model = load_graph(generate_model(preset_config("tiny"), tmp_path / "m.onnx"))
    dense = model.graph.input[0]
    dense.CopyFrom(helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 12]))
    with pytest.raises(DlrmError, match="'input.1' is float32 \\[None, 12\\]"):
        normalise_model(model, 4)
    dense.CopyFrom(helper.make_tensor_value_info("input.1", TensorProto.DOUBLE, ["batch", 13]))
    with pytest.raises(DlrmError, match="'input.1' is float64"):
        normalise_model(model, 4)


@st.composite
def id_matrices(draw):
    n = draw(st.integers(1, 6))
    ids = draw(st.lists(st.lists(st.integers(-300, 300), min_size=26, max_size=26), min_size=n, max_size=n))
    return np.array(ids, dtype=np.int64)


@settings(max_examples=60, deadline=None)
@given(id_matrices())
def test_check_inputs_accepts_exactly_the_ids_in_range(sparse):
    dense = np.zeros((len(sparse), 13), np.float32)
    in_range = ((sparse >= 0) & (sparse < np.array(TABLES))).all()
    if in_range:
        np.testing.assert_array_equal(check_inputs(dense, sparse, TABLES), sparse)
    else:
        with pytest.raises(DlrmError, match="out of range for table"):
            check_inputs(dense, sparse, TABLES)
    wrapped = check_inputs(dense, sparse, TABLES, ids="modulo")
    assert ((wrapped >= 0) & (wrapped < np.array(TABLES))).all()
    assert ((wrapped - sparse) % np.array(TABLES) == 0).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.sampled_from([np.nan, np.inf, -np.inf, None]), st.integers(0, 10**6))
def test_test_data_round_trip_or_clear_refusal(tmp_path_factory, n, bad_value, seed):
    rng = np.random.default_rng(seed)
    dense = rng.random((n, 13), dtype=np.float32)
    sparse = np.stack([rng.integers(0, r, n) for r in TABLES], axis=1)
    if bad_value is not None:
        dense[rng.integers(n), rng.integers(13)] = bad_value
    folder = tmp_path_factory.mktemp("td") / "testdata"
    write_test_data(folder, TestData(dense, sparse, np.zeros(n, np.float32)), {"tables": TABLES})
    if bad_value is None:
        back = read_test_data(folder, TABLES)
        np.testing.assert_array_equal(back.dense, dense)
        np.testing.assert_array_equal(back.sparse, sparse)
    else:
        with pytest.raises(DlrmError, match="non-finite"):
            read_test_data(folder, TABLES)


def test_truncated_npy_is_a_clear_error(tmp_path):
    dense = np.zeros((50, 13), np.float32)
    write_test_data(tmp_path / "td", TestData(dense, np.zeros((50, 26), np.int64), np.zeros(50, np.float32)),
                    {"tables": TABLES})
    raw = (tmp_path / "td" / "dense.npy").read_bytes()
    (tmp_path / "td" / "dense.npy").write_bytes(raw[:200])
    with pytest.raises(DlrmError, match="dense.npy is not a readable .npy file"):
        read_test_data(tmp_path / "td", TABLES)
