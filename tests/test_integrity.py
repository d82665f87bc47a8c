"""Verified weights and manifests (docs/formats.md, "Checksums"): a damaged or edited build is
one clear line from both runners and from `dlrm infer`, never a wrong result, a segfault or a
SIGBUS. Each test breaks a private copy of the tiny experiment and runs the real runners."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dlrmlib.backends.tvm import TvmBackend
from dlrmlib.building.native import native_binary
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import sha256_file
from dlrmlib.formats import weights as weights_module
from dlrmlib.formats.weights import extract_weights, write_manifest


@pytest.fixture
def exp(copy_tiny, tmp_path):
    """A private copy of the built tiny experiment (1.8 MB), to break."""
    root = tmp_path / "root"
    copy_tiny(root / "tiny")
    return Experiment.open("tiny", root=root)


def paths(exp):
    manifest = exp.manifest_path("untuned")
    m = json.loads(manifest.read_text())  # not read_manifest: the tests break manifests
    return {"so": manifest.parent / m["library"]["file"], "manifest": manifest,
            "weights": exp.weights_root / m["weights"]["layout_id"], "testdata": exp.testdata_dir}


def run_native(exp, *extra, env=None, p=None):
    p = p or paths(exp)
    command = [str(native_binary()), str(p["so"]), str(p["manifest"]), str(p["weights"]), str(p["testdata"]),
               "--iterations", "1", "--warmup", "0", *map(str, extra)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def native_refuses(done, *words):
    """Exit status 2 (not a signal), one line, every word in it."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlrm_infer: error: "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def python_refuses(exp, *words):
    with pytest.raises(DlrmError) as caught:
        TvmBackend(paths(exp)["manifest"])
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def cli_infer(exp, env=None):
    env = {**os.environ, "DLRM_EXPERIMENTS_DIR": str(exp.root.parent), **(env or {})}
    # the build these tests break (the latest may be another one: other test files add builds
    # to the shared tiny experiment, in an order that depends on how the files are distributed)
    return subprocess.run([sys.executable, "-m", "dlrmlib.cli.main", "infer", "--experiment", exp.name,
                           "--build", "untuned", "--iterations", "1", "--warmup", "0"], capture_output=True, text=True, env=env,
                          timeout=300)


def edit_manifest(exp, change, seal=True):
    """Apply change(manifest); `seal` writes it as a build would (a valid manifest_sha256), to
    reach the checks behind the seal."""
    path = paths(exp)["manifest"]
    manifest = json.loads(path.read_text())
    change(manifest)
    if seal:
        write_manifest(path, manifest)
    else:
        path.write_text(json.dumps(manifest, indent=2) + "\n")


def test_a_sound_build_is_verified_by_both_runners(exp, tmp_path):
    done = run_native(exp, "--json", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    assert "weight files match the manifest's SHA-256" in done.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["weights_verified"] is True and result["weights_verify_ms"] > 0
    assert str(paths(exp)["manifest"]) in (tmp_path / "r.json").read_text()  # paths written as paths
    assert TvmBackend(paths(exp)["manifest"]).weights_verified


def test_one_flipped_byte_is_refused_everywhere_unless_skipped(exp, tmp_path, capsys, monkeypatch):
    victim = paths(exp)["weights"] / "p000.bin"
    monkeypatch.setattr(weights_module, "RACY_NS", 0)  # remember every checksum: a change must still be seen
    assert TvmBackend(paths(exp)["manifest"]).weights_verified
    data = bytearray(victim.read_bytes())
    data[5] ^= 0x01
    victim.write_bytes(bytes(data))
    native_refuses(run_native(exp), "p000.bin", "does not match its checksum")
    python_refuses(exp, "p000.bin", "does not match its checksum")
    with pytest.raises(DlrmError, match="p000.bin .*does not match its checksum"):
        extract_weights(exp)  # what prepare and build call before using the folder
    done = cli_infer(exp)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("dlrm: error: "), done.stderr
    assert "p000.bin" in done.stderr and "Traceback" not in done.stderr
    assert not list(exp.measurements_dir.glob("native_*"))  # nothing stored
    # The documented way to skip the hashing: the runners run, and say they did not verify.
    for extra, env in ((["--no-verify-weights"], None), ([], {"DLRM_VERIFY_WEIGHTS": "0"})):
        done = run_native(exp, *extra, "--json", tmp_path / "r.json", env=env)
        assert done.returncode == 0, done.stderr
        assert "checksums   NOT verified" in done.stdout
        assert json.loads((tmp_path / "r.json").read_text())["weights_verified"] is False
    monkeypatch.setenv("DLRM_VERIFY_WEIGHTS", "0")
    assert not TvmBackend(paths(exp)["manifest"]).weights_verified
    assert "weight checksums NOT verified" in capsys.readouterr().err


def test_two_swapped_files_of_the_same_size_are_refused(exp):
    weights = paths(exp)["weights"]
    a, b = weights / "p001.bin", weights / "p033.bin"  # bot_l.0.bias and top_l.2.bias, float32 [32]
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    a.rename(weights / "tmp")
    b.rename(a)
    (weights / "tmp").rename(b)
    native_refuses(run_native(exp), "p001.bin", "swapped")
    python_refuses(exp, "p001.bin", "swapped")


def test_a_manifest_edited_after_the_build_is_refused(exp):
    edit_manifest(exp, lambda m: m["embedding"]["tables"].__setitem__(0, 100000), seal=False)
    native_refuses(run_native(exp), "edited after the build")
    python_refuses(exp, "edited after the build")


@pytest.mark.parametrize("rows, bad_id", [(100000, 99999), (41, 40)])
def test_table_rows_come_from_the_weight_files(exp, rows, bad_id):
    sparse = np.load(exp.testdata_dir / "sparse.npy")
    sparse[3, 0] = bad_id
    np.save(exp.testdata_dir / "sparse.npy", sparse)
    edit_manifest(exp, lambda m: m["embedding"]["tables"].__setitem__(0, rows))
    native_refuses(run_native(exp), f"embedding.tables[0] is {rows} rows", "emb_l.0.weight", "[40, 16]")
    python_refuses(exp, f"embedding.tables[0] is {rows} rows", "emb_l.0.weight", "[40, 16]")

    # The whole lie, layout.json included: the weight file's size still tells the truth.
    def grow(params):
        entry = next(p for p in params if p["name"] == "emb_l.0.weight")  # float32 [40, 16] in p004.bin
        entry["shape"][0] = rows
        entry["bytes"] = rows * entry["shape"][1] * 4

    edit_manifest(exp, lambda m: grow(m["params"]))
    layout_path = paths(exp)["weights"] / "layout.json"
    layout = json.loads(layout_path.read_text())
    grow(layout["params"])
    layout_path.write_text(json.dumps(layout))
    native_refuses(run_native(exp), "p004.bin", "2560 bytes, expected")
    python_refuses(exp, "p004.bin", "2560 bytes, expected")


@pytest.mark.parametrize("key", ["build", "target"])
def test_a_manifest_without_build_or_target_is_refused(exp, key):
    edit_manifest(exp, lambda m: m.pop(key))
    native_refuses(run_native(exp), f"missing key '{key}'")
    python_refuses(exp, f"no '{key}' section")


def test_a_manifest_nested_too_deep_is_refused_not_a_stack_overflow(exp):
    p = paths(exp)
    p["manifest"].write_text("[" * 100000)  # tvm-ffi's parser recurses once per bracket
    native_refuses(run_native(exp, p=p), "nesting too deep")


def test_a_manifest_of_the_old_format_is_refused(exp):
    path = paths(exp)["manifest"]
    path.write_text(path.read_text().replace('"format_version": 2', '"format_version": 1'))
    native_refuses(run_native(exp), "format_version 1", "rebuild")
    python_refuses(exp, "version 1", "rebuild")


def test_a_truncated_library_with_its_hash_updated_is_refused_not_a_sigbus(exp):
    so = paths(exp)["so"]
    os.truncate(so, so.stat().st_size // 2)
    edit_manifest(exp, lambda m: m["library"].__setitem__("sha256", sha256_file(so)))
    native_refuses(run_native(exp), "truncated or damaged library")
    python_refuses(exp, "truncated or damaged")
