"""Shipped tuning logs: an experiment's MetaSchedule tuning log, pruned to what a build needs,
kept in the repository per machine kind, preset, batch size and precision (TLCBench's key):

    logs/<machine-kind>/<preset>/b<batch>/tuned-<precision>/    (tuned-<precision>-plain: --no-prepack)

A shipped log is a tuning log like any other (`dlrm build --tuning-log DIR` builds from it),
holding per workload only the best `keep` records (the ones MetaSchedule's JSON database ranks
first, and the best trial as `trials.jsonl` times it) and the workloads they refer to; then
`tasks.json`, `written.json` (the duel), `untuned.json`, `untuned/` whole, a `trials.jsonl`
with one line per record kept, and `shipped.json`: where and when it was tuned (machine kind,
CPU, TVM version, trials, tuning time, the tuning curve's steps) and every file's checksum, so
that a damaged file is refused by name instead of silently changing the build.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.files import atomic_dir, read_json, sha256_file
from dlrmlib.formats.tuning_log import (
    KNOBS_FILE,
    RECORDS_FILE,
    TASKS_FILE,
    TRIALS_FILE,
    UNTUNED_DB,
    UNTUNED_FILE,
    WORKLOADS_FILE,
    WRITTEN_FILE,
    derive_trials,
    read_tasks,
    snapshot_log,
    split_records,
    trials_frame,
    tuning_curve,
    workload_lines,
    written_choice,
)

SHIPPED_FILE = "shipped.json"
SHIPPED_VERSION = 1
DEFAULT_KEEP = 4  # records kept per workload: the best, and a few runners-up for a later search to start from
PRECISIONS = ("fp32",)  # the tuned build's precision (reduced precisions are custom builds)
_INDEX = re.compile(rb"^\[\s*(\d+)\s*,")  # a record's workload index, its first field


def shipped_log_dir(root: Path, kind: str, preset: str, batch: int, precision: str = "fp32",
                    prepack: bool = True) -> Path:
    """Where a tuning log ships: <root>/<machine kind>/<preset>/b<batch>/tuned-<precision>[-plain]."""
    if precision not in PRECISIONS:
        raise DlrmError(f"tuning logs ship for precision {', '.join(PRECISIONS)}, not {precision!r}")
    return Path(root) / kind / preset / f"b{batch}" / (f"tuned-{precision}" + ("" if prepack else "-plain"))


def find_shipped(root: Path | None, kind: str, preset: str, batch: int, precision: str = "fp32") -> Path | None:
    """The prepacked log shipped for this key, when the repository has one."""
    if root is None:
        return None
    folder = shipped_log_dir(root, kind, preset, batch, precision)
    return folder if (folder / SHIPPED_FILE).is_file() else None


def read_shipped(folder: Path) -> dict | None:
    """`shipped.json` of a shipped log (None for a log that was not exported); a clear error
    when it is damaged."""
    path = Path(folder) / SHIPPED_FILE
    if not path.is_file():
        return None
    try:
        shipped = read_json(path)
        ok = isinstance(shipped, dict) and isinstance(shipped.get("files"), dict)
    except (ValueError, UnicodeDecodeError, DlrmError):
        ok = False
    if not ok:
        raise DlrmError(f"the shipped tuning log {folder} is damaged: {SHIPPED_FILE} is not what `dlrm tune --ship` "
                        f"writes; restore the folder (e.g. `git checkout -- {folder}`) or export it again")
    return shipped


def check_shipped(folder: Path) -> dict | None:
    """A shipped log's files against the checksums `shipped.json` records: a damaged or missing
    file is refused by name. Returns `shipped.json` (None for a log that was not exported)."""
    shipped = read_shipped(folder)
    if shipped is None:
        return None
    for name, digest in sorted(shipped["files"].items()):
        path = Path(folder) / name
        problem = ("is missing" if not path.is_file() else
                   "does not match the checksum in shipped.json" if sha256_file(path) != digest else None)
        if problem:
            raise DlrmError(f"the shipped tuning log {folder} is damaged: {name} {problem}; restore the folder "
                            f"(e.g. `git checkout -- {folder}`) or export it again (`dlrm tune --ship`)")
    return shipped


def machine_mismatch(folder: Path, kind: str, mcpu: str) -> str | None:
    """Why a log was tuned for another machine than (`kind`, `mcpu`), or None: a shipped log
    names its machine kind, any log its target's CPU (`tasks.json`)."""
    shipped = read_shipped(folder) or {}
    tasks = read_tasks(folder) or {}
    theirs_mcpu = (tasks.get("target") or {}).get("mcpu")
    theirs_kind = shipped.get("machine_kind")
    if theirs_kind and theirs_kind != kind:
        return f"was tuned on a {theirs_kind} machine, this one is {kind}"
    if theirs_mcpu and theirs_mcpu != mcpu:
        return f"was tuned for CPU {theirs_mcpu!r}, this one is {mcpu!r}"
    return None


# -- exporting ---------------------------------------------------------------------------------

def _kept_records(records: list[tuple], trials: list[dict], keep: int) -> list[int]:
    """Indices of the records to ship, in their order: per workload the `keep` fastest valid ones
    (as MetaSchedule ranks them: mean run time, ties in commit order) and the fastest trial as
    `trials.jsonl` times it (what the duel and the hand-written choice compare with)."""
    by_workload: dict[int, list[tuple[float, int]]] = {}
    best_trial: dict[int, tuple[float, int]] = {}
    for index, ((_, (workload, latency)), trial) in enumerate(zip(records, trials)):
        if latency is not None:
            by_workload.setdefault(workload, []).append((latency, index))
        timed = trial.get("latency_s")
        if timed is not None and timed == timed and (workload not in best_trial or timed < best_trial[workload][0]):
            best_trial[workload] = (timed, index)
    kept = {index for ranked in by_workload.values() for _, index in sorted(ranked)[:keep]}
    return sorted(kept | {index for _, index in best_trial.values()})


def _copy_untuned(folder: Path, dest: Path) -> None:
    """The untuned kernels' database, complete lines only (a build adds them as candidates)."""
    if (folder / UNTUNED_DB / RECORDS_FILE).is_file():
        snapshot_log(folder / UNTUNED_DB, dest / UNTUNED_DB)


def _curve_steps(folder: Path) -> list[list[float]]:
    """The tuning curve where it moved: [trial, seconds, estimated seconds per batch]."""
    curve = tuning_curve(folder)
    steps, last = [], None
    for row in curve.itertuples():
        if last is None or row.estimated_latency_s < last:
            steps.append([int(row.trial), round(float(row.t), 3), float(row.estimated_latency_s)])
            last = row.estimated_latency_s
    return steps


def _decisions(folder: Path) -> tuple:
    """What a build decides from a log: the hand-written Dense kernels and, per task, the best
    trial's latency (the tuned kernel the database gives is checked by the build itself)."""
    trials = trials_frame(folder)
    best = {} if trials.empty else trials.groupby("task")["latency_s"].min().dropna().to_dict()
    return written_choice(folder), best


def export_log(folder: Path, dest: Path, keep: int = DEFAULT_KEEP, about: dict | None = None) -> dict:
    """Write `folder`'s tuning log to `dest` (replaced whole, atomically), pruned to the best
    `keep` records per workload, with `shipped.json` (`about`: machine, versions, key fields).
    The pruned log must decide a build as the full one does: checked here. Returns `shipped.json`."""
    folder, dest = Path(folder), Path(dest)
    if keep < 1:
        raise DlrmError(f"--keep must be at least 1 (records per kernel), got {keep}")
    if read_tasks(folder) is None or not (folder / RECORDS_FILE).is_file():
        raise DlrmError(f"{folder} holds no tuning log to ship (no {TASKS_FILE} or {RECORDS_FILE}); tune first "
                        "(`dlrm tune`)")
    workloads = workload_lines(folder)
    records, damaged = split_records(folder, len(workloads))
    if damaged:
        raise DlrmError(f"{folder / RECORDS_FILE}, line {damaged[0][0]} is damaged; run `dlrm tune` on the "
                        "experiment once (it sets damaged lines aside), then ship")
    trials = derive_trials(folder)[0]
    kept = _kept_records(records, trials, keep)
    used = sorted({records[i][1][0] for i in kept})
    renumber = {old: new for new, old in enumerate(used)}
    with atomic_dir(dest) as tmp:
        (tmp / WORKLOADS_FILE).write_bytes(b"".join(workloads[w] for w in used))
        (tmp / RECORDS_FILE).write_bytes(b"".join(
            _INDEX.sub(b"[%d," % renumber[records[i][1][0]], records[i][0], count=1) for i in kept))
        (tmp / TRIALS_FILE).write_text("".join(
            json.dumps({**trials[i], "trial": n, "tuned_trial": trials[i]["trial"]}, sort_keys=True) + "\n"
            for n, i in enumerate(kept, 1)))
        for name in (TASKS_FILE, WRITTEN_FILE, UNTUNED_FILE, KNOBS_FILE):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
        _copy_untuned(folder, tmp)
        if _decisions(tmp) != _decisions(folder):  # a bug, never the user's: say it plainly
            raise DlrmError(f"the pruned log in {dest} would build other kernels than {folder}; not shipped")
        times = [t["t"] for t in trials]
        shipped = {"version": SHIPPED_VERSION, **(about or {}), "keep": keep, "trials": len(records),
                   "valid_trials": sum(1 for _, (_, latency) in records if latency is not None),
                   "records_kept": len(kept), "tuning_seconds": max(times, default=0.0),
                   "curve": _curve_steps(folder), "files": _checksums(tmp)}
        (tmp / SHIPPED_FILE).write_text(json.dumps(shipped, indent=1) + "\n")
    return shipped


def _checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
