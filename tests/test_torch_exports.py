"""Real PyTorch exports in: a DLRM written in PyTorch (tests/torch_dlrm.py), exported every way
torch 2.13 offers, prepared, built untuned and with `--schedule custom`, and scored by the
Python VM and by `dlrm_infer`: every score within 1e-5 of PyTorch's own.

Compiling dominates the time, so a library is compiled once per distinct (Relax module,
weights) pair: two forms that import to structurally equal modules with byte-equal weights
share it (checked, not assumed), and each form still runs it on its own inputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from torch_dlrm import (
    DlrmNet,
    ExportForm,
    TorchDlrmConfig,
    export,
    make_inputs,
    folder_inputs,
    torch_scores,
)

pytestmark = pytest.mark.slow

BATCH, SAMPLES, HOT = 8, 16, 3
TOLERANCE = 1e-5
D16 = TorchDlrmConfig(dim=16, bottom=(24, 16), top=(40, 1))
D64 = TorchDlrmConfig(dim=64, bottom=(24, 64), top=(72, 1))


def _variant(config: TorchDlrmConfig, **changes) -> TorchDlrmConfig:
    return TorchDlrmConfig(**{**config.__dict__, **changes})


# name -> (how it is exported, the model). Between them: both TorchScript forms, opsets 11, 17
# and 18, static and dynamic batch, external data, dims 16 and 64, sum and mean,
# include_last_offset, and the dynamo exporter.
FORMS = {
    "aten-opset17-static-d16-sum": (ExportForm("aten", "aten", 17), D16),
    "aten-opset11-dynamic-d64-mean-last-external": (
        ExportForm("aten", "aten", 11, dynamic=True, external=True),
        _variant(D64, mode="mean", include_last_offset=True)),
    "loop-opset17-static-d64-sum-external": (ExportForm("loop", "loop", 17, external=True), D64),
    "loop-opset11-dynamic-d16-mean-last": (
        ExportForm("loop", "loop", 11, dynamic=True), _variant(D16, mode="mean", include_last_offset=True)),
    "dynamo-opset18-static-d16-mean-last": (
        ExportForm("dynamo", "dynamo", 18), _variant(D16, mode="mean", include_last_offset=True)),
    "dynamo-opset18-dynamic-d16-sum-external": (ExportForm("dynamo", "dynamo", 18, dynamic=True, external=True), D16),
}
SCHEDULES = ("untuned", "custom")

_BUILDS: dict = {}  # (module hash, weights hash, schedule) -> manifest path


def _onnxscript_missing() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return True
    return False


def _export_form(name: str, root: Path, hot: int = 1):
    form, config = FORMS[name]
    if form.exporter == "dynamo" and _onnxscript_missing():
        pytest.skip("the dynamo exporter needs onnxscript (pip install -e '.[test]')")
    model = DlrmNet(config).eval()
    path = export(model, form, make_inputs(config, BATCH, hot), root / "source" / name / "model.onnx")
    return model, config, path


@pytest.fixture(scope="module", params=list(FORMS))
def prepared(request, experiments_root):
    """The form exported, prepared as a user would, and PyTorch's scores on its test data."""
    from dlrmlib.formats.testdata import read_test_data
    from dlrmlib.prepare import prepare

    name = request.param
    model, config, path = _export_form(name, experiments_root)
    exp = prepare(f"torch-{name}", onnx_model=path, batch_size=BATCH, samples=SAMPLES, root=experiments_root,
                  log=lambda _: None)
    data = read_test_data(exp.testdata_dir, list(config.rows))
    expected = np.concatenate([
        torch_scores(model, folder_inputs(data.dense[i:i + BATCH], data.sparse[i:i + BATCH],
                                               config.include_last_offset))
        for i in range(0, SAMPLES, BATCH)])
    return {"name": name, "experiment": exp, "data": data, "expected": expected}


def _identity(experiment) -> tuple[str, str]:
    """(structural hash of the imported Relax module, hash of the weights' bytes in order)."""
    import tvm_ffi

    from dlrmlib.formats.normalise import load_graph
    from dlrmlib.frontend.relax import import_relax

    module = str(tvm_ffi.structural_hash(import_relax(load_graph(experiment.normalised_model))))
    graph = load_graph(experiment.normalised_model).graph
    digest = hashlib.sha256()
    for tensor in graph.initializer:
        digest.update(tensor.name.encode() + _tensor_bytes(tensor, experiment.normalised_model.parent))
    return module, digest.hexdigest()


def _tensor_bytes(tensor, folder: Path) -> bytes:
    """An initializer's bytes, read from its external data file when it has one (onnx.load
    refuses the hard links prepare makes)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(tensor).tobytes()
    info = {e.key: e.value for e in tensor.external_data}
    with open(folder / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"]))


def _built(experiment, schedule: str, bags_any: bool = False) -> Path:
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom

    key = (*_identity(experiment), schedule, bags_any)
    if key not in _BUILDS:
        _BUILDS[key] = build(experiment, Custom() if schedule == "custom" else None, verify=False,
                             log=lambda _: None).manifest
    return _BUILDS[key]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_python_vm_scores_as_pytorch(prepared, schedule):
    from dlrmlib.backends import predict_all
    from dlrmlib.backends.tvm import TvmBackend

    manifest = _built(prepared["experiment"], schedule)
    data = prepared["data"]
    scores = predict_all(TvmBackend(manifest), data.dense, data.sparse)
    assert np.abs(scores - prepared["expected"]).max() <= TOLERANCE
    # ONNX Runtime on the normalised model (the workflow's own reference) agrees too.
    assert np.abs(data.reference - prepared["expected"]).max() <= TOLERANCE


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_native_scores_as_pytorch(prepared, schedule, tmp_path):
    from dlrmlib.building.native import run_native

    manifest = _built(prepared["experiment"], schedule)
    out = tmp_path / "scores.npy"
    run_native(manifest, prepared["experiment"].testdata_dir, tmp_path / "r.json", warmup=0, iterations=1,
               outputs=out)
    assert np.abs(np.load(out) - prepared["expected"]).max() <= TOLERANCE


def test_custom_build_says_which_layers_kept_the_default_lowering(prepared):
    manifest = json.loads(_built(prepared["experiment"], "custom").read_text())
    fallbacks = manifest["build"]["kernel_fallbacks"]
    # Top MLP widths 40 and 72 are not multiples of the 32-wide panel: default lowering.
    assert any(name.startswith("dense_") and "not a multiple" in why for name, why in fallbacks.items())


# One form: the general bag rewrite does not depend on the exporter once the bag is recognised
# (and recognition itself probes with multi-hot bags); this one also takes the opset 11 -> 18
# conversion and mean + include_last_offset. Two builds more stay inside the time budget.
MULTI_HOT = ("loop-opset11-dynamic-d16-mean-last",)


_MULTI_HOT: dict = {}


def _multi_hot_experiment(name: str, root: Path):
    """The form exported with multi-hot example inputs and prepared as a user would, with HOT
    ids per bag (bags `any` implied); PyTorch's scores on its test data."""
    from dlrmlib.formats.testdata import read_test_data
    from dlrmlib.prepare import prepare

    if name not in _MULTI_HOT:
        model, config, path = _export_form(name, root / "multi-hot", hot=HOT)
        exp = prepare(f"torch-multi-hot-{name}", onnx_model=path, batch_size=BATCH, samples=SAMPLES,
                      ids_per_bag=HOT, root=root, log=lambda _: None)
        data = read_test_data(exp.testdata_dir, list(config.rows), per_bag=HOT)
        expected = np.concatenate([
            torch_scores(model, folder_inputs(data.dense[i:i + BATCH], data.sparse[i:i + BATCH],
                                              config.include_last_offset))
            for i in range(0, SAMPLES, BATCH)])
        _MULTI_HOT[name] = (model, config, exp, data, expected)
    return _MULTI_HOT[name]


@pytest.mark.parametrize("name", MULTI_HOT)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_multi_hot_bags_score_as_pytorch(name, schedule, experiments_root, tmp_path):
    """`prepare(..., ids_per_bag=HOT)`: the test data holds HOT ids per bag, and the Python VM
    and dlrm_infer score it as PyTorch does; the exported inputs themselves (uneven bags: an
    empty one, a double one) score so in the Python VM."""
    from dlrmlib.backends import predict_all
    from dlrmlib.backends.tvm import TvmBackend
    from dlrmlib.building.native import run_native

    model, config, exp, data, expected = _multi_hot_experiment(name, experiments_root)
    assert exp.params["ids_per_bag"] == HOT and exp.params["bags"] == "any"
    assert data.sparse.shape == (SAMPLES, 26, HOT)
    manifest = _built(exp, schedule, bags_any=True)
    assert json.loads(manifest.read_text())["embedding"]["ids_per_bag"] == HOT
    backend = TvmBackend(manifest)
    assert np.abs(predict_all(backend, data.dense, data.sparse) - expected).max() <= TOLERANCE
    assert np.abs(data.reference - expected).max() <= TOLERANCE  # ONNX Runtime's reference agrees
    out = tmp_path / "scores.npy"
    run_native(manifest, exp.testdata_dir, tmp_path / "r.json", warmup=0, iterations=1, outputs=out)
    assert np.abs(np.load(out) - expected).max() <= TOLERANCE

    inputs = make_inputs(config, BATCH, HOT, seed=5)
    offsets = inputs.offsets[:, :BATCH]  # with include_last_offset, the last offset (= len) is implied
    scores = backend.predict({"input.1": inputs.dense, "lS_o": np.ascontiguousarray(offsets),
                              "lS_i": inputs.indices}).ravel()
    assert np.abs(scores - torch_scores(model, inputs)).max() <= TOLERANCE


def test_ids_per_bag_that_fit_neither_model_nor_test_data_are_one_clear_line(experiments_root, tmp_path):
    """A K the model was not exported for (a static index count) stops prepare, exit 2, nothing
    written; test data with another K than the library's stops both runners."""
    from dlrmlib.building.native import native_binary
    from dlrmlib.core.errors import DlrmError
    from dlrmlib.formats.testdata import read_test_data

    static = export(DlrmNet(D16).eval(), ExportForm("loop", "loop", 17), make_inputs(D16, BATCH),
                    tmp_path / "static.onnx")  # lS_i is [26, BATCH]: one id per bag
    env = {**os.environ, "DLRM_EXPERIMENTS_DIR": str(tmp_path / "experiments")}
    done = subprocess.run([str(Path(sys.executable).parent / "dlrm"), "prepare", "--experiment", "k",
                           "--onnx-model", str(static), "--batch-size", str(BATCH), "--ids-per-bag", str(HOT)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "--ids-per-bag 1" in lines[0], done.stderr
    assert not (tmp_path / "experiments" / "k").exists()

    _, _, exp, data, _ = _multi_hot_experiment(MULTI_HOT[0], experiments_root)
    one_hot = tmp_path / "one-hot"
    shutil.copytree(exp.testdata_dir, one_hot)
    np.save(one_hot / "sparse.npy", data.sparse[:, :, 0])
    with pytest.raises(DlrmError, match=f"1 id\\(s\\) per bag .* takes {HOT}"):
        read_test_data(one_hot, per_bag=HOT)
    manifest = _built(exp, "untuned", bags_any=True)
    written = json.loads(manifest.read_text())
    library, weights = (manifest.parent / written["library"]["file"], manifest.parent / written["weights"]["dir"])
    done = subprocess.run([str(native_binary()), str(library), str(manifest), str(weights), str(one_hot)],
                          capture_output=True, text=True)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "1 id(s) per bag" in lines[0] and f"--ids-per-bag {HOT}" in lines[0], done.stderr


def _break_one_bag(path: Path, out: Path) -> str:
    """The Loop export (opset 18) with one bag reduced by sum of squares instead of sum: a Loop
    that computes no embedding bag. Returns the node's name."""
    model = onnx.load(str(path))
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    body = next(a for a in loop.attribute if a.name == "body").g
    next(n for n in body.node if n.op_type == "ReduceSum").op_type = "ReduceSumSquare"
    onnx.save(model, str(out))
    return loop.name


def test_unknown_form_is_one_clear_line_and_nothing_written(experiments_root, tmp_path):
    loop_path = export(DlrmNet(D16).eval(), ExportForm("loop", "loop", 18), make_inputs(D16, BATCH),
                       tmp_path / "loop.onnx")
    bad = tmp_path / "bad.onnx"
    node = _break_one_bag(loop_path, bad)
    env = {**os.environ, "DLRM_EXPERIMENTS_DIR": str(tmp_path / "experiments")}
    done = subprocess.run([str(Path(sys.executable).parent / "dlrm"), "prepare", "--experiment", "bad",
                           "--onnx-model", str(bad), "--batch-size", str(BATCH)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and node in lines[0] and "embedding bag" in lines[0], done.stderr
    assert not (tmp_path / "experiments" / "bad").exists()
