"""The tuning log: MetaSchedule's JSON database plus dlrmlib's record of the search.

A log folder (`tune/`, `tune/prepack/` for the weight-prepacked build, whose kernels are
different functions) holds:
- `database_workload.json`, `database_tuning_record.json`: MetaSchedule's JSON database; a
  record line is appended as soon as its batch of trials is measured,
- `tasks.json`: the kernels tuned, their weights and FLOPs, the target and batch size,
- `untuned.json`, `untuned/`: each kernel's latency before tuning (the curve starts there),
  and the untuned kernels as records, so that a build takes a tuned kernel only if faster,
- `trials.jsonl`: one line per measured trial (time, task, latency): the tuning curve,
- `logs/`: MetaSchedule's own per-task logs.
This module reads and repairs those files; `dlrmlib.tuning` writes them and
`dlrmlib.building.from_log` builds from them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import read_json, read_jsonl

if TYPE_CHECKING:
    import pandas as pd

WORKLOADS_FILE = "database_workload.json"
RECORDS_FILE = "database_tuning_record.json"
TASKS_FILE = "tasks.json"
UNTUNED_FILE = "untuned.json"
UNTUNED_DB = "untuned"
TRIALS_FILE = "trials.jsonl"
PREPACK_LOG = "prepack"


DEFAULT_PREPACK = True  # the tuned build: weights laid out once in main_transform_params


def tuning_log_dir(experiment: Experiment, prepack: bool = False) -> Path:
    """The experiment's tuning log for the plain or the weight-prepacked build."""
    return experiment.tune_dir / PREPACK_LOG if prepack else experiment.tune_dir


def log_mode(folder: Path) -> bool | None:
    """Whether a log was tuned with weight prepacking, as its `tasks.json` records (logs from
    before the option say nothing: plain); None when the folder has no `tasks.json`."""
    tasks = read_tasks(folder)
    return None if tasks is None else bool(tasks.get("prepack", False))


def resolve_prepack(experiment: Experiment, prepack: bool | None) -> bool:
    """The weight layout of a tuning run or a build that was not told one: prepacked, except in
    an experiment whose only log with records is plain (made before prepacking was the
    default), which tuning continues and a build uses. Tuning and building share this rule."""
    if prepack is not None:
        return bool(prepack)
    if count_records(tuning_log_dir(experiment, True)) or not count_records(tuning_log_dir(experiment, False)):
        return DEFAULT_PREPACK
    return False


def _complete(data: bytes) -> bytes:
    """The JSON lines of a database file up to its last complete line: a kill can leave half
    a line, which TVM's loader refuses."""
    return data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]


def repair_log(folder: Path) -> int:
    """Cut a torn last line off both database files (only while holding the tuning lock).
    Returns the bytes dropped."""
    dropped = 0
    for name in (WORKLOADS_FILE, RECORDS_FILE):
        path = folder / name
        if path.is_file():
            data = path.read_bytes()
            keep = _complete(data)
            if len(keep) != len(data):
                with open(path, "r+b") as f:
                    f.truncate(len(keep))
                dropped += len(data) - len(keep)
    return dropped


def count_records(folder: Path) -> int:
    """Trials in a log: one record per measured candidate, failed ones included."""
    path = Path(folder) / RECORDS_FILE
    return _complete(path.read_bytes()).count(b"\n") if path.is_file() else 0


def snapshot_log(folder: Path, dest: Path) -> int:
    """A consistent copy of a log's database (complete lines only), so a build can read a log
    that a tuning run is still appending to. Returns its number of records."""
    folder = Path(folder)
    if not (folder / WORKLOADS_FILE).is_file() or not (folder / RECORDS_FILE).is_file():
        raise DlrmError(f"{folder} holds no MetaSchedule database ({WORKLOADS_FILE}, {RECORDS_FILE}); "
                        "tune first (`dlrm tune`) or point --log at a tuning log folder")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOADS_FILE, RECORDS_FILE):
        (dest / name).write_bytes(_complete((folder / name).read_bytes()))
    return count_records(dest)


def read_trials(folder: Path) -> list[dict]:
    """Every trial of `trials.jsonl`, skipping a torn last line."""
    return read_jsonl(Path(folder) / TRIALS_FILE)


def read_tasks(folder: Path) -> dict | None:
    path = Path(folder) / TASKS_FILE
    return read_json(path) if path.is_file() else None


def trials_frame(folder: Path) -> "pd.DataFrame":
    """Every measured trial: `trial`, `t` (tuning seconds, runs added up), `task`,
    `latency_s` (None when the candidate failed), `error`."""
    import pandas as pd

    frame = pd.DataFrame(read_trials(folder), columns=["trial", "t", "task", "latency_s", "error"])
    return frame.astype({"latency_s": float})


def read_untuned(folder: Path) -> dict[str, float | None]:
    path = Path(folder) / UNTUNED_FILE
    return read_json(path) if path.is_file() else {}


def tuning_curve(folder: Path) -> "pd.DataFrame":
    """Estimated end-to-end latency per batch after each trial: the sum over kernels of
    weight x the faster of the best trial so far and the untuned kernel, i.e. what a build
    from the log at that point would take, kernel by kernel. Row 0 is the untuned model."""
    import pandas as pd

    tasks = read_tasks(folder)
    columns = ["trial", "t", "estimated_latency_s"]
    if not tasks:
        return pd.DataFrame(columns=columns)
    weights = pd.Series({t["name"]: t["weight"] for t in tasks["tasks"]})
    known = read_untuned(folder)
    untuned = pd.Series({name: known.get(name) for name in weights.index}, dtype=float)
    trials = trials_frame(folder)
    trials = trials[trials["task"].isin(weights.index)]
    best = (trials.pivot_table(index="trial", columns="task", values="latency_s", aggfunc="min")
            .reindex(index=trials["trial"].unique(), columns=weights.index).ffill().cummin())
    used = best.fillna(untuned).clip(upper=untuned, axis=1)  # a build takes the faster of the two
    estimate = (used * weights).sum(axis=1, min_count=len(weights))
    times = trials.groupby("trial")["t"].first()
    curve = pd.DataFrame({"trial": [0, *best.index],
                          "t": [0.0, *times.reindex(best.index).values],
                          "estimated_latency_s": [(untuned * weights).sum(min_count=len(weights)),
                                                  *estimate.values]})
    return curve.dropna().reset_index(drop=True)


def crossing(curve: "pd.DataFrame", latency_s: float) -> dict | None:
    """Where a tuning curve first reaches `latency_s` (a peer's per-batch latency): its trial
    and tuning time, or None if it never does."""
    reached = curve[curve["estimated_latency_s"] <= latency_s]
    if reached.empty:
        return None
    first = reached.iloc[0]
    return {"trial": int(first["trial"]), "t": float(first["t"])}


def task_table(folder: Path) -> "pd.DataFrame":
    """Per kernel: weight (calls per batch), trials, failed trials, untuned latency, best
    trial, speed-up of what a build uses (the faster of the two), its weighted latency and share
    of the estimate, GFLOP/s; largest share first."""
    import pandas as pd

    tasks = read_tasks(folder)
    if not tasks:
        return pd.DataFrame()
    untuned = read_untuned(folder)
    trials = trials_frame(folder)
    rows = []
    for task in tasks["tasks"]:
        mine = trials[trials["task"] == task["name"]]
        best = mine["latency_s"].min() if mine["latency_s"].notna().any() else np.nan
        before = untuned.get(task["name"])
        before = np.nan if before is None else before
        used = np.fmin(best, before)  # a build takes the faster of the two
        rows.append({"task": task["name"], "weight": task["weight"], "trials": len(mine),
                     "failed": int(mine["latency_s"].isna().sum()), "untuned_us": before * 1e6,
                     "best_us": best * 1e6, "speedup": before / used if used > 0 else np.nan,
                     "weighted_us": used * 1e6 * task["weight"],
                     "gflops": task["flop"] / used / 1e9 if task["flop"] and used > 0 else np.nan})
    table = pd.DataFrame(rows).set_index("task")
    table.insert(table.columns.get_loc("weighted_us") + 1, "share", table["weighted_us"] / table["weighted_us"].sum())
    return table.sort_values("weighted_us", ascending=False)
