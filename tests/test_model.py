"""The generated DLRM: MLPerf architecture and interface, valid ONNX, runs in ONNX Runtime."""
from dataclasses import replace

import numpy as np
import onnx
import pytest

from dlrmlib.backends import model_inputs
from dlrmlib.backends.onnxruntime import OnnxRuntimeBackend
from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.model import generate_model
from dlrmlib.formats.presets import PRESETS, preset_config
from dlrmlib.formats.testdata import synthesize_inputs


def test_mlperf_architecture_numbers():
    small = PRESETS["small"]
    assert small.num_pairs == 351 and small.top_input_width == 479
    assert small.bottom_mlp == (512, 256, 128) and small.top_mlp == (1024, 1024, 512, 256, 1)
    assert 95e9 < PRESETS["terabyte"].embedding_bytes < 97e9  # "about 96 GB"


def test_generated_model_passes_checker_and_runs(tmp_path):
    config = preset_config("tiny")
    path = generate_model(config, tmp_path / "m.onnx", seed=3)
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input.1", "lS_o", "lS_i"]
    assert len(model.graph.output) == 1
    dense, sparse = synthesize_inputs(8, list(config.table_rows))
    inputs, _ = model_inputs(dense, sparse, 0, 8)
    out = OnnxRuntimeBackend(path, 8).predict(inputs)
    assert out.shape == (8, 1) and np.all((out > 0) & (out < 1))


def test_large_tables_go_to_external_data_and_are_deterministic(tmp_path):
    # Full MLPerf widths with tables just over the external-data threshold.
    config = replace(PRESETS["small"], table_rows=(2100,) * 26)
    a = generate_model(config, tmp_path / "a" / "m.onnx", seed=1)
    b = generate_model(config, tmp_path / "b" / "m.onnx", seed=1)
    c = generate_model(config, tmp_path / "c" / "m.onnx", seed=2)
    onnx.checker.check_model(str(a))
    data = a.with_name("m.onnx.data")
    assert data.stat().st_size >= 26 * 2100 * 128 * 4
    assert data.read_bytes() == b.with_name("m.onnx.data").read_bytes()
    assert data.read_bytes() != c.with_name("m.onnx.data").read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))


def test_unknown_preset_and_bad_rows_are_clear_errors():
    with pytest.raises(DlrmError, match="unknown preset 'huge'"):
        preset_config("huge")
    with pytest.raises(DlrmError, match="26 tables"):
        preset_config("tiny", [10, 20])
    with pytest.raises(DlrmError, match="at least one row"):
        preset_config("tiny", 0)
