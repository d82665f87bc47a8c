"""Ship a tuning log (`dlrm tune --ship`): the experiment's MetaSchedule log, pruned, under
`logs/<machine kind>/<preset>/b<batch>/tuned-<precision>/`, so that a machine of the same kind
builds the tuned kernels without tuning (dlrmlib.formats.shipped_log says what it holds)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.machine import machine_info, utc_now, versions
from dlrmlib.core.paths import LOGS_DIR
from dlrmlib.core.target import host_target, machine_kind
from dlrmlib.formats.shipped_log import DEFAULT_KEEP, export_log, shipped_log_dir
from dlrmlib.formats.tuning_log import count_records, read_tasks, resolve_prepack, tuning_log_dir
from dlrmlib.tuning.lock import tuning_lock


def ship_log(experiment: Experiment | str, dest: Path | None = None, keep: int = DEFAULT_KEEP,
             prepack: bool | None = None, precision: str = "fp32", log: Callable[[str], None] = print) -> Path:
    """Export the experiment's tuning log (prepacked unless `prepack=False` or its only log is
    plain) to `dest`, by default the repository's `logs/<machine kind>/<preset>/b<batch>/
    tuned-<precision>[-plain]/`, keeping the best `keep` records per kernel. Held under the
    tuning lock: a log still being tuned is not shipped half-way (its duel comes at the end)."""
    experiment = Experiment.of(experiment)
    prepack = resolve_prepack(experiment, prepack)
    folder = tuning_log_dir(experiment, prepack)
    if not count_records(folder):
        raise DlrmError(f"experiment {experiment.name!r} has no tuning records in {folder}; run `dlrm tune "
                        f"--experiment {experiment.name}` first")
    tasks = read_tasks(folder) or {}
    kind, target = machine_kind(), host_target()
    if (tasks.get("target") or {}).get("mcpu") not in (None, target["mcpu"]):
        raise DlrmError(f"the tuning log {folder} was tuned for CPU {tasks['target']['mcpu']!r}, this machine is "
                        f"{target['mcpu']!r}: ship it from a machine of the kind it was tuned on")
    if dest is None:
        preset = experiment.params.get("preset")
        if not preset or experiment.params.get("onnx_model"):
            raise DlrmError(f"experiment {experiment.name!r} was made from an ONNX file, not a preset: its log has no "
                            "place under logs/; give one with --save-to DIR")
        dest = shipped_log_dir(LOGS_DIR, kind, preset, experiment.batch_size, precision, prepack)
    machine = machine_info()
    about = {"machine_kind": kind, "cpu": machine["cpu"], "mcpu": target["mcpu"],
             "logical_cores": machine["logical_cores"], "key_flags": machine["key_flags"],
             "tvm_version": tasks.get("tvm_version") or versions().get("apache-tvm"),
             "apache_tvm_ffi": versions().get("apache-tvm-ffi"), "experiment": experiment.name,
             "model": tasks.get("model"), "preset": experiment.params.get("preset"),
             "batch_size": experiment.batch_size, "precision": precision, "prepack": prepack,
             "exported": utc_now(), "load_average_at_export": machine["load_average"]}
    with tuning_lock(experiment):
        shipped = export_log(folder, Path(dest), keep, about)
    log(f"[ship] {folder} -> {dest}: {shipped['records_kept']} of {shipped['trials']} records "
        f"(best {keep} per kernel), tuned on {kind}; build from it with `dlrm build --tuning-log {dest}`")
    return Path(dest)
