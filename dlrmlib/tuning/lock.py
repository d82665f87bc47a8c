"""One tuning run per experiment at a time."""
from __future__ import annotations

from dlrmlib.core.experiment import Experiment


def tuning_lock(experiment: Experiment):
    """The experiment's tuning lock (`tune/tune.lock`): one tuning run (MetaSchedule or the
    kernel knobs) at a time."""
    return experiment.lock("tune/tune", "tuned")
