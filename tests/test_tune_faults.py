"""Tuning faults: two runs on one experiment, and budgets that make no sense."""
import os
import subprocess
import sys

import pytest

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.tuning_log import count_records
from dlrmlib.tuning.lock import tuning_lock
from dlrmlib.tuning.metaschedule import tune


@pytest.fixture(scope="module")
def experiment(experiments_root):
    from dlrmlib.prepare import prepare

    return prepare("tiny-tune-faults", preset="tiny", batch_size=16, samples=32, root=experiments_root,
                   log=lambda _: None)


def dlrm(*args, root):
    return subprocess.run([sys.executable, "-m", "dlrmlib.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DLRM_EXPERIMENTS_DIR": str(root)})


def test_a_second_tuning_run_on_the_same_experiment_is_refused(experiment, experiments_root):
    before = count_records(experiment.tune_dir)
    with tuning_lock(experiment):  # a first run holds the lock
        done = dlrm("tune", "--experiment", experiment.name, "--trials", 8, root=experiments_root)
        assert done.returncode == 2, done.stderr
        assert "is already being tuned" in done.stderr and f"pid {os.getpid()}" in done.stderr
        with pytest.raises(DlrmError, match="already being tuned"):
            tune(experiment, trials=8, progress=False, log=lambda _: None)
    assert count_records(experiment.tune_dir) == before  # the refused runs wrote nothing
    # The OS releases the lock with its holder: the next run may go ahead.
    with tuning_lock(experiment):
        pass


@pytest.mark.parametrize("flag, value", [("--trials", -5), ("--trials", 0), ("--max-trials-per-task", -1),
                                         ("--num-threads", 0)])
def test_nonsense_budgets_are_refused_by_the_command(experiment, capsys, flag, value):
    """By the command's own parser, through its entry point in this process (the shell path is
    the lock test's above: a process per value cost seconds of imports)."""
    from dlrmlib.cli.main import main

    code, err = main(["tune", "--experiment", experiment.name, flag, str(value)]), capsys.readouterr().err
    assert code == 2 and "expected a positive integer" in err, err


@pytest.mark.parametrize("kwargs, message", [({"trials": -1}, "trials must be a positive integer"),
                                             ({"trials": 8, "max_trials_per_task": 0}, "max_trials_per_task"),
                                             ({"trials": 2.5}, "trials must be a positive integer"),
                                             ({"trials": 8, "roof_margin": -1}, "roof_margin"),
                                             ({"trials": 8, "kernel_precisions": ("bf16",)}, "kernel_precisions"),
                                             ({"trials": 8, "knob_seconds": 0}, "knob_seconds")])
def test_nonsense_budgets_are_refused_by_the_library(experiment, kwargs, message):
    with pytest.raises(DlrmError, match=message):
        tune(experiment, progress=False, log=lambda _: None, **kwargs)


def test_appending_after_a_torn_line_keeps_every_new_record(tmp_path):
    """trials.jsonl and kernels.jsonl: a kill mid-write leaves half a line; the next run's lines
    must not be glued onto it (one lost record per kill otherwise)."""
    from dlrmlib.core.files import append_jsonl, read_jsonl

    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"trial": 1}])
    path.write_bytes(path.read_bytes() + b'{"trial": 2, "lat')
    append_jsonl(path, [{"trial": 3}, {"trial": 4}], durable=True)
    assert read_jsonl(path) == [{"trial": 1}, {"trial": 3}, {"trial": 4}]
