"""Kills at any moment of a tuning run: `trials.jsonl` and the database agree after the next run,
and nothing measured is lost; damaged lines in either file are reported and set aside.
Real MetaSchedule on the tiny preset, batches of 4 trials."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tune_process import start_tune

from dlrmlib.cli.main import main as dlrm
from dlrmlib.formats.tuning_log import (
    DAMAGED_SUFFIX,
    RECORDS_FILE,
    TRIALS_FILE,
    count_records,
    derive_trials,
    read_trials,
    snapshot_log,
    tuning_log_dir,
)
from dlrmlib.tuning.metaschedule import tune

NAME = "tune-kills"
BATCH = 4


@pytest.fixture(scope="module")
def experiment(experiments_root):
    from dlrmlib.prepare import prepare

    return prepare(NAME, preset="tiny", batch_size=16, samples=32, root=experiments_root, log=lambda _: None)


def _start(experiment, trials: int) -> subprocess.Popen:
    return start_tune(experiment, trials, BATCH)


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _kill_when(process: subprocess.Popen, ready, timeout: float = 200) -> None:
    """SIGKILL the run (then its orphaned workers) the moment `ready()` holds."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the tuning run ended before the kill point"
            assert time.monotonic() < deadline, f"kill point not reached in {timeout} s"
            time.sleep(0.002)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _snapshot(folder) -> tuple[bytes, list[dict]]:
    path = folder / TRIALS_FILE
    text = path.read_text() if path.is_file() else ""
    trials = [json.loads(line) for line in text.splitlines() if line.endswith("}")]
    return (folder / RECORDS_FILE).read_bytes(), trials


def _agree(folder) -> None:
    lines = [json.loads(line) for line in (folder / TRIALS_FILE).read_text().splitlines()]
    assert len(lines) == count_records(folder)
    assert lines == derive_trials(folder)[0] == read_trials(folder)
    assert [t["trial"] for t in lines] == list(range(1, len(lines) + 1))


def test_kills_between_the_record_and_its_trial_line_lose_nothing(experiment):
    folder = tuning_log_dir(experiment, prepack=True)  # the default layout
    records, trials = folder / RECORDS_FILE, folder / TRIALS_FILE
    # 1: between the database write and the trials line (the cost model updates in between)
    _kill_when(_start(experiment, 400), lambda: _lines(records) > max(_lines(trials), 0) > 0
               or (_lines(records) > 0 and not trials.exists()))
    db1, trials1 = _snapshot(folder)
    assert count_records(folder) > len(trials1), "the kill did not land between record and trial line"
    # 2: the next run, killed as soon as it has brought trials.jsonl up to date (start-up)
    _kill_when(_start(experiment, 400), lambda: _lines(trials) >= len(db1.splitlines()))
    db2, trials2 = _snapshot(folder)
    # 3: a run to the end
    result = tune(experiment, trials=count_records(folder) + BATCH, trials_per_batch=BATCH, progress=False,
                  log=lambda _: None)
    assert result.new_trials >= BATCH
    _agree(folder)
    final = read_trials(folder)
    data = records.read_bytes()
    for db, before in ((db1, trials1), (db2, trials2)):
        assert data.startswith(db[: db.rfind(b"\n") + 1]), "a measured record was lost"
        for trial in before:  # every trial line written before a kill is still there, unchanged
            assert final[trial["trial"] - 1] == trial
    recovered = [t for t in final if t.get("recovered")]
    assert recovered and all(t["trial"] > len(trials1) for t in recovered)


def test_damaged_lines_are_reported_with_file_and_line_and_set_aside(experiment, capsys, tmp_path):
    folder = tuning_log_dir(experiment, prepack=True)  # the default layout
    if count_records(folder) < 3:
        tune(experiment, trials=BATCH, trials_per_batch=BATCH, progress=False, log=lambda _: None)
    lines = (folder / RECORDS_FILE).read_bytes().splitlines(keepends=True)
    lines[1] = b"[1, 2, 3, 4, 5]\n"  # TVM: "Check failed: arr->size() == 2 (5 vs. 2)", naming nothing
    (folder / RECORDS_FILE).write_bytes(b"".join(lines))
    trial_lines = (folder / TRIALS_FILE).read_text().splitlines(keepends=True)
    trial_lines[0] = '{"trial": 1, "t": oops\n'
    (folder / TRIALS_FILE).write_text("".join(trial_lines))

    assert dlrm(["tune", "--experiment", NAME, "--trials", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{folder / RECORDS_FILE}, line 2 is damaged" in out and "not given to TVM" in out
    assert f"{folder / TRIALS_FILE}, line 1 is damaged" in out
    assert (folder / (RECORDS_FILE + DAMAGED_SUFFIX)).read_bytes().endswith(b"[1, 2, 3, 4, 5]\n")
    assert "oops" in (folder / (TRIALS_FILE + DAMAGED_SUFFIX)).read_text()
    _agree(folder)
    snapshot = tmp_path / "snapshot"
    assert snapshot_log(folder, snapshot) == count_records(folder)
    from tvm.s_tir import meta_schedule as ms  # TVM reads what is left (it stopped at the damaged line)

    assert len(ms.database.JSONDatabase(work_dir=str(snapshot)).get_all_tuning_records()) == count_records(folder)
