"""The native runner `dlrm_infer` (native/) on a real dlrmlib build: accuracy, its JSON
result, several instances, no second copy of the weights, and clean errors for bad input."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from dlrmlib.backends import predict_all
from dlrmlib.backends.tvm import TvmBackend
from dlrmlib.building.native import infer, native_binary
from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.weights import read_manifest, write_manifest

ROWS = 20000  # rows per table: 26 x 20000 x 16 floats, about 33 MB of weights
B, N = 16, 203  # batch, samples (a padded last batch)


@pytest.fixture(scope="session")
def experiment(experiments_root):
    """A tiny-architecture experiment with bigger tables, built untuned, plus Python VM outputs."""
    from dlrmlib.building.build import build
    from dlrmlib.prepare import prepare

    exp = prepare("native", preset="tiny", table_rows=ROWS, batch_size=B, samples=N, root=experiments_root,
                  log=lambda _: None)
    result = build(exp, verify=False, log=lambda _: None)
    manifest = read_manifest(result.manifest)
    data = read_test_data(exp.testdata_dir)
    return {"exp": exp, "so": result.library, "manifest": result.manifest, "weights": result.weights_dir,
            "testdata": exp.testdata_dir, "vm_out": predict_all(TvmBackend(result.manifest), data.dense, data.sparse),
            "weights_bytes": sum(p["bytes"] for p in manifest["params"])}


@pytest.fixture(scope="session")
def binary():
    """dlrm_infer, built with CMake against this Python's TVM wheels if needed."""
    return native_binary()


def run(binary, exp, *extra, so=None, manifest=None, weights=None, testdata=None):
    """Run dlrm_infer on the experiment (any of the four paths replaced)."""
    args = [str(binary), str(so or exp["so"]), str(manifest or exp["manifest"]),
            str(weights or exp["weights"]), str(testdata or exp["testdata"]), *map(str, extra)]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def copy_testdata(exp, tmp_path, change):
    """A copy of the test data folder with change(folder) applied."""
    td = tmp_path / "testdata"
    shutil.copytree(exp["testdata"], td)
    change(td)
    return td


def test_outputs_match_python_vm(binary, experiment, tmp_path):
    out = tmp_path / "out.npy"
    res = tmp_path / "r.json"
    p = run(binary, experiment, "--outputs", out, "--json", res, "--iterations", 2, "--warmup", 1)
    assert p.returncode == 0, p.stderr
    y = np.load(out)
    assert y.shape == (N,)
    np.testing.assert_allclose(y, experiment["vm_out"], atol=1e-5, rtol=0)
    r = json.loads(res.read_text())
    assert r["max_abs_err"] <= 1e-5
    assert r["samples"] == N and r["batches"] == -(-N // B) and r["passes"] == 2
    assert r["measured_batches"] == 2 * r["batches"] and r["measured_samples"] == 2 * N
    assert not (tmp_path / "r.json.tmp").exists()


def test_json_has_all_fields(binary, experiment, tmp_path):
    res = tmp_path / "r.json"
    p = run(binary, experiment, "--json", res, "--iterations", 1)
    assert p.returncode == 0, p.stderr
    r = json.loads(res.read_text())
    for key in ["load_ms", "max_abs_err", "mean_abs_err", "auc", "latency_ms",
                "throughput_samples_per_s", "options", "batch_size", "samples", "threads",
                "instances", "weights_bytes", "peak_rss_kb", "rss_anon_kb"]:
        assert key in r, key
    assert set(r["latency_ms"]) >= {"mean", "p50", "p90", "p99"}
    assert set(r["options"]) >= {"warmup", "iterations", "threads", "instances", "ids"}
    assert r["batch_size"] == B and r["instances"] == 1
    assert 0.0 <= r["auc"] <= 1.0 and abs(r["auc"] - r["auc_reference"]) < 1e-6
    assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert "throughput" in p.stdout and "AUC" in p.stdout


def test_two_instances(binary, experiment, tmp_path):
    out, res = tmp_path / "out.npy", tmp_path / "r.json"
    p = run(binary, experiment, "--instances", 2, "--threads", 1, "--outputs", out, "--json", res)
    assert p.returncode == 0, p.stderr
    np.testing.assert_allclose(np.load(out), experiment["vm_out"], atol=1e-5, rtol=0)
    r = json.loads(res.read_text())
    assert r["instances"] == 2 and len(r["cpus"]) == 2 and r["throughput_samples_per_s"] > 0


def test_weights_are_not_copied(binary, experiment, tmp_path):
    res = tmp_path / "r.json"
    p = run(binary, experiment, "--instances", 2, "--json", res, "--iterations", 1)
    assert p.returncode == 0, p.stderr
    r = json.loads(res.read_text())
    # The weights are mapped files: anonymous memory must stay well below one copy of them.
    assert r["rss_anon_kb"] * 1024 < experiment["weights_bytes"] / 2, r


def _error(p, *words):
    """Assert a clean bad-input failure whose message holds every word."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.startswith("dlrm_infer: error: "), p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)


def test_missing_weight_file(binary, experiment, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(experiment["weights"], w)
    (w / "p005.bin").unlink()
    _error(run(binary, experiment, weights=w), "p005.bin", "cannot open")


def test_truncated_weight_file(binary, experiment, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(experiment["weights"], w)
    os.truncate(w / "p005.bin", 100)
    _error(run(binary, experiment, weights=w), "p005.bin", "100 bytes", "expected")


def test_wrong_layout_id(binary, experiment, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(experiment["weights"], w)
    layout = json.loads((w / "layout.json").read_text())
    layout["layout_id"] = "0123"
    (w / "layout.json").write_text(json.dumps(layout))
    _error(run(binary, experiment, weights=w), "layout.json", "0123")


def test_manifest_from_another_build(binary, experiment, tmp_path):
    m = json.loads(experiment["manifest"].read_text())
    m["library"]["sha256"] = "ab" * 32
    mf = tmp_path / "m.json"
    write_manifest(mf, m)  # sealed again: the check behind the seal
    _error(run(binary, experiment, manifest=mf), "sha256", "ab" * 32, "another build")


def test_id_out_of_range(binary, experiment, tmp_path):
    def change(td):
        s = np.load(td / "sparse.npy")
        s[7, 3] = 10**9
        np.save(td / "sparse.npy", s)

    td = copy_testdata(experiment, tmp_path, change)
    _error(run(binary, experiment, testdata=td), "sample 7", "table 3", "1000000000",
           str(ROWS))
    p = run(binary, experiment, "--ids", "modulo", "--iterations", 1, testdata=td)
    assert p.returncode == 0, p.stderr


def test_nan_dense(binary, experiment, tmp_path):
    def change(td):
        x = np.load(td / "dense.npy")
        x[4, 2] = np.nan
        np.save(td / "dense.npy", x)

    _error(run(binary, experiment, testdata=copy_testdata(experiment, tmp_path, change)),
           "dense.npy", "sample 4", "nan")


def test_bad_npy(binary, experiment, tmp_path):
    def change(td):
        np.save(td / "dense.npy", np.load(td / "dense.npy").astype(np.float64))

    _error(run(binary, experiment, testdata=copy_testdata(experiment, tmp_path, change)),
           "dense.npy", "float32", "<f8")


def test_bad_options(binary, experiment):
    _error(run(binary, experiment, "--ids", "clamp"), "--ids")
    _error(run(binary, experiment, "--bogus", "1"), "--bogus")
    p = subprocess.run([str(binary), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "usage: dlrm_infer" in p.stdout


def test_dlrm_infer_step_saves_its_measurement(experiment):
    result = infer(experiment["exp"], iterations=1, warmup=1, log=lambda _: None)
    assert result["runtime"] == "native" and result["max_abs_error"] <= 1e-5
    saved = json.loads((experiment["exp"].measurements_dir / "native_untuned.json").read_text())
    assert saved["samples_per_s"] > 0 and saved["native"]["samples"] == N
    with pytest.raises(DlrmError, match="dlrm_infer failed: .*out of range"):
        bad = experiment["exp"].root / "bad-testdata"
        shutil.copytree(experiment["testdata"], bad)
        sparse = np.load(bad / "sparse.npy")
        sparse[0, 0] = -5
        np.save(bad / "sparse.npy", sparse)
        from dlrmlib.building.native import run_native
        run_native(experiment["manifest"], bad, bad / "r.json")
