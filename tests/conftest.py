"""Shared fixtures: one tiny experiment, prepared and built once per test session."""
from __future__ import annotations

import os

import pytest

TINY_BATCH = 16
TINY_SAMPLES = 64
MAX_WORKERS = 4  # each worker makes the session's shared experiment and build again


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject.toml): one worker per usable core, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


@pytest.fixture(scope="session")
def experiments_root(tmp_path_factory):
    """Every experiment the tests make lives here; notebooks find it through the environment."""
    root = tmp_path_factory.mktemp("experiments")
    old = os.environ.get("DLRM_EXPERIMENTS_DIR")
    os.environ["DLRM_EXPERIMENTS_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("DLRM_EXPERIMENTS_DIR", None)
    else:
        os.environ["DLRM_EXPERIMENTS_DIR"] = old


@pytest.fixture(scope="session")
def tiny_experiment(experiments_root):
    from dlrmlib.prepare import prepare

    return prepare("tiny", preset="tiny", batch_size=TINY_BATCH, samples=TINY_SAMPLES, root=experiments_root,
                   log=lambda _: None)


@pytest.fixture(scope="session")
def tiny_build(tiny_experiment):
    from dlrmlib.building.build import build

    return build(tiny_experiment, log=lambda _: None)


@pytest.fixture(scope="session")
def copy_tiny(tiny_build):
    """copy_tiny(dest): a copy of the tiny experiment with `tiny_build`'s build only, to break or
    run on. Other test files add builds to the shared experiment, and which of them ran first on
    a worker depends on how pytest-xdist distributes the files; a copy of everything made "the
    latest build" someone else's."""
    import shutil
    from pathlib import Path

    source = tiny_build.manifest.parents[1]
    keep = f"saved_model_{tiny_build.tag}."

    def ignore(folder, names):
        return [n for n in names if not n.startswith(keep)] if Path(folder) == source / "builds" else []

    def copy(dest):
        shutil.copytree(source, dest, ignore=ignore, dirs_exist_ok=True)
        return dest

    return copy


# 04_profile's parameters for the shared run below: every peer, TVM (each build), two batch sizes
# (16 is the tiny build's; 4 has only the custom kernels' build), small repeats.
PROFILE_BATCHES = [4, 16]
PROFILE_PEERS = ["onnxruntime", "openvino", "pytorch-eager"]
PROFILE_REPEATS = 3


@pytest.fixture(scope="session")
def profiled_tiny(tiny_experiment, tiny_build, tmp_path_factory):
    """The tiny experiment with its custom kernels built for batch 4 too, 04_profile (profile and
    benchmark) and 05_report executed once, and the HTML report of the two. tests/test_profile.py
    and tests/test_report.py read different facts of this one run (each used to execute 04 itself)."""
    from types import SimpleNamespace

    from dlrmlib.building.build import build_custom_batches
    from dlrmlib.cli.notebooks import run_notebook
    from dlrmlib.core.files import read_json
    from dlrmlib.core.machine import tvm_pool_threads
    from dlrmlib.reporting.report import render_report

    exp = tiny_experiment
    build_custom_batches(exp, PROFILE_BATCHES, log=lambda _: None)  # custom_b4; 16 has tiny_build
    out = tmp_path_factory.mktemp("notebooks")
    # TVM sizes its thread pool once per process (the notebook kernels inherit TVM_NUM_THREADS):
    # bench TVM at that size.
    parameters = {"repeats": PROFILE_REPEATS, "min_seconds": 0.2, "quick_peaks": True, "bench_repeats": PROFILE_REPEATS,
                  "batch_sizes": PROFILE_BATCHES, "threads": [tvm_pool_threads()], "runtimes": [*PROFILE_PEERS, "tvm"]}
    profile_notebook = run_notebook("04_profile", exp.name, parameters, output_dir=out)
    # read now: a later test may measure the experiment again
    profile, bench = read_json(exp.measurements_dir / "profile.json"), read_json(exp.measurements_dir / "bench.json")
    report_notebook = run_notebook("05_report", exp.name, {}, output_dir=out)
    return SimpleNamespace(exp=exp, profile_notebook=profile_notebook, profile=profile, bench=bench,
                           report_notebook=report_notebook, html=render_report(exp, out))
