"""The TVM build: matches ONNX Runtime, and its manifest and weights folder agree with the library."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dlrmlib.backends import model_inputs
from dlrmlib.backends.tvm import TvmBackend
from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.weights import (
    manifest_params,
    manifest_weights_dir,
    map_weights,
    read_manifest,
    verify_library,
    verify_weights_folder,
    write_manifest,
)


def test_build_matches_onnx_runtime(tiny_build):
    check = tiny_build.verification
    assert check["max_abs_error"] <= 1e-5
    assert check["samples"] == 64
    assert check["auc"] == pytest.approx(check["reference_auc"], abs=1e-6)
    assert check["samples_per_s"] > 0 and check["ratio_to_onnxruntime"] > 0


def test_manifest_describes_the_library_and_weights(tiny_experiment, tiny_build):
    manifest = read_manifest(tiny_build.manifest)
    assert manifest["batch_size"] == 16
    assert [i["name"] for i in manifest["inputs"]] == ["input.1", "lS_o", "lS_i"]
    assert manifest["inputs"][2]["shape"] == [26, 16] and manifest["inputs"][2]["dtype"] == "int64"
    assert manifest["target"]["kind"] == "llvm" and manifest["target"]["mcpu"] not in ("", "generic")
    assert manifest["embedding"]["tables"] == [40 + 7 * k for k in range(26)]
    verify_library(tiny_build.manifest, manifest)
    params = manifest_params(manifest)
    folder = manifest_weights_dir(tiny_build.manifest, manifest)
    verify_weights_folder(folder, manifest["weights"]["layout_id"], params)
    # Round trip: the weights folder holds the normalised model's initializers, in order.
    model = onnx.load(str(tiny_experiment.normalised_model))
    assert [p.name for p in params] == [t.name for t in model.graph.initializer]
    for array, tensor in zip(map_weights(folder, params), model.graph.initializer):
        np.testing.assert_array_equal(array, numpy_helper.to_array(tensor))


def copy_build(tiny_build, tmp_path):
    """A private copy of the build's files to break."""
    builds = tmp_path / "builds"
    shutil.copytree(tiny_build.manifest.parent, builds)
    manifest = read_manifest(tiny_build.manifest)
    weights = tmp_path / "weights" / manifest["weights"]["layout_id"]
    shutil.copytree(manifest_weights_dir(tiny_build.manifest, manifest), weights)
    return builds / tiny_build.manifest.name, weights


def test_truncated_or_missing_weight_file_is_refused(tiny_build, tmp_path):
    manifest_path, weights = copy_build(tiny_build, tmp_path)
    victim = weights / "p030.bin"
    victim.write_bytes(victim.read_bytes()[:-4])
    with pytest.raises(DlrmError, match="p030.bin has .* bytes, expected"):
        TvmBackend(manifest_path)
    victim.unlink()
    with pytest.raises(DlrmError, match="weight file missing: .*p030.bin"):
        TvmBackend(manifest_path)


def test_manifest_from_another_build_is_refused(tiny_build, tmp_path):
    manifest_path, _ = copy_build(tiny_build, tmp_path)
    manifest = json.loads(manifest_path.read_text())
    manifest["library"]["sha256"] = "0" * 64
    write_manifest(manifest_path, manifest)  # sealed again: the check behind the seal
    with pytest.raises(DlrmError, match="different builds"):
        TvmBackend(manifest_path)


def test_weights_of_another_layout_are_refused(tiny_build, tmp_path):
    manifest_path, weights = copy_build(tiny_build, tmp_path)
    layout = json.loads((weights / "layout.json").read_text())
    layout["layout_id"] = "someotherlayout0"
    (weights / "layout.json").write_text(json.dumps(layout))
    with pytest.raises(DlrmError, match="another build or model"):
        TvmBackend(manifest_path)


def test_backend_checks_ids_and_offsets_before_the_kernel(tiny_experiment, tiny_build):
    backend = TvmBackend(tiny_build.manifest)
    data = read_test_data(tiny_experiment.testdata_dir)
    inputs, _ = model_inputs(data.dense, data.sparse, 0, 16)
    bad = {**inputs, "lS_i": inputs["lS_i"].copy()}
    bad["lS_i"][3, 5] = 40 + 7 * 3  # one past table 3's last row
    with pytest.raises(DlrmError, match="out of range for table 3"):
        backend.predict(bad)
    bad["lS_i"][3, 5] = -1
    with pytest.raises(DlrmError, match="out of range"):
        backend.predict(bad)
    shifted = {**inputs, "lS_o": inputs["lS_o"][:, ::-1].copy()}
    with pytest.raises(DlrmError, match="offsets must be 0..B-1"):
        backend.predict(shifted)
    wrong_shape = {**inputs, "input.1": inputs["input.1"][:8]}
    with pytest.raises(DlrmError, match="takes float32 \\[16, 13\\]"):
        backend.predict(wrong_shape)
    assert backend.predict(inputs).shape == (16, 1)


def test_multi_hot_build_keeps_embedding_bag_semantics(experiments_root):
    """bags='any': TVM runs the general rewrite (scatter-add) and still matches ONNX Runtime."""
    from dlrmlib.building.build import build
    from dlrmlib.prepare import prepare

    exp = prepare("tiny-any", preset="tiny", batch_size=8, samples=24, bags="any", style="aten",
                  root=experiments_root, log=lambda _: None)
    result = build(exp, log=lambda _: None)
    assert result.verification["max_abs_error"] <= 1e-5


def test_manifest_edited_to_lie_about_a_shape_is_refused(tiny_build, tmp_path):
    manifest_path, _ = copy_build(tiny_build, tmp_path)
    manifest = json.loads(manifest_path.read_text())
    victim = next(p for p in manifest["params"] if p["name"] == "emb_l.0.weight")
    victim["shape"] = victim["shape"][::-1]  # same bytes, transposed shape
    write_manifest(manifest_path, manifest)  # sealed again: the check behind the seal
    with pytest.raises(DlrmError, match="edited by hand"):
        TvmBackend(manifest_path)


def test_multi_hot_offsets_must_be_monotone(experiments_root):
    from dlrmlib.building.build import build
    from dlrmlib.prepare import prepare

    exp = prepare("tiny-any", preset="tiny", batch_size=8, samples=24, bags="any", style="aten",
                  root=experiments_root, log=lambda _: None)
    manifest = exp.manifest_path("untuned")
    if not manifest.exists():
        build(exp, verify=False, log=lambda _: None)
    backend = TvmBackend(manifest)
    data = read_test_data(exp.testdata_dir)
    inputs, _ = model_inputs(data.dense, data.sparse, 0, 8)
    multi = {**inputs, "lS_o": np.tile(np.array([0, 0, 2, 3, 3, 5, 7, 8]), (26, 1))}  # empty bags included
    assert backend.predict(multi).shape == (8, 1)
    multi["lS_o"] = multi["lS_o"].copy()
    multi["lS_o"][4] = [0, 3, 2, 3, 3, 5, 7, 8]
    with pytest.raises(DlrmError, match="offsets of table 4 are not a non-decreasing"):
        backend.predict(multi)
