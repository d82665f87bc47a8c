"""The tuning log: MetaSchedule's JSON database plus dlrmlib's record of the search.

A log folder (`tune/`, `tune/prepack/` for the weight-prepacked build, whose kernels are
different functions) holds:
- `database_workload.json`, `database_tuning_record.json`: MetaSchedule's JSON database; a
  record line is appended as soon as its batch of trials is measured,
- `tasks.json`: the kernels tuned, their weights and FLOPs, the target and batch size,
- `untuned.json`, `untuned/`: each kernel's latency before tuning (the curve starts there),
  and the untuned kernels as records, so that a build takes a tuned kernel only if faster,
- `written.json`: the hand-written kernels measured once per log like a trial: each Dense
  kernel's packed GEMM (with its knobs), which a build uses where it beat every trial, and the
  kernels the tuned build always uses as written (gather + interaction, narrow last layer),
- `trials.jsonl`: one line per measured trial (time, task, latency): the tuning curve,
- `logs/`: MetaSchedule's own per-task logs.
This module reads and repairs those files; `dlrmlib.tuning` writes them and
`dlrmlib.building.from_log` builds from them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import append_jsonl, atomic_path, read_json

if TYPE_CHECKING:
    import pandas as pd

WORKLOADS_FILE = "database_workload.json"
RECORDS_FILE = "database_tuning_record.json"
TASKS_FILE = "tasks.json"
UNTUNED_FILE = "untuned.json"
UNTUNED_DB = "untuned"
WRITTEN_FILE = "written.json"
KNOBS_FILE = "kernels.jsonl"  # knob records of the hand-written kernels MetaSchedule cannot time (and the kernel log's)
TRIALS_FILE = "trials.jsonl"
PREPACK_LOG = "prepack"
DAMAGED_SUFFIX = ".damaged"  # damaged lines set aside: database_tuning_record.json.damaged, trials.jsonl.damaged
FAILED_RUN_S = 1e9  # MetaSchedule's run time of a candidate that failed to build or run (it stores 1e10)


DEFAULT_PREPACK = True  # the tuned build: weights laid out once in main_transform_params
# tasks.json's `dense_weights` in a prepacked log: each Gemm's weight is a parameter of its matmul
# kernel (fused_NT_matmul), which the tuned schedules lay out (dlrmlib.frontend.relax.front_passes).
# Older prepacked logs tuned kernels that read a transposed copy, which no build makes now.
DENSE_WEIGHTS = "in-kernel"


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


def snapshot_log(folder: Path, dest: Path, log: Callable[[str], None] = print) -> int:
    """A consistent copy of a log's database (complete lines only), so a build can read a log
    that a tuning run is still appending to. Returns its number of records."""
    folder = Path(folder)
    if not (folder / WORKLOADS_FILE).is_file() or not (folder / RECORDS_FILE).is_file():
        raise DlrmError(f"{folder} holds no MetaSchedule database ({WORKLOADS_FILE}, {RECORDS_FILE}); "
                        "tune first (`dlrm tune`) or point --log at a tuning log folder")
    dest.mkdir(parents=True, exist_ok=True)
    workloads = workload_lines(folder)
    records, damaged = split_records(folder, len(workloads))
    for line_no, _ in damaged:
        log(f"[build] {folder / RECORDS_FILE}, line {line_no} is damaged: left out of this build")
    (dest / WORKLOADS_FILE).write_bytes(b"".join(workloads))
    (dest / RECORDS_FILE).write_bytes(b"".join(line for line, _ in records))
    return count_records(dest)


# -- checking the database: TVM's loader stops at a damaged line without naming it ----------------

def workload_lines(folder: Path) -> list[bytes]:
    """The workload lines, each checked: records name workloads by line number, so a damaged
    one cannot be set aside, only reported."""
    path = Path(folder) / WORKLOADS_FILE
    lines = _complete(path.read_bytes()).splitlines(keepends=True) if path.is_file() else []
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
            ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise DlrmError(f"{path}, line {number} is damaged (not [structural hash, module]); the tuning "
                            "records refer to workloads by line, so restore that file or start the log over")
    return lines


def _parse_record(line: bytes, workloads: int) -> tuple[int, float | None] | None:
    """(workload, mean run seconds or None when the candidate failed) of a record line as
    MetaSchedule writes it, `[workload, [trace, run_secs, target, args_info]]`; None if damaged."""
    try:
        item = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and 0 <= item[0] < workloads
            and isinstance(item[1], list) and len(item[1]) == 4 and isinstance(item[1][0], list)):
        return None
    secs = item[1][1]
    if secs is not None and not (isinstance(secs, list) and all(isinstance(s, (int, float)) for s in secs)):
        return None
    valid = [float(s) for s in secs or [] if s < FAILED_RUN_S]
    return item[0], (sum(valid) / len(valid) if valid and len(valid) == len(secs) else None)


def split_records(folder: Path, workloads: int) -> tuple[list[tuple[bytes, tuple]], list[tuple[int, bytes]]]:
    """The complete record lines: the sound ones (with what they say) and the damaged ones
    (with their line numbers)."""
    path = Path(folder) / RECORDS_FILE
    lines = _complete(path.read_bytes()).splitlines(keepends=True) if path.is_file() else []
    sound, damaged = [], []
    for number, line in enumerate(lines, 1):
        parsed = _parse_record(line, workloads)
        if parsed is None:
            damaged.append((number, line))
        else:
            sound.append((line, parsed))
    return sound, damaged


def set_aside_damaged_records(folder: Path, log: Callable[[str], None] = print) -> int:
    """Move damaged record lines out of the database into `database_tuning_record.json.damaged`
    (only while holding the tuning lock), each reported with its file and line. Returns how many."""
    folder = Path(folder)
    records, damaged = split_records(folder, len(workload_lines(folder)))
    if not damaged:
        return 0
    path = folder / RECORDS_FILE
    for number, line in damaged:
        text = line.decode(errors="replace").strip()
        log(f"[tune] {path}, line {number} is damaged ({text[:40]}{'...' if len(text) > 40 else ''}): "
            f"set aside in {path.name}{DAMAGED_SUFFIX}, not given to TVM")
    _keep_aside(path, b"".join(line for _, line in damaged))
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"".join(line for line, _ in records))
    return len(damaged)


def _keep_aside(path: Path, data: bytes) -> None:
    """Append `data` to `<path>.damaged`, durably, before the lines leave `path`."""
    with open(path.with_name(path.name + DAMAGED_SUFFIX), "ab") as side:
        side.write(data)
        side.flush()
        os.fsync(side.fileno())


# -- the trials file: derived from the database, so it never falls behind it ----------------------

def _trial_lines(folder: Path) -> tuple[list[dict | None], list[int]]:
    """`trials.jsonl` line by line (None for a damaged line) and the damaged lines' numbers; a
    torn last line (a kill mid-write) counts as damaged too."""
    path = Path(folder) / TRIALS_FILE
    items, damaged = [], []
    if not path.is_file():
        return items, damaged
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            item = None
        if not (isinstance(item, dict) and type(item.get("trial")) is int and isinstance(item.get("task"), str)
                and isinstance(item.get("t"), (int, float))):
            item = None
        items.append(item)
        if item is None:
            damaged.append(number)
    return items, damaged


def task_names(folder: Path, workloads: list[bytes], records: list[tuple] = (), trials: list[dict] = ()) -> dict:
    """Workload line -> task name: by structural hash from `tasks.json`, else from trials that
    line up with their records."""
    hashes = {t["shash"]: t["name"] for t in (read_tasks(folder) or {}).get("tasks", []) if t.get("shash")}
    names = {}
    for index, line in enumerate(workloads):
        shash = json.loads(line)[0]
        if shash in hashes:
            names[index] = hashes[shash]
    for (_, (workload, _)), trial in zip(records, trials):
        if trial.get("task"):
            names.setdefault(workload, trial["task"])
    return names


def derive_trials(folder: Path) -> tuple[list[dict], dict]:
    """One trial per sound database record, in order: the trials file's line where it agrees
    with the record (its time and error message), else rebuilt from the record (`recovered`).
    Also says what disagreed: damaged trial lines, trials recovered, trial lines without record."""
    folder = Path(folder)
    workloads = workload_lines(folder)
    records, _ = split_records(folder, len(workloads))
    lines, damaged = _trial_lines(folder)
    by_number = {}
    for item in lines:
        if item is not None:
            by_number.setdefault(item["trial"], item)
    names = task_names(folder, workloads, records, [by_number.get(i + 1, {}) for i in range(len(records))])
    trials, recovered, t = [], 0, 0.0
    for number, (_, (workload, latency)) in enumerate(records, 1):
        task = names.get(workload, f"workload {workload}")
        line = by_number.get(number)
        if line is not None and line["task"] == task:
            t = line["t"]
            trials.append(line)
            continue
        recovered += 1
        trials.append({"trial": number, "t": t, "task": task, "latency_s": latency,
                       "error": None if latency is not None else "failed (recovered from the database)",
                       "recovered": True})
    orphans = sum(1 for item in lines if item is not None and item["trial"] > len(records))
    return trials, {"damaged_lines": damaged, "recovered": recovered, "without_record": orphans}


def reconcile_trials(folder: Path, log: Callable[[str], None] = print) -> int:
    """Bring `trials.jsonl` in line with the database (only while holding the tuning lock): the
    trials a kill lost between the record and its line are appended; a file that disagrees
    otherwise is kept as `trials.jsonl.damaged` and rewritten. Returns the trials recovered."""
    folder = Path(folder)
    path = folder / TRIALS_FILE
    trials, report = derive_trials(folder)
    lines, _ = _trial_lines(folder)
    if lines == trials:
        return 0
    for number in report["damaged_lines"]:
        log(f"[tune] {path}, line {number} is damaged; the trial is rebuilt from the database")
    if report["without_record"]:
        log(f"[tune] {path}: {report['without_record']} trial line(s) have no database record")
    if len(lines) <= len(trials) and lines == trials[: len(lines)]:
        append_jsonl(path, trials[len(lines):], durable=True)
    else:  # the old file, whole, goes aside before it is rewritten
        log(f"[tune] {path} rewritten from the database; the old lines are kept in {path.name}{DAMAGED_SUFFIX}")
        _keep_aside(path, path.read_bytes())
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(item, sort_keys=True) + "\n" for item in trials))
    if report["recovered"]:
        log(f"[tune] {report['recovered']} trial(s) were in the database but not in {path.name}: recovered")
    return report["recovered"]


def read_trials(folder: Path) -> list[dict]:
    """Every trial of the log, as the database records them (see `derive_trials`); without a
    database (a log from elsewhere), the sound lines of `trials.jsonl`."""
    folder = Path(folder)
    if not (folder / RECORDS_FILE).is_file() or not (folder / WORKLOADS_FILE).is_file():
        return [item for item in _trial_lines(folder)[0] if item is not None]
    return derive_trials(folder)[0]


def read_tasks(folder: Path) -> dict | None:
    path = Path(folder) / TASKS_FILE
    return read_json(path) if path.is_file() else None


def _transposed_weights(tasks: dict | None) -> bool:
    return bool(tasks and tasks.get("prepack") and tasks.get("dense_weights") != DENSE_WEIGHTS)


def check_dense_weights(folder: Path, tasks: dict | None) -> None:
    """A prepacked log from before the Gemm weights went into their matmul kernels is refused by
    name: its records are for kernels no build makes now, so a build would find none of them."""
    if _transposed_weights(tasks):
        raise DlrmError(f"the tuning log {folder} was tuned on Dense kernels that read a transposed copy of their "
                        "weights, which builds no longer make (the tuned kernels now lay their weights out "
                        "themselves): tune again (`dlrm tune` sets an experiment's old log aside and starts anew)")


def set_aside_transposed_log(folder: Path) -> Path | None:
    """A tuning run's first step on such a log: it moves to a sibling folder, kept whole
    (`prepack.transposed-weights`), and the run starts a new log. Returns where it went."""
    folder = Path(folder)
    if not _transposed_weights(read_tasks(folder)):
        return None
    dest, n = folder.with_name(f"{folder.name}.transposed-weights"), 1
    while dest.exists():
        dest, n = folder.with_name(f"{folder.name}.transposed-weights-{n}"), n + 1
    folder.rename(dest)
    folder.mkdir()
    return dest


def trials_frame(folder: Path) -> "pd.DataFrame":
    """Every measured trial: `trial`, `t` (tuning seconds, runs added up), `task`,
    `latency_s` (None when the candidate failed), `error`."""
    import pandas as pd

    frame = pd.DataFrame(read_trials(folder), columns=["trial", "t", "task", "latency_s", "error"])
    return frame.astype({"latency_s": float})


def read_untuned(folder: Path) -> dict[str, float | None]:
    path = Path(folder) / UNTUNED_FILE
    return read_json(path) if path.is_file() else {}


def read_written(folder: Path) -> dict:
    """`written.json`: {"dense": {task: {"kernel", "latency_s", "knobs"}}, "fixed": {kernel:
    {"latency_s", "weight", "knobs"}}}, empty parts for a log from before it."""
    path = Path(folder) / WRITTEN_FILE
    written = read_json(path) if path.is_file() else {}
    return {"dense": written.get("dense", {}), "fixed": written.get("fixed", {})}


def baselines(folder: Path) -> dict[str, float | None]:
    """Per task, what a build uses before any trial: the faster of the untuned kernel and the
    hand-written one (where the log measured one)."""
    written = read_written(folder)["dense"]
    out = {}
    for name, untuned in read_untuned(folder).items():
        mine = (written.get(name) or {}).get("latency_s")
        out[name] = min((x for x in (untuned, mine) if x is not None), default=None)
    return out


def fixed_latency(folder: Path) -> float:
    """Seconds per batch of the kernels the tuned build uses as written (no task)."""
    return fixed_seconds(read_written(folder))


def fixed_seconds(written: dict) -> float:
    """Seconds per batch of `written.json`'s kernels used as written (`fixed`), those timed."""
    return sum(k["latency_s"] * k.get("weight", 1) for k in written["fixed"].values() if k.get("latency_s") is not None)


def written_choice(folder: Path) -> tuple[frozenset[str], dict]:
    """(Dense kernels a build uses as written, knobs per kernel): those whose hand-written
    packed GEMM was faster than the untuned kernel and every trial of its task; by the
    side-by-side timing at the end of the run (`duel`, dlrmlib.tuning.written.duel) where one
    was made and no faster trial came after it, else by the figures logged during the run. The
    knobs include those the kernels always used as written were timed with (the interaction's
    prefetch, measured by the run on the experiment's own tables; logs from before say none)."""
    everything = read_written(folder)
    written = everything["dense"]
    knobs = {name: k["knobs"] for name, k in everything["fixed"].items() if k.get("knobs")}
    if not written:
        return frozenset(), knobs
    trials = trials_frame(folder)
    best = trials.groupby("task")["latency_s"].min() if not trials.empty else {}
    untuned = read_untuned(folder)
    chosen = set()
    for task, kernel in written.items():
        duel = kernel.get("duel")
        if duel and not _stale(duel, best.get(task)):
            if written_wins(duel):
                chosen.add(kernel["kernel"])
            continue
        others = [x for x in (best.get(task), untuned.get(task)) if x is not None and x == x]
        if kernel.get("latency_s") is not None and all(kernel["latency_s"] < x for x in others):
            chosen.add(kernel["kernel"])
    knobs.update({k["kernel"]: k.get("knobs", {}) for k in written.values()})
    return frozenset(chosen), knobs


def written_wins(duel: dict) -> bool:
    """The side-by-side timing went to the hand-written GEMM (ties too: it is the known kernel)."""
    mine, theirs = duel.get("written_s"), duel.get("trial_s")
    return mine is not None and (theirs is None or mine <= theirs)


def _stale(duel: dict, best_logged: float | None) -> bool:
    """A trial faster than the best one the duel knew was logged after it (a later run)."""
    known = duel.get("best_trial_logged_s")
    return best_logged is not None and best_logged == best_logged and (
        known is None or best_logged < known * (1 - 1e-6))


def tuning_curve(folder: Path) -> "pd.DataFrame":
    """Estimated end-to-end latency per batch after each trial: the sum over kernels of
    weight x the fastest of the best trial so far, the untuned and the hand-written kernel,
    plus the kernels used as written, i.e. what a build from the log at that point would take,
    kernel by kernel. Row 0 is the model before any trial."""
    import pandas as pd

    tasks = read_tasks(folder)
    columns = ["trial", "t", "estimated_latency_s"]
    if not tasks:
        return pd.DataFrame(columns=columns)
    weights = pd.Series({t["name"]: t["weight"] for t in tasks["tasks"]})
    known = baselines(folder)
    fixed = fixed_latency(folder)
    untuned = pd.Series({name: known.get(name) for name in weights.index}, dtype=float)
    trials = trials_frame(folder)
    trials = trials[trials["task"].isin(weights.index)]
    best = (trials.pivot_table(index="trial", columns="task", values="latency_s", aggfunc="min")
            .reindex(index=trials["trial"].unique(), columns=weights.index).ffill().cummin())
    used = best.fillna(untuned).clip(upper=untuned, axis=1)  # a build takes the faster of the two
    estimate = (used * weights).sum(axis=1, min_count=len(weights)) + fixed
    times = trials.groupby("trial")["t"].first()
    curve = pd.DataFrame({"trial": [0, *best.index],
                          "t": [0.0, *times.reindex(best.index).values],
                          "estimated_latency_s": [(untuned * weights).sum(min_count=len(weights)) + fixed,
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
    written = read_written(folder)
    trials = trials_frame(folder)
    rows = []
    for task in tasks["tasks"]:
        mine = trials[trials["task"] == task["name"]]
        best = mine["latency_s"].min() if mine["latency_s"].notna().any() else np.nan
        before = untuned.get(task["name"])
        before = np.nan if before is None else before
        hand = (written["dense"].get(task["name"]) or {}).get("latency_s")
        hand = np.nan if hand is None else hand
        used = np.fmin(np.fmin(best, before), hand)  # a build takes the fastest
        rows.append({"task": task["name"], "weight": task["weight"], "trials": len(mine),
                     "failed": int(mine["latency_s"].isna().sum()), "untuned_us": before * 1e6,
                     "written_us": hand * 1e6, "best_us": best * 1e6,
                     "speedup": before / used if used > 0 else np.nan, "weighted_us": used * 1e6 * task["weight"],
                     "gflops": task["flop"] / used / 1e9 if task["flop"] and used > 0 else np.nan})
    for name, kernel in written["fixed"].items():  # used as written: no task, no trials
        latency = kernel.get("latency_s")
        latency = np.nan if latency is None else latency
        rows.append({"task": f"{name} (as written)", "weight": kernel.get("weight", 1), "trials": 0, "failed": 0,
                     "untuned_us": np.nan, "written_us": latency * 1e6, "best_us": np.nan, "speedup": np.nan,
                     "weighted_us": latency * 1e6 * kernel.get("weight", 1), "gflops": np.nan})
    table = pd.DataFrame(rows).set_index("task")
    table.insert(table.columns.get_loc("weighted_us") + 1, "share", table["weighted_us"] / table["weighted_us"].sum())
    return table.sort_values("weighted_us", ascending=False)
