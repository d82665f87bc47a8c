"""Shipped tuning logs: `dlrm tune --ship` prunes a tuning log to the best K records per kernel,
MetaSchedule loads it, a build from it picks the kernels the full log picks and matches the
reference; a damaged or foreign shipped log is refused with one clear line. Real TVM and
MetaSchedule, tiny preset: the log test_tune.py tuned (this file runs after it) when it is there,
copied, else a batch of 4 trials tuned here (about a minute on the 2-core machine)."""
from __future__ import annotations

import json
import shutil

import pytest

from dlrmlib.building.build import build
from dlrmlib.building.recipes import FromLog
from dlrmlib.cli.main import main as dlrm
from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.shipped_log import SHIPPED_FILE, read_shipped
from dlrmlib.formats.tuning_log import (
    RECORDS_FILE,
    count_records,
    derive_trials,
    tuning_log_dir,
    written_choice,
)
from dlrmlib.formats.weights import read_manifest
from dlrmlib.tuning.metaschedule import tune

NAME = "ship-tiny"
TUNED = "tune-tiny"  # test_tune.py's experiment: same preset, batch size and seed, so the same kernels


@pytest.fixture(scope="module")
def logs(experiments_root, tmp_path_factory):
    """(experiment, its full tuning log, the log shipped with --keep 1)."""
    from dlrmlib.prepare import prepare

    experiment = prepare(NAME, preset="tiny", batch_size=16, samples=64, root=experiments_root, log=lambda _: None)
    folder = tuning_log_dir(experiment, prepack=True)
    tuned = experiments_root / TUNED / folder.relative_to(experiment.root)
    if count_records(tuned) >= 8:  # several records per kernel: the pruning has something to drop
        shutil.copytree(tuned, folder, ignore=shutil.ignore_patterns("*.lock"))
    else:
        tune(experiment, trials=4, trials_per_batch=4, progress=False, log=lambda _: None)
    shipped = tmp_path_factory.mktemp("logs") / "tuned-fp32"
    assert dlrm(["tune", "--experiment", NAME, "--ship", "--keep", "1", "--save-to", str(shipped)]) == 0
    return experiment, tuning_log_dir(experiment, prepack=True), shipped


def _top_records(folder) -> dict[str, str]:
    """Per workload (structural hash): the record MetaSchedule's JSONDatabase ranks first, which a
    build applies."""
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(folder), allow_missing=False)
    tops = {}
    for record in database.get_all_tuning_records():
        workload = record.workload
        best = database.get_top_k(workload, 1)
        if best:
            tops[str(workload.as_json()[0])] = str(best[0].trace)
    return tops


def test_shipped_log_keeps_the_best_records_and_decides_as_the_full_log(logs):
    _, full, shipped = logs
    lines = (shipped / RECORDS_FILE).read_text().splitlines()
    per_workload: dict[int, int] = {}
    for line in lines:
        per_workload[json.loads(line)[0]] = per_workload.get(json.loads(line)[0], 0) + 1
    assert per_workload and max(per_workload.values()) == 1 and count_records(shipped) <= count_records(full)
    assert _top_records(shipped) == _top_records(full) != {}  # MetaSchedule loads it, and ranks the same kernels first
    assert written_choice(shipped) == written_choice(full)  # the duel decides as before
    trials, report = derive_trials(shipped)
    assert len(trials) == len(lines) and report["recovered"] == 0 and not report["damaged_lines"]
    about = read_shipped(shipped)
    assert about["trials"] == count_records(full) and about["keep"] == 1 and about["machine_kind"]
    assert about["preset"] == "tiny" and about["batch_size"] == 16 and about["tvm_version"]
    assert not (shipped / "logs").exists()  # MetaSchedule's per-task logs stay behind


def test_build_from_the_shipped_log_matches_the_reference_and_the_full_logs_build(logs):
    experiment, _, shipped = logs
    result = build(experiment, FromLog(shipped), log=lambda _: None)
    assert result.verification["max_abs_error"] <= 1e-5
    about = read_shipped(shipped)
    manifest = read_manifest(result.manifest)
    assert result.tag == f"shipped_{about['trials']}_prepack" and manifest["build"]["trials"] == about["trials"]
    full = build(experiment, FromLog(), log=lambda _: None)  # the same kernels: the same library, byte for byte
    assert full.library.read_bytes() == result.library.read_bytes()
    assert read_manifest(full.manifest)["weights"]["layout_id"] == manifest["weights"]["layout_id"]


def test_damaged_or_foreign_shipped_logs_are_refused(logs, tmp_path):
    experiment, _, shipped = logs
    damaged = tmp_path / "damaged"
    shutil.copytree(shipped, damaged)
    data = (damaged / RECORDS_FILE).read_bytes()
    (damaged / RECORDS_FILE).write_bytes(data[:-40] + b"x" * 39 + b"\n")
    with pytest.raises(DlrmError, match=f"is damaged: {RECORDS_FILE} does not match"):
        build(experiment, FromLog(damaged), log=lambda _: None)
    (damaged / SHIPPED_FILE).write_text("{ half")
    with pytest.raises(DlrmError, match="is damaged: shipped.json"):
        build(experiment, FromLog(damaged), log=lambda _: None)

    foreign = tmp_path / "foreign"
    shutil.copytree(shipped, foreign)
    about = json.loads((foreign / SHIPPED_FILE).read_text())
    (foreign / SHIPPED_FILE).write_text(json.dumps({**about, "machine_kind": "some-other-cpu"}))
    with pytest.raises(DlrmError, match="tuned on a some-other-cpu machine.*--other-machine"):
        build(experiment, FromLog(foreign), log=lambda _: None)
    assert dlrm(["tune", "--experiment", NAME, "--keep", "2"]) == 2  # --keep without --ship: one line, exit 2
