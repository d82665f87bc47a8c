"""Tune: MetaSchedule tuning of an experiment's model, resumable, and builds from its log.

Untuned TVM runs the DLRM hundreds of times slower than ONNX Runtime on CPU: the wheel has no
CPU matmul schedule. MetaSchedule finds one per kernel by measuring candidates ("trials").

The tuning log is the experiment's record of that search, in `tune/` (`tune/prepack/` for the
weight-prepacked build, whose kernels are different functions):
- `database_workload.json`, `database_tuning_record.json`: MetaSchedule's JSON database; a
  record line is appended as soon as its batch of trials is measured,
- `tasks.json`: the kernels tuned, their weights and FLOPs, the target and batch size,
- `untuned.json`, `untuned/`: each kernel's latency before tuning (the curve starts there),
  and the untuned kernels as records, so that a build takes a tuned kernel only if faster,
- `trials.jsonl`: one line per measured trial (time, task, latency): the tuning curve,
- `logs/`: MetaSchedule's own per-task logs.
Killing a run loses at most the batch being measured; a torn last line is cut off before the
next run opens the log, and that run tunes only what is left of the budget, its search
starting from the best records already there. A lock keeps two runs off one experiment.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DlrmError
from .experiment import Experiment
from .files import read_json, read_jsonl, write_json
from .machine import utc_now

DEFAULT_TRIALS = 3000
CI_TRIALS = 16  # under CI=true, as TVM's tutorials skip their expensive tuning there
TRIALS_PER_BATCH = 64  # MetaSchedule's default; smaller budgets use smaller batches
MIN_TRIALS_PER_BATCH = 8
WORKLOADS_FILE = "database_workload.json"
RECORDS_FILE = "database_tuning_record.json"
TASKS_FILE = "tasks.json"
UNTUNED_FILE = "untuned.json"
UNTUNED_DB = "untuned"
TRIALS_FILE = "trials.jsonl"
LOCK_FILE = "tune.lock"
PREPACK_LOG = "prepack"
CURVE_FIGURE = "tuning_curve.png"


@dataclass
class TuneResult:
    log_dir: Path
    trials: int  # records in the log now
    new_trials: int  # measured by this run
    seconds: float  # this run, start-up included
    estimated_latency_s: float | None  # sum over tasks of weight x best latency

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.new_trials / self.seconds if self.seconds else 0.0


# -- where the log lives, and reading it safely -----------------------------------------------

def tuning_log_dir(experiment: Experiment, prepack: bool = False) -> Path:
    """The experiment's tuning log for the plain or the weight-prepacked build."""
    return experiment.tune_dir / PREPACK_LOG if prepack else experiment.tune_dir


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


def clear_log(experiment: Experiment, prepack: bool = False) -> None:
    """Start a log over: remove its files (the other layout's log, a subfolder, stays)."""
    import shutil

    folder = tuning_log_dir(experiment, prepack)
    with tuning_lock(experiment):
        for name in (WORKLOADS_FILE, RECORDS_FILE, TASKS_FILE, UNTUNED_FILE, TRIALS_FILE):
            (folder / name).unlink(missing_ok=True)
        for name in (UNTUNED_DB, "logs"):
            shutil.rmtree(folder / name, ignore_errors=True)


# -- one run at a time -------------------------------------------------------------------------

@contextmanager
def tuning_lock(experiment: Experiment):
    """Hold the experiment's tuning lock (`tune/tune.lock`, fcntl.flock): the OS releases it
    when the process dies, so a killed run never leaves a stale lock."""
    path = experiment.tune_dir / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise DlrmError(f"experiment {experiment.name!r} is already being tuned ({holder}); wait for that "
                            f"run to finish or stop it, then run again: it resumes from the log") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}, started {utc_now()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


# -- the module that is tuned and built --------------------------------------------------------

def front_passes(target, prepack: bool) -> list:
    """Relax passes up to the fused TIR kernels, shared by task extraction and the build so
    that the database's workloads are exactly the kernels the build looks up. With `prepack`,
    weights are marked layout-free (as `static_shape_tuning_pipeline` does), so the tuned
    kernels may ask for their weights in another layout, made once by `main_transform_params`."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    passes = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
              *cpu.library_dispatch_passes(target), *cpu.legalize_passes(target)]
    if prepack:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    return passes


def fused_module(experiment: Experiment, target, prepack: bool):
    """The experiment's model imported exactly as `build` does, through the front passes."""
    import tvm

    from .build import import_relax
    from .normalise import load_graph
    from .tvmlog import quiet_tvm_log

    mod = import_relax(load_graph(experiment.normalised_model))
    with target, quiet_tvm_log():
        return tvm.transform.Sequential(front_passes(target, prepack))(mod)


def per_batch_kernels(mod, target, prepack: bool):
    """The module as it runs per batch. With prepacking, kernels on weights alone (the Gemm
    weights' transposes) move into `main_transform_params`, run once at build time: they are
    not worth a trial and not part of a batch's latency."""
    import tvm
    from tvm import relax

    from .schedules.prepack import TRANSFORM

    if not prepack:
        return mod
    with target:
        lifted = relax.transform.LiftTransformParams()(mod)
    return tvm.IRModule({gv: f for gv, f in lifted.functions.items() if gv.name_hint != TRANSFORM})


def extract_tasks(mod, target) -> list:
    """MetaSchedule's tuning tasks: one per distinct kernel, weighted by its number of calls."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, target)
    return [t for t in tasks if not t.mod.attrs or not t.mod.attrs.get("tirx.is_scheduled", False)]


def _task_flop(task) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # some kernels (gathers) have no FLOP estimate
        return 0.0


def _log_identity(experiment: Experiment, target: dict, prepack: bool) -> dict:
    import tvm

    params = experiment.params
    return {"batch_size": params["batch_size"], "prepack": prepack, "target": target, "tvm_version": tvm.__version__,
            "model": params.get("onnx_model") or f"preset {params.get('preset')}"}


def _check_log_identity(folder: Path, identity: dict) -> None:
    """A log holds records for one batch size, target and weight layout; adding another's
    trials would mix two searches into one budget and one curve."""
    old = read_tasks(folder)
    if not old:
        return
    for key, what in (("batch_size", "batch size"), ("prepack", "weight prepacking")):
        if old.get(key) != identity[key]:
            raise DlrmError(f"the tuning log {folder} was made with {what} {old.get(key)}, this run has "
                            f"{identity[key]}; move that log away (or prepare another experiment)")
    if old.get("target", {}).get("mcpu") != identity["target"]["mcpu"]:
        raise DlrmError(f"the tuning log {folder} was tuned for CPU {old['target'].get('mcpu')!r}, this machine "
                        f"is {identity['target']['mcpu']!r}; tune in a fresh experiment on this machine")


# -- tuning ------------------------------------------------------------------------------------

def ci_trials(trials: int) -> int:
    """The budget to use: a tiny one when the environment says CI=true."""
    return min(trials, CI_TRIALS) if os.environ.get("CI", "").lower() == "true" else trials


def _check_budget(trials, max_trials_per_task, num_threads, trials_per_batch) -> None:
    if not isinstance(trials, (int, np.integer)) or trials < 1:
        raise DlrmError(f"trials must be a positive integer, got {trials!r}")
    for name, value in (("max_trials_per_task", max_trials_per_task), ("num_threads", num_threads),
                        ("trials_per_batch", trials_per_batch)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise DlrmError(f"{name} must be a positive integer (or None), got {value!r}")


def _batch_size(remaining: int, requested: int | None) -> int:
    """Trials per batch: MetaSchedule's 64, but a small budget is cut into at least 8 batches,
    so that it still reaches the 8 kernels that take the most time."""
    if requested:
        return requested
    return int(min(TRIALS_PER_BATCH, max(MIN_TRIALS_PER_BATCH, remaining // 8)))


def _restore(states: list, trials: list[dict]) -> None:
    """Each task's trials, best latency and per-batch history from the trials file, so that a
    resumed run neither re-explores every kernel nor forgets what was found."""
    by_name = {s.name: s for s in states}
    batch_key = None
    for trial in trials:
        state = by_name.get(trial.get("task"))
        if state is None:
            continue
        state.add_trial(trial.get("latency_s"))
        key = (trial.get("task"), trial.get("t"))
        if key != batch_key:
            state.history.append(0.0)
            batch_key = key
        state.history[-1] = state.best_or_failed()


def _untuned_latencies(tasks, states, target, builder, runner, folder: Path, log) -> None:
    """Every kernel's untuned latency, measured once per log (`untuned.json`)."""
    from . import tune_session as ts

    known = read_untuned(folder)
    missing = [i for i, s in enumerate(states) if s.name not in known]
    if missing:
        log(f"[tune] timing {len(missing)} untuned kernels once (the curve's starting point)")
        mods = [tasks[i].dispatched[0] for i in missing]
        latencies = ts.measure_untuned(mods, target, builder, runner)
        ts.commit_untuned(folder / UNTUNED_DB, mods, latencies, target)
        known.update({states[i].name: latency for i, latency in zip(missing, latencies)})
        write_json(folder / UNTUNED_FILE, known)
    for state in states:
        state.untuned_s = known.get(state.name)


def _contexts(tasks: list, folder: Path, threads: int, seed: int | None) -> list:
    from tvm.s_tir import meta_schedule as ms

    contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, str(folder), num_threads=threads, seed=seed)
    if len(contexts) != len(tasks):
        raise DlrmError("MetaSchedule skipped some tasks; the session's task list no longer matches")
    return contexts


@contextmanager
def _quiet_metaschedule():
    """MetaSchedule's statistics table (after every batch) goes to tune/logs/ only, also in a
    notebook, where MetaSchedule would display it as a new table each time; the terminal or
    notebook shows the progress bar and warnings."""
    import tvm_ffi
    from tvm.s_tir.meta_schedule import utils as ms_utils

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    logger.setLevel(logging.WARNING)  # MetaSchedule makes it its console handler's level
    # MetaSchedule reconfigures this logger for every run by handler name, and fails on a
    # handler it did not make (pytest's capture handlers, say): set those aside meanwhile.
    foreign = [h for h in logger.handlers if not (h.get_name() or "").startswith(logger.name)]
    for handler in foreign:
        logger.removeHandler(handler)
    name = "s_tir.meta_schedule.using_ipython"
    tvm_ffi.register_global_func(name, lambda: False, override=True)
    try:
        yield
    finally:
        tvm_ffi.register_global_func(name, ms_utils._using_ipython, override=True)
        for handler in foreign:
            logger.addHandler(handler)


def tune(experiment: Experiment | str, trials: int = DEFAULT_TRIALS, max_trials_per_task: int | None = None,
         num_threads: int | None = None, prepack: bool = False, trials_per_batch: int | None = None,
         seed: int | None = None, progress: bool = True, log: Callable[[str], None] = print,
         rpc: "RpcMeasurement | None" = None) -> TuneResult:
    """Tune until the experiment's log holds `trials` records (a larger budget than last time
    continues from the log; killing the run loses at most the batch being measured).
    With `rpc` (dlrmlib.rpc.RpcMeasurement), candidates are measured on the RPC tracker's
    servers instead of this machine.

    `max_trials_per_task` caps each kernel's trials (across runs, to within one batch);
    `num_threads` sets build workers and search threads (default: every core; measurement
    always runs alone); `prepack` tunes the kernels of the weight-prepacked build."""
    experiment = Experiment.of(experiment)
    _check_budget(trials, max_trials_per_task, num_threads, trials_per_batch)
    folder = tuning_log_dir(experiment, prepack)
    started = time.perf_counter()
    with tuning_lock(experiment):
        folder.mkdir(parents=True, exist_ok=True)
        if repair_log(folder):
            log(f"[tune] cut a torn last line off the database in {folder} (a run was killed mid-write)")
        done = count_records(folder)
        if done >= trials:
            log(f"[tune] {folder} already holds {done} trials (budget {trials}): nothing to tune")
            return TuneResult(folder, done, 0, time.perf_counter() - started, _logged_estimate(folder))
        return _tune_rest(experiment, folder, trials, done, max_trials_per_task, num_threads or os.cpu_count() or 1,
                          prepack, trials_per_batch, seed, progress, log, started, rpc=rpc)


def _tune_rest(experiment, folder, trials, done, cap, threads, prepack, per_batch, seed, progress, log,
               started, rpc=None) -> TuneResult:
    import tvm

    from . import tune_session as ts
    from .target import host_target

    ts.cpu_intrinsics_only()
    target_dict = host_target()
    target = tvm.target.Target(target_dict)
    log(f"[tune] {experiment.name}: extracting kernels for {target_dict['mcpu']}, batch "
        f"{experiment.params['batch_size']}{', weights prepacked' if prepack else ''}")
    tasks = extract_tasks(per_batch_kernels(fused_module(experiment, target, prepack), target, prepack), target)
    session = _new_session(experiment, folder, tasks, target_dict, prepack, trials, done, cap)
    batch = _batch_size(trials - done, per_batch)
    log(f"[tune] {len(tasks)} kernels; {done} trials in the log, tuning {trials - done} more in batches of "
        f"{batch} ({threads} build workers, measurement alone); log: {folder}")
    with _quiet_metaschedule():
        contexts = _contexts(tasks, folder, threads, seed)
        builder, runner = ts.PooledBuilder(threads), ts.make_runner(rpc)
        if rpc is not None:
            log(f"[tune] measuring on {rpc.servers} RPC server(s) with key {rpc.key!r} via the tracker at {rpc.tracker}")
        try:
            _untuned_latencies(tasks, session.tasks, target, builder, runner, folder, log)
            with _stop_after_batch_on_interrupt(session, log):
                _run_tasks(contexts, session, folder, trials - done, cap, batch, builder, runner, seed, progress,
                           f"tune {experiment.name}")
        finally:
            builder.close()
    result = TuneResult(folder, count_records(folder), session.new_trials, time.perf_counter() - started,
                        session.estimated_latency())
    estimate = (f"estimated {result.estimated_latency_s * 1e3:.3f} ms per batch"
                if result.estimated_latency_s is not None else "some kernels could not be timed")
    log(f"[tune] {result.new_trials} trials in {result.seconds:.0f} s ({result.trials_per_minute:.1f} per minute); "
        f"the log holds {result.trials}; {estimate}")
    if session.stop_requested:
        raise KeyboardInterrupt(f"tuning stopped at {result.trials} trials; run again to continue")
    return result


def _new_session(experiment, folder: Path, tasks: list, target: dict, prepack: bool, trials: int, done: int,
                 cap: int | None):
    """The run's shared state, after checking the log is for this batch size, target and
    layout; `tasks.json` is (re)written and earlier trials are counted per kernel."""
    from . import tune_session as ts

    identity = _log_identity(experiment, target, prepack)
    _check_log_identity(folder, identity)
    states = [ts.TaskState(t.task_name, float(t.weight), _task_flop(t)) for t in tasks]
    write_json(folder / TASKS_FILE, {**identity, "tasks": [
        {"name": s.name, "weight": s.weight, "flop": s.flop} for s in states]})
    previous = read_trials(folder)
    _restore(states, previous)
    return ts.Session(tasks=states, budget=trials, trials=done, trials_file=folder / TRIALS_FILE,
                      time_offset=max((t.get("t", 0.0) for t in previous), default=0.0), max_trials_per_task=cap)


@contextmanager
def _stop_after_batch_on_interrupt(session, log):
    """Ctrl-C (or a notebook's interrupt) stops the run once the batch being measured is on
    disk; a second Ctrl-C stops at once. An interrupt raised inside MetaSchedule's C++ loop
    aborts the process instead (the log survives that too, but with a crash report)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if session.stop_requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        session.stop_requested = True
        log("\n[tune] interrupted: stopping after the batch being measured (Ctrl-C again: at once)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_tasks(contexts, session, folder: Path, remaining: int, cap, batch: int, builder, runner, seed, progress,
               desc: str) -> None:
    """MetaSchedule's tuning loop with this session's scheduler, callback and progress bar."""
    from tqdm.auto import tqdm
    from tvm.s_tir import meta_schedule as ms

    from . import tune_session as ts

    with tqdm(total=session.budget, initial=session.trials, unit="trial", desc=desc, smoothing=0.1,
              disable=not progress) as bar:
        session.progress = bar
        ms.tune_tasks(
            tasks=contexts, task_weights=[t.weight for t in session.tasks], work_dir=str(folder),
            max_trials_global=remaining, max_trials_per_task=cap or remaining, num_trials_per_iter=batch,
            builder=builder, runner=runner, database=ms.database.JSONDatabase(work_dir=str(folder)),
            measure_callbacks=[*ms.MeasureCallback.create("default"), ts.TrialRecorder(session)],
            task_scheduler=ts.CommittingScheduler(session, seed=seed))


def _logged_estimate(folder: Path) -> float | None:
    curve = tuning_curve(folder)
    return None if curve.empty else float(curve["estimated_latency_s"].iloc[-1])


# -- building from a log -----------------------------------------------------------------------

def tuned_pipeline(target: dict, database_dir: Path | None, prepack: bool, facts: dict):
    """The Relax pipeline for a build from a tuning log: the front passes, the database's best
    schedule for every kernel it knows, weight prepacking if asked, then the default CPU
    lowering. Records in `facts` how many kernels the log covered and, with prepacking, what
    `main_transform_params` computes."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from .build import NUM_INPUTS
    from .schedules.prepack import lift_weight_transforms

    tvm_target = tvm.target.Target(target)

    @tvm.transform.module_pass(opt_level=0, name="dlrm_tuned_pipeline")
    def _pipeline(mod, _ctx):
        with tvm_target:
            mod = tvm.transform.Sequential(front_passes(tvm_target, prepack))(mod)
            if database_dir is not None:
                mod = relax.transform.MetaScheduleApplyDatabase(str(database_dir))(mod)
            facts["kernels"], facts["tuned_kernels"] = _count_scheduled(mod)
            if database_dir is not None and facts["tuned_kernels"] == 0:
                raise DlrmError("the tuning log has no record for any kernel of this model: it was tuned for "
                                "another model, batch size or weight layout (plain vs --prepack)")
            if prepack:
                mod = relax.transform.SplitLayoutRewritePreproc()(mod)
                mod, facts["plan"] = lift_weight_transforms(mod, NUM_INPUTS)
                mod = relax.transform.FoldConstant()(mod)
                facts["transform_id"] = _transform_id(mod)
            mod = tvm.transform.Sequential(cpu.dataflow_lower_passes(tvm_target)
                                           + cpu.finalize_passes(tvm_target))(mod)
        return mod

    return _pipeline


def _transform_id(mod) -> str | None:
    """What `main_transform_params` computes (its IR and the kernels it calls), so that two
    libraries share a prepacked weights folder only when their transforms are the same: the
    tuned kernels choose the packed layouts, and two layouts can have the same shapes."""
    import hashlib

    import tvm

    from .schedules.prepack import TRANSFORM

    if TRANSFORM not in [gv.name_hint for gv in mod.functions]:
        return None
    text = mod[TRANSFORM].script()
    callees = sorted(gv.name_hint for gv, f in mod.functions.items()
                     if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint in text)
    digest = hashlib.sha256(text.encode())
    for name in callees:
        digest.update(mod[name].script().encode())
    return digest.hexdigest()[:16]


def _count_scheduled(mod) -> tuple[int, int]:
    """(kernels, kernels with a schedule from the database)."""
    import tvm

    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    tuned = [f for f in funcs if f.attrs and f.attrs.get("tirx.is_scheduled", False)]
    return len(funcs), len(tuned)


def build_tuned(experiment: Experiment | str, log_dir: str | Path | None = None, prepack: bool = False,
                verify: bool = True, log: Callable[[str], None] = print):
    """Library + manifest + weights folder with the log's best schedules applied, checked
    against the test data's reference. Named after the log's trials: `saved_model_<trials>`,
    or `saved_model_<trials>_prepack` with weight prepacking."""
    experiment = Experiment.of(experiment)
    folder = Path(log_dir) if log_dir else tuning_log_dir(experiment, prepack)
    _check_log_mode(folder, prepack)
    with tempfile.TemporaryDirectory(prefix="dlrm-tuning-log-") as tmp:
        records = snapshot_log(folder, Path(tmp))
        if records == 0:
            raise DlrmError(f"the tuning log {folder} has no records yet; run `dlrm tune --experiment "
                            f"{experiment.name}{' --prepack' if prepack else ''}` first")
        log(f"[build] tuning log {folder}: {records} trials")
        _add_untuned(folder, Path(tmp))
        tag = f"{records}_prepack" if prepack else str(records)
        return _build(experiment, tag, Path(tmp), prepack, records, folder, verify, log)


def _add_untuned(folder: Path, snapshot: Path) -> None:
    """The untuned kernels join the snapshot as candidates (see tune_session.commit_untuned)."""
    untuned = folder / UNTUNED_DB
    if (untuned / RECORDS_FILE).is_file():
        from . import tune_session as ts

        snapshot_log(untuned, snapshot / UNTUNED_DB)
        ts.merge_untuned(snapshot, snapshot / UNTUNED_DB)


def build_best(experiment: Experiment | str, log_dir: str | Path | None = None, prepack: bool = False,
               verify: bool = True, log: Callable[[str], None] = print):
    """From the tuning log when it has records (an explicit `log_dir` must), else untuned."""
    experiment = Experiment.of(experiment)
    default = tuning_log_dir(experiment, prepack)
    if log_dir is not None or count_records(default):
        return build_tuned(experiment, log_dir, prepack, verify, log)
    log(f"[build] no tuning records in {default}: building untuned")
    if not prepack:
        from .build import build

        return build(experiment, verify=verify, log=log)
    return _build(experiment, "untuned_prepack", None, True, 0, None, verify, log)


def _check_log_mode(folder: Path, prepack: bool) -> None:
    """A plain log cannot serve a prepacked build, nor the reverse: different kernels."""
    tasks = read_tasks(folder)
    if tasks is not None and bool(tasks.get("prepack")) != prepack:
        def said(flag):
            return "with" if flag else "without"

        raise DlrmError(f"the tuning log {folder} was tuned {said(tasks.get('prepack'))} weight prepacking, this "
                        f"build is {said(prepack)}: their kernels are different functions. Build "
                        f"{said(tasks.get('prepack'))} --prepack, or tune {said(prepack)} --prepack first")


def _build(experiment, tag, database_dir, prepack, records, folder, verify, log):
    from .build import build
    from .target import host_target

    facts: dict = {}
    pipeline = tuned_pipeline(host_target(), database_dir, prepack, facts)
    weights = (lambda library: _prepacked_weights(experiment, library, facts, log)) if prepack else None

    relative_log = os.path.relpath(folder, experiment.builds_dir) if folder else None
    parts = ["MetaSchedule database" if database_dir else "no tuning log"] + (["weight prepacking"] if prepack else [])
    info = {"tuned": records > 0, "trials": records, "tuning_log": relative_log, "prepack": prepack,
            "pipeline": f"dlrmlib.tune.tuned_pipeline ({', '.join(parts)})"}
    result = build(experiment, tag, pipeline=pipeline, build_info=info, verify=verify, log=log, weights=weights)
    if database_dir is not None:
        log(f"[build] {facts['tuned_kernels']} of {facts['kernels']} kernels took their schedule from the "
            "tuning log (the best trial, or the untuned kernel where that was faster)")
    return result


def _prepacked_weights(experiment, library, facts, log):
    """The weights folder of a prepacked library: what `main` takes after the tuned kernels'
    weight transforms were lifted into `main_transform_params`, run once here on the plain
    weights (tables are hard-linked, not copied); the manifest says it is done."""
    from .build import extract_weights, prepacked_weights
    from .schedules.prepack import TRANSFORM

    plain = extract_weights(experiment)
    plan = facts["plan"]
    if plan.identity:
        return (*plain, None)
    log(f"[build] prepacking {len(plan.sources)} weights once ({TRANSFORM})")
    return (*prepacked_weights(experiment, library, plan, plain, facts["transform_id"]), TRANSFORM)


# -- the curve and the per-task table ----------------------------------------------------------

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


def plot_tuning_curve(experiment: Experiment | str, log_dir: str | Path | None = None, prepack: bool = False):
    """The tuning curve against trials and against tuning time, saved to the experiment's
    figures folder (`tuning_curve.png`, or `tuning_curve_prepack.png`)."""
    import matplotlib.pyplot as plt

    from .target import cpu_description

    experiment = Experiment.of(experiment)
    folder = Path(log_dir) if log_dir else tuning_log_dir(experiment, prepack)
    curve = tuning_curve(folder)
    tasks = read_tasks(folder) or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, x, label in ((axes[0], "trial", "trials"), (axes[1], "t", "tuning time (s)")):
        if not curve.empty:
            ax.step(curve[x], curve["estimated_latency_s"] * 1e3, where="post")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("estimated latency per batch (ms)")
    axes[0].set_yscale("log")
    target = tasks.get("target", {})
    fig.suptitle(f"MetaSchedule tuning of {experiment.name}: batch {tasks.get('batch_size', '?')}"
                 f"{', prepacked weights' if tasks.get('prepack') else ''}, {len(tasks.get('tasks', []))} kernels, "
                 f"{len(trials_frame(folder))} trials. Estimate: sum over kernels of calls x the faster of best "
                 f"trial so far and untuned kernel (each timed alone, cache flushed)\n{cpu_description()} "
                 f"({target.get('mcpu', '?')}, {target.get('num-cores', '?')} cores), TVM "
                 f"{tasks.get('tvm_version', '?')}", fontsize=8)
    fig.tight_layout()
    name = CURVE_FIGURE.replace(".png", "_prepack.png") if tasks.get("prepack") else CURVE_FIGURE
    out = experiment.figures_dir / name
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)  # a notebook shows the returned figure once, not twice
    return fig


def build_variants(experiment: Experiment | str, log_dir: str | Path | None = None, prepack: bool = False,
                   untuned: bool = True, custom: bool = True, log: Callable[[str], None] = print) -> list:
    """The builds notebook 03 compares, each checked against the reference: from the tuning log
    (untuned while the log is empty), the untuned baseline, and the hand-written kernels.
    Returns the fast ones (tuned, custom), the ones worth running natively."""
    from .build import build

    experiment = Experiment.of(experiment)
    fast = [build_best(experiment, log_dir=log_dir, prepack=prepack, log=log)]
    if custom:
        fast.append(build(experiment, tag="custom", schedule="custom", log=log))
    if untuned and fast[0].tag != "untuned":
        build(experiment, log=log)
    return fast
