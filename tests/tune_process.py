"""`dlrm tune` as a child process the tests can kill (its own session, so the kill reaches
MetaSchedule's workers too)."""
import os
import subprocess
import sys


def start_tune(experiment, trials: int, trials_per_batch: int, **options) -> subprocess.Popen:
    args = ", ".join(f"{k}={v!r}" for k, v in options.items())
    code = ("from dlrmlib.tuning.metaschedule import tune; "
            f"tune({experiment.name!r}, trials={trials}, trials_per_batch={trials_per_batch}, progress=False"
            + (f", {args})" if args else ")"))
    env = {**os.environ, "DLRM_EXPERIMENTS_DIR": str(experiment.root.parent)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
