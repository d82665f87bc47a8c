"""A hostile-but-honest user: wrong results never pass silently, absurd numbers are refused,
and a full disk, a read-only folder or too little memory give one line and exit status 2."""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment, check_name
from dlrmlib.core.files import read_json
from dlrmlib.formats.testdata import TestData, read_test_data, write_test_data

TINY = ["--preset", "tiny", "--batch-size", "16", "--samples", "32"]
UNSHARE = shutil.which("unshare")


def dlrm(*args, root, env=None, prefix=()):
    env = {**os.environ, "DLRM_EXPERIMENTS_DIR": str(root), **(env or {})}
    return subprocess.run([*prefix, sys.executable, "-m", "dlrmlib.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def clear_error(done, *words) -> str:
    """Exit status 2, our one line last, no traceback, no logging flood."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dlrm: error: "), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Logging error" not in done.stderr
    for word in words:
        assert word in last, (word, last)
    return last


@pytest.fixture()
def copy(copy_tiny, experiments_root, request):
    """A copy of the session's tiny experiment with its untuned build, to damage freely."""
    name = f"hostile-{abs(hash(request.node.name)):x}"
    copy_tiny(experiments_root / name)
    return Experiment.open(name)


# -- wrong results ------------------------------------------------------------------------------

def test_a_build_that_fails_its_check_is_moved_out_of_every_runners_way(copy, experiments_root):
    reference = copy.testdata_dir / "reference.npy"
    np.save(reference, np.load(reference) + 0.25)  # the build is now 0.25 away from the reference

    clear_error(dlrm("infer", "--experiment", copy.name, root=experiments_root), "differ from the reference", "2.50e-01")
    assert copy.measurement("native_untuned")["status"] == "failed"

    clear_error(dlrm("build", "--experiment", copy.name, root=experiments_root), "differs from the reference",
                "builds/failed")
    assert copy.measurement("python_vm_untuned")["status"] == "failed"
    assert sorted(p.name for p in (copy.builds_dir / "failed").iterdir()) == ["saved_model_untuned.json",
                                                                             "saved_model_untuned.so"]
    assert copy.builds() == []
    clear_error(dlrm("infer", "--experiment", copy.name, root=experiments_root), "no build yet")


# -- absurd numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["tune", "--trials", "1000000000000"], ["too large", "1,000,000", "32-bit"]),
    (["tune", "--trials", "4294967480"], ["too large"]),
    (["tune", "--trials", "1" * 23], ["too large"]),
    (["loadgen", "--target-qps", "inf"], ["finite"]),
    (["loadgen", "--target-qps", "nan"], ["finite"]),
    (["loadgen", "--target-qps", "1e9"], ["too large"]),
    (["loadgen", "--min-duration", "1e12"], ["too large"]),
    (["loadgen", "--query-samples", "0"], ["positive"]),
    (["prepare", "--samples", "10000000000"], ["too large"]),
    (["prepare", "--seed", "-1"], ["at least 0"]),
    (["infer", "--iterations", "-3"], ["at least 0"]),
    (["bench", "--batch-sizes", "0,8"], ["from 1"]),
    (["profile", "--min-seconds", "nan"], ["finite"]),
])
def test_absurd_numbers_are_refused_in_one_line(capsys, args, words):
    from types import SimpleNamespace

    from dlrmlib.cli.main import main

    code = main(args)
    clear_error(SimpleNamespace(returncode=code, stderr=capsys.readouterr().err), *words)


def test_loadgen_target_far_from_the_calibrated_capacity_is_refused(copy, experiments_root):
    from dlrmlib.measuring.loadgen import check_target

    done = dlrm("loadgen", "--experiment", copy.name, "--scenario", "Server", "--target-qps", 1e-9,
                "--min-duration", 1, "--query-samples", 4, root=experiments_root)
    clear_error(done, "out of range", "calibrated")
    assert copy.measurement("loadgen_Server") is None
    check_target(50.0, 10.0, 600)
    for target, duration, words in ((101.0, 60, "out of range"), (1e-3, 60, "out of range"),
                                    (90.0, 86400, "at most 2,000,000"), (float("nan"), 60, "finite")):
        with pytest.raises(DlrmError, match=words):
            check_target(target, 10.0, duration)


def test_labels_must_be_clicks(tmp_path):
    n = 8
    for bad in (np.nan, 2.0, -1.0):
        labels = np.zeros(n, np.float32)
        labels[3] = bad
        folder = tmp_path / f"td{bad}"
        write_test_data(folder, TestData(np.zeros((n, 13), np.float32), np.zeros((n, 26), np.int64), labels),
                        {"tables": [10] * 26})
        with pytest.raises(DlrmError, match="labels must be 0 or 1.*sample 3"):
            read_test_data(folder)


# -- names and paths ----------------------------------------------------------------------------

def test_names_and_paths_say_what_is_wrong(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from dlrmlib.cli.main import main

    def refused(*args, root, words):
        monkeypatch.setenv("DLRM_EXPERIMENTS_DIR", str(root))
        code = main(list(args))
        clear_error(SimpleNamespace(returncode=code, stderr=capsys.readouterr().err), *words)

    with pytest.raises(DlrmError, match="at most 128 characters"):
        check_name("x" * 129)
    assert check_name("x" * 128)
    refused("prepare", "--onnx-model", str(tmp_path), root=tmp_path, words=["is a folder"])
    refused("infer", root="", words=["set but empty"])
    (tmp_path / "a-file").write_text("")
    refused("infer", root=tmp_path / "a-file", words=["a file, not a folder"])
    refused("prepare", *TINY, root=tmp_path / "a-file" / "below", words=["not a folder"])


def test_an_experiment_made_from_anothers_model_can_be_loaded_by_onnx(tmp_path, experiments_root):
    from dataclasses import replace

    from dlrmlib.formats.model import generate_model
    from dlrmlib.formats.presets import PRESETS
    from dlrmlib.prepare import prepare

    source = generate_model(replace(PRESETS["tiny"], table_rows=(20000,) * 26), tmp_path / "src" / "m.onnx")
    assert (tmp_path / "src" / "m.onnx.data").is_file()
    exp = prepare("from-another", onnx_model=source, batch_size=8, samples=16, root=experiments_root,
                  log=lambda _: None)
    data = exp.model_dir / "m.onnx.data"
    assert data.stat().st_nlink == 1 and (tmp_path / "src" / "m.onnx.data").stat().st_nlink == 1
    onnx.load(str(exp.source_model))  # refuses data files with several hard links


# -- the machine says no ------------------------------------------------------------------------

def in_namespace(tmp_path, setup: str, commands: str) -> str:
    """Run shell `commands` in a private mount namespace after `setup` (mounts under tmp_path);
    their output, or a skip where user namespaces are off."""
    if UNSHARE is None or subprocess.run([UNSHARE, "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -rm` to mount a small tmpfs (user namespaces are off here)")
    done = subprocess.run([UNSHARE, "-rm", "sh", "-c", f"{setup} || exit 99\n{commands}"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "DLRM_EXPERIMENTS_DIR": str(tmp_path / "m")})
    assert done.returncode != 99, done.stderr
    return done.stdout.replace("\r", "\n")


def test_a_full_disk_is_one_line_and_leaves_an_unprepared_experiment(tmp_path):
    mount, dlrm_ = tmp_path / "m", f"{sys.executable} -m dlrmlib.cli.main"
    mount.mkdir()
    out = in_namespace(tmp_path, f"mount -t tmpfs -o size=1m tmpfs {mount}",
                       f"{dlrm_} prepare --experiment e {' '.join(TINY)} 2>&1 | tail -1\n"
                       f"echo temporaries: $(find {mount} -name '*.tmp*' | wc -l)\n"
                       f"{dlrm_} build --experiment e 2>&1 | tail -1\n")
    prepared, temporaries, built = [line for line in out.splitlines() if line.strip()][-3:]
    assert prepared.startswith("dlrm: error: ") and "no space left on the device" in prepared, out
    assert temporaries == "temporaries: 0"
    assert built.startswith("dlrm: error: ") and "its last `dlrm prepare` did not finish" in built, out


def test_a_read_only_experiments_folder_is_one_line(tmp_path):
    mount = tmp_path / "m"
    mount.mkdir()
    out = in_namespace(tmp_path, f"mount -t tmpfs -o size=1m tmpfs {mount} && mount -o remount,ro {mount}",
                       f"{sys.executable} -m dlrmlib.cli.main prepare --experiment e {' '.join(TINY)} 2>&1; "
                       "echo status $?")
    lines = out.strip().splitlines()
    assert lines[-1] == "status 2" and lines[-2].startswith("dlrm: error: ") and "read-only" in lines[-2], out
    assert "Traceback" not in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: no permission error to provoke")
def test_a_folder_without_write_permission_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    clear_error(dlrm("prepare", "--experiment", "e", *TINY, root=locked), "permission denied")


def test_too_little_memory_is_one_line_also_when_tvm_aborts(copy, experiments_root):
    """`ulimit -v`: Python's MemoryError and C++'s std::bad_alloc are one line; when TVM's compiler
    aborts the process (exit 134, no message at all), the parent process says what happened."""
    def limited(gib: float):
        return lambda: resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2**30), int(gib * 2**30)))

    env = {**os.environ, "DLRM_EXPERIMENTS_DIR": str(experiments_root)}
    for gib in (1.0, 1.15):
        done = subprocess.run([sys.executable, "-m", "dlrmlib.cli.main", "build", "--experiment", copy.name],
                              capture_output=True, text=True, env=env, timeout=300, preexec_fn=limited(gib))
        if done.returncode == 0:
            pytest.skip(f"the build fits in {gib} GiB of address space here")
        last = clear_error(done)
        assert "out of memory" in last, last


# -- the parallel benchmark cannot hang ---------------------------------------------------------

def test_parallel_benchmark_runs_each_session_once_on_the_main_thread_first(tiny_experiment):
    from dlrmlib.backends import batch_inputs
    from dlrmlib.backends.onnxruntime import OnnxRuntimeBackend
    from dlrmlib.measuring.bench import parallel_samples_per_s

    class FirstCallThread:
        """A real ONNX Runtime session that notes which thread made its first call."""

        def __init__(self):
            self.inner = OnnxRuntimeBackend(tiny_experiment.normalised_model, tiny_experiment.batch_size, 1)
            self.batch_size, self.first = self.inner.batch_size, None

        def predict(self, batch):
            self.first = self.first or threading.current_thread()
            return self.inner.predict(batch)

    data = read_test_data(tiny_experiment.testdata_dir)
    sessions = [FirstCallThread(), FirstCallThread()]
    rate = parallel_samples_per_s(sessions, batch_inputs(data.dense, data.sparse, tiny_experiment.batch_size, 2),
                                  0.2)
    assert rate > 0 and all(s.first is threading.main_thread() for s in sessions)


def test_measurements_record_their_status(copy):
    """Every saved check says whether it passed (a report can tell a failure from a success)."""
    from dlrmlib.building.verify import verify_build

    result = verify_build(copy, copy.latest_build(), repeats=1, log=lambda _: None)
    saved = read_json(copy.measurements_dir / "python_vm_untuned.json")
    assert result["status"] == saved["status"] == "ok" and saved["tolerance"] == 1e-5
