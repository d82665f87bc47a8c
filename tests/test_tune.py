"""Tuning: a killed run keeps every finished trial and the next one resumes; builds from a log
match ONNX Runtime and their weights folder is what the manifest says, prepacked (the default)
and plain; the curve draws its peers. Real TVM and MetaSchedule, small budgets (batches of 4
trials)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from tune_process import start_tune

from dlrmlib.backends.tvm import TvmBackend
from dlrmlib.building.build import build
from dlrmlib.building.recipes import FromLog
from dlrmlib.cli.main import main as dlrm
from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.tuning_log import (
    RECORDS_FILE,
    TASKS_FILE,
    WORKLOADS_FILE,
    WRITTEN_FILE,
    count_records,
    crossing,
    log_mode,
    read_tasks,
    read_written,
    repair_log,
    resolve_prepack,
    set_aside_transposed_log,
    task_table,
    tuning_curve,
    tuning_log_dir,
    written_choice,
    written_wins,
)
from dlrmlib.formats.weights import (
    extract_weights,
    manifest_params,
    manifest_weights_dir,
    read_manifest,
    verify_library,
    verify_weights_folder,
)
from dlrmlib.schedules.knobs import kernel_configs
from dlrmlib.tuning.metaschedule import tune

NAME = "tune-tiny"
BATCH = 4  # trials per batch: small, so records appear within seconds
quiet = dict(progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def experiment(experiments_root):
    from dlrmlib.prepare import prepare

    return prepare(NAME, preset="tiny", batch_size=16, samples=64, root=experiments_root, log=lambda _: None)


@pytest.fixture(scope="module")
def plain_log(experiment):
    """A plain log (the study's layout) with two batches."""
    tune(experiment, trials=2 * BATCH, trials_per_batch=BATCH, prepack=False, **quiet)
    return tuning_log_dir(experiment, prepack=False)


def _start_tuning(experiment, trials: int) -> subprocess.Popen:
    return start_tune(experiment, trials, BATCH, space="hand-written")


def _wait_for_records(folder, at_least: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while count_records(folder) < at_least:
        assert process.poll() is None, "the tuning run ended before writing records"
        assert time.monotonic() < deadline, f"no {at_least} records after {timeout} s"
        time.sleep(0.5)


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the tuning process alone (as a crash would), then its orphaned workers."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_killed_run_keeps_every_finished_trial_and_the_next_run_resumes(experiment):
    folder = tuning_log_dir(experiment, prepack=True)  # a fresh experiment tunes prepacked by default
    process = _start_tuning(experiment, trials=400)
    try:
        _wait_for_records(folder, BATCH, process)
        with pytest.raises(DlrmError, match="already being tuned"):
            tune(experiment, trials=400, **quiet)
        seen = (folder / RECORDS_FILE).read_bytes()
    finally:
        _kill(process)
    on_disk = (folder / RECORDS_FILE).read_bytes()
    assert on_disk.startswith(seen), "records written before the kill changed"
    with open(folder / RECORDS_FILE, "ab") as f:  # a write torn by the kill
        f.write(b'[0, [["half a record')
    kept = count_records(folder)
    assert kept >= BATCH

    result = tune(experiment, trials=kept + BATCH, trials_per_batch=BATCH, **quiet)

    assert result.trials >= kept + BATCH and result.new_trials >= BATCH
    data = (folder / RECORDS_FILE).read_bytes()
    assert data.startswith(on_disk[: on_disk.rfind(b"\n") + 1]), "a finished trial was lost"
    assert all(json.loads(line) for line in data.splitlines())  # the torn line is gone
    curve = tuning_curve(folder)
    assert curve["trial"].iloc[-1] >= kept + BATCH
    assert (curve["estimated_latency_s"].diff().dropna() <= 1e-12).all()  # never worse than before
    assert 0 < task_table(folder)["trials"].sum() <= curve["trial"].iloc[-1]


def test_repair_cuts_only_a_torn_last_line(tmp_path):
    (tmp_path / RECORDS_FILE).write_bytes(b'[0, 1]\n[0, 2]\n[0, ')
    (tmp_path / "database_workload.json").write_bytes(b'["a", 1]\n')
    assert repair_log(tmp_path) == len(b"[0, ")
    assert (tmp_path / RECORDS_FILE).read_bytes() == b'[0, 1]\n[0, 2]\n'
    assert repair_log(tmp_path) == 0 and count_records(tmp_path) == 2


def _check_build(manifest_path, max_abs_error: float) -> dict:
    """Matches ONNX Runtime; manifest, library and weights folder belong together."""
    assert max_abs_error <= 1e-5
    manifest = read_manifest(manifest_path)
    verify_library(manifest_path, manifest)
    verify_weights_folder(manifest_weights_dir(manifest_path, manifest), manifest["weights"]["layout_id"],
                          manifest_params(manifest))
    TvmBackend(manifest_path)  # loads the library with exactly the manifest's parameters
    return manifest


def test_build_from_the_log_matches_onnx_runtime(experiment, plain_log):
    records = count_records(plain_log)
    assert dlrm(["build", "--experiment", NAME, "--no-prepack"]) == 0  # the plain log, for the study
    measured = experiment.measurements()[f"python_vm_{records}"]
    manifest = _check_build(experiment.manifest_path(str(records)), measured["max_abs_error"])
    assert manifest["build"]["tuned"] and manifest["build"]["trials"] == records
    assert manifest["weights"]["transform"] is None
    assert manifest["weights"]["layout_id"] == extract_weights(experiment)[2]  # the plain weights


def _dense_weights_are_laid_out_by_their_kernels(experiment, folder, tmp_path) -> None:
    """Every Dense workload of a prepacked log takes its Gemm weight as a parameter its schedule
    may lay out (fused_NT_matmul, layout-free), not a transposed copy; a log from before that is
    refused by name."""
    from tvm.s_tir import meta_schedule as ms

    dense = [t["name"] for t in read_tasks(folder)["tasks"] if "matmul" in t["name"]]
    assert dense and all("NT_matmul" in name for name in dense)
    for line in (folder / WORKLOADS_FILE).read_text().splitlines():
        func = ms.database.Workload.from_json(json.loads(line)).mod["main"]
        if "matmul" in func.script():
            assert 1 in [int(i) for i in func.attrs["layout_free_buffers"]]
    old = tmp_path / "before-nt"
    shutil.copytree(folder, old)
    tasks = json.loads((old / TASKS_FILE).read_text())
    del tasks["dense_weights"]
    (old / TASKS_FILE).write_text(json.dumps(tasks))
    with pytest.raises(DlrmError, match="transposed copy of their weights"):
        build(experiment, FromLog(old), log=lambda _: None)
    records = (old / RECORDS_FILE).read_bytes()  # a tuning run's first step sets it aside, whole
    assert set_aside_transposed_log(old) == tmp_path / "before-nt.transposed-weights"
    assert (tmp_path / "before-nt.transposed-weights" / RECORDS_FILE).read_bytes() == records
    assert not any(old.iterdir()) and set_aside_transposed_log(folder) is None


def test_prepacked_build_from_its_log_matches_onnx_runtime(experiment, plain_log, tmp_path):
    with pytest.raises(DlrmError, match="without weight prepacking"):
        build(experiment, FromLog(plain_log, prepack=True), log=lambda _: None)
    assert FromLog(plain_log).layout(experiment) is False  # a named log is built as it records
    tune(experiment, trials=BATCH, trials_per_batch=BATCH, **quiet)  # the default: prepacked
    result = build(experiment, FromLog(), log=lambda _: None)
    manifest = _check_build(result.manifest, result.verification["max_abs_error"])
    records = count_records(tuning_log_dir(experiment, prepack=True))
    assert result.tag == f"{records}_prepack" and manifest["build"]["prepack"]
    assert manifest["weights"]["transform"] == "main_transform_params"
    folder = manifest_weights_dir(result.manifest, manifest)
    params = manifest_params(manifest)
    assert any(p.name.startswith("main_transform_params") for p in params), "nothing was prepacked"
    records = (tuning_log_dir(experiment, prepack=True) / RECORDS_FILE).read_text()
    assert '"SetScope"' in records, "no schedule of the hand-written space in the log (the killed run's)"
    written = read_written(tuning_log_dir(experiment, prepack=True))  # used as written: no task
    assert any(name.startswith("interaction") for name in written["fixed"]) and written["dense"]
    # the interaction's prefetch knobs: measured by the run into its own log, timed and built with
    measured = kernel_configs(tuning_log_dir(experiment, prepack=True))
    interaction = next(name for name in written["fixed"] if name.startswith("interaction"))
    assert written["fixed"][interaction]["knobs"] == measured[interaction]
    assert manifest["build"]["kernel_knobs"][interaction] == measured[interaction]
    edited = tmp_path / "edited-log"  # a hand-edited written.json: refused by name, before any compiling
    shutil.copytree(tuning_log_dir(experiment, prepack=True), edited)
    text = json.loads((edited / WRITTEN_FILE).read_text())
    text["fixed"][interaction]["knobs"] = {"prefetch": "far"}
    (edited / WRITTEN_FILE).write_text(json.dumps(text))
    with pytest.raises(DlrmError, match=f"{WRITTEN_FILE}: the entry for {interaction} has knobs"):
        build(experiment, FromLog(edited), log=lambda _: None)
    # each tuned Dense layer: its hand-written GEMM and best trial timed side by side at the run's end,
    # and the build takes the faster of each pair
    duels = {d["kernel"]: d["duel"] for d in written["dense"].values() if "duel" in d}
    assert duels and all(d["written_s"] > 0 and d["trial_s"] > 0 and d["rounds"] == 3 for d in duels.values())
    assert written_choice(tuning_log_dir(experiment, prepack=True))[0] == {k for k, d in duels.items()
                                                                         if written_wins(d)}
    assert not any("concat" in t["name"] or "take" in t["name"]
                   for t in read_tasks(tuning_log_dir(experiment, prepack=True))["tasks"])
    _dense_weights_are_laid_out_by_their_kernels(experiment, tuning_log_dir(experiment, prepack=True), tmp_path)
    tables = [p for p in params if p.name.startswith("emb_l.")]
    assert len(tables) == 26  # untouched, and hard-linked from the plain weights folder, not copied
    assert all((folder / p.file).stat().st_nlink >= 2 for p in tables)
    assert folder.name != extract_weights(experiment)[2]


def test_default_layout_is_prepacked_unless_only_an_older_plain_log_exists(tmp_path):
    experiment = SimpleNamespace(tune_dir=tmp_path)
    assert resolve_prepack(experiment, None) is True  # nothing tuned yet
    (tmp_path / RECORDS_FILE).write_text('[0, 1]\n')  # an older experiment: plain records only
    assert resolve_prepack(experiment, None) is False and log_mode(tmp_path) is None
    (tmp_path / "tasks.json").write_text('{"batch_size": 16}')  # before the option: plain
    assert log_mode(tmp_path) is False
    (tmp_path / "prepack").mkdir()
    (tmp_path / "prepack" / RECORDS_FILE).write_text('[0, 1]\n')
    assert resolve_prepack(experiment, None) is True and resolve_prepack(experiment, False) is False


def test_curve_draws_its_peers_and_where_it_crosses_them(experiment, plain_log):
    from dlrmlib.building.verify import measure_onnxruntime
    from dlrmlib.formats.testdata import read_test_data
    from dlrmlib.reporting.plots import plot_tuning_curve, reference_latencies

    curve = tuning_curve(plain_log)
    start, end = curve["estimated_latency_s"].iloc[0], curve["estimated_latency_s"].iloc[-1]
    assert end < start, "the tiny log did not improve on the untuned kernels"
    between = (start + end) / 2
    met = crossing(curve, between)
    assert met and 0 < met["trial"] <= curve["trial"].iloc[-1] and crossing(curve, end / 2) is None
    measure_onnxruntime(experiment, read_test_data(experiment.testdata_dir), 16, repeats=3)
    measured = reference_latencies(experiment, 16)
    assert measured["ONNX Runtime"] > 0 and reference_latencies(experiment, 17) == {}
    fig = plot_tuning_curve(experiment, plain_log, references={"ONNX Runtime": between, "custom kernels": end / 2})
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any(label.startswith("ONNX Runtime") for label in labels)
    assert any(label.startswith("custom kernels") for label in labels)
    caption = fig.texts[0].get_text() if fig.texts else fig._suptitle.get_text()
    assert f"reached at trial {met['trial']}" in caption and "custom kernels" in caption and "not reached" in caption
    assert (experiment.figures_dir / "tuning_curve.png").is_file()


def test_a_stalled_search_stops_its_kernel_and_the_run_says_why():
    from dlrmlib.tuning.session import STALL_BATCHES, Session, TaskState

    improving = TaskState("improving", 1.0, 2e9, history=[5.0, 4.0, 3.0, 2.0, 1.0])
    flat = TaskState("flat", 1.0, 2e9, history=[5.0, 1.0, 0.999, 0.998, 0.997])
    young = TaskState("young", 1.0, 2e9, history=[1.0] * STALL_BATCHES)  # too few batches to judge
    assert flat.stalled() and not improving.stalled() and not young.stalled()
    session = Session([improving, flat], budget=3000, trials=700, trials_file=None, at_roof=["improving"],
                      stalled=["flat"])
    assert session.end_reason() == ("every kernel is done (1 within the roof margin, 1 no gain in "
                                    f"{STALL_BATCHES} batches) at 700 of 3000 trials")
    session.trials = 3000
    assert session.end_reason() is None  # the budget ended it


def test_kernels_at_their_compute_roof_stop_once_and_only_with_a_margin():
    from dlrmlib.tuning.session import Session, TaskState

    dense = TaskState("dense", 1.0, 2e9, best_s=0.0104, floor_s=0.01)
    assert dense.at_roof(0.05) and not dense.at_roof(0.01) and not dense.at_roof(None)
    gather = TaskState("gather", 1.0, 0.0, best_s=1e-9)  # no FLOP estimate: never at a roof
    slow = TaskState("slow", 1.0, 2e9, best_s=0.02, floor_s=0.01)
    session = Session([gather, dense, slow], budget=8, trials=0, trials_file=None, roof_margin=0.05)
    assert session.roof_stops(alive=[0, 1, 2]) == [1] and session.at_roof == ["dense"]
    assert session.roof_stops(alive=[0, 2]) == [] and Session([dense], 8, 0, None).roof_stops([0]) == []


def test_a_roof_stop_measures_the_peak_again_and_keeps_the_highest():
    """A peak measured under another job's load made every Dense kernel look at its roof (a
    3000-trial run ended at 198): before stopping one, the session measures the peak again."""
    from dlrmlib.tuning.session import Session, TaskState

    fast = TaskState("fast", 1.0, 2e9, best_s=0.0100)  # 200 GFLOP/s
    slow = TaskState("slow", 1.0, 2e9, best_s=0.0200)  # 100 GFLOP/s
    peaks = iter([210e9, 90e9])  # the machine quiet now, then loaded again
    session = Session([fast, slow], budget=8, trials=0, trials_file=None, roof_margin=0.05,
                      measure_peak=lambda: next(peaks))
    session.set_peak(60e9)  # measured at the start, under load: both kernels "beyond the roof"
    assert session.roof_stops(alive=[0, 1]) == [0] and session.peak_flops == 210e9
    assert session.roof_stops(alive=[1]) == [] and session.peak_flops == 210e9  # a lower peak never lowers it


def test_a_roof_stop_times_the_best_trial_again_and_a_slower_one_searches_on():
    """The best of many noisy timings is biased low (two Zen 3 kernels logged more than the sgemm
    peak and stopped after 68 trials): a kernel stops at its roof only if its best trial, timed
    again, is there too; it is timed again once per best trial."""
    from dlrmlib.tuning.session import Session, TaskState

    lucky = TaskState("lucky", 1.0, 2e9, best_s=0.0100, floor_s=0.0100)  # as logged: at the roof
    real = TaskState("real", 1.0, 2e9, best_s=0.0101, floor_s=0.0100)
    again = {0: [0.0150, 0.0102], 1: [0.0103]}  # what timing each one again gives, in turn
    timed = []
    session = Session([lucky, real], budget=8, trials=0, trials_file=None, roof_margin=0.05,
                      retime_best=lambda i: timed.append(i) or again[i].pop(0))
    assert session.roof_stops(alive=[0, 1]) == [1] and session.at_roof == ["real"]
    assert session.roof_stops(alive=[0]) == [] and timed == [0, 1]  # same best trial: not timed again
    assert session.held_back() == {"lucky": (0.0100, 0.0150)}
    lucky.add_trial(0.0099)  # a new best trial: timed again, and now it holds
    assert session.roof_stops(alive=[0]) == [0] and timed == [0, 1, 0] and not session.held_back()


def test_a_real_roof_stop_says_what_the_best_trial_took_timed_again(experiment):
    """Through a real run: with a margin so wide that every Dense kernel is at its roof as
    logged, each is built and timed again before it stops, and the log says the time."""
    import re

    tune(experiment, trials=BATCH, trials_per_batch=BATCH, **quiet)  # the prepacked log, if not there yet
    done = count_records(tuning_log_dir(experiment, prepack=True))
    lines = []
    tune(experiment, trials=done + BATCH, trials_per_batch=BATCH, roof_margin=1e6, progress=False, log=lines.append)
    stopped = [line for line in lines if "compute roof" in line and "no more trials" in line]
    assert stopped and re.search(r"NT_matmul\w* \(best trial timed again: \d+\.\d{3} ms\)", stopped[0]), lines
