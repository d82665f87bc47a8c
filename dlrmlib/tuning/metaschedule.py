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

import functools
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import write_json
from dlrmlib.core.machine import measure_peak_gflops
from dlrmlib.core.target import cpu_description, host_target
from dlrmlib.formats.shipped_log import SHIPPED_FILE
from dlrmlib.formats.tuning_log import (
    DENSE_WEIGHTS,
    KNOBS_FILE,
    RECORDS_FILE,
    TASKS_FILE,
    TRIALS_FILE,
    UNTUNED_DB,
    UNTUNED_FILE,
    WORKLOADS_FILE,
    WRITTEN_FILE,
    count_records,
    fixed_seconds,
    read_tasks,
    read_trials,
    read_untuned,
    reconcile_trials,
    repair_log,
    resolve_prepack,
    set_aside_damaged_records,
    set_aside_transposed_log,
    tuning_curve,
    tuning_log_dir,
)
from dlrmlib.frontend.relax import fused_module, per_batch_kernels
from dlrmlib.schedules.rewrite import vector_lanes
from dlrmlib.schedules.space import concat_space, dense_shape, dense_space, gather_concat_plan
from dlrmlib.tuning import DEFAULT_TRIALS, MAX_TRIALS, MAX_TRIALS_WHY, ROOF_MARGIN
from dlrmlib.tuning import session as ts
from dlrmlib.tuning.lock import tuning_lock
from dlrmlib.tuning.rpc import RpcMeasurement
from dlrmlib.tuning.kernels import MIN_SECONDS as KNOB_SECONDS
from dlrmlib.tuning.written import (adopt_measured_knobs, check_knob_step, duel, kernel_knobs, measure_seeds,
                                    measure_untimed_knobs, measure_written, seed_candidates, with_written)

ROOF_GEMM = 1536  # the peak's sgemm size: big enough for the BLAS to reach it, a second or so
CI_TRIALS = 16  # under CI=true, as TVM's tutorials skip their expensive tuning there
# Half MetaSchedule's population (512) and genetic rounds (4): the search took 1.38 s a trial
# (C++ evolution, feature extraction for the cost model), more than building and measuring it;
# this takes 0.50 s with no worse result at 192 trials (small preset, Zen 3, same load).
SEARCH = {"population_size": 256, "genetic_num_iters": 2}
TRIALS_PER_BATCH = 64  # MetaSchedule's default; smaller budgets use smaller batches
MIN_TRIALS_PER_BATCH = 8


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


def clear_log(experiment: Experiment | str, prepack: bool | None = None) -> None:
    """Start a log over: remove its files (the other layout's log, a subfolder, stays)."""
    import shutil

    experiment = Experiment.of(experiment)
    folder = tuning_log_dir(experiment, resolve_prepack(experiment, prepack))
    with tuning_lock(experiment):
        for name in (WORKLOADS_FILE, RECORDS_FILE, TASKS_FILE, UNTUNED_FILE, TRIALS_FILE, WRITTEN_FILE, KNOBS_FILE):
            (folder / name).unlink(missing_ok=True)
        for name in (UNTUNED_DB, "logs"):
            shutil.rmtree(folder / name, ignore_errors=True)


# -- the module that is tuned and built --------------------------------------------------------


def extract_tasks(mod, target) -> list:
    """MetaSchedule's tuning tasks: one per distinct kernel, weighted by its number of calls."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, target)
    return [t for t in tasks if not _scheduled(t.mod) and not _scheduled(t.dispatched[0])]


def _scheduled(mod) -> bool:
    """A module (or its function) already scheduled: a hand-written kernel, used as written."""
    funcs = [f for f in mod.functions.values() if hasattr(f, "attrs")]
    return bool(mod.attrs and mod.attrs.get("tirx.is_scheduled", False)) or any(
        f.attrs and f.attrs.get("tirx.is_scheduled", False) for f in funcs)


def _task_flop(task) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # some kernels (gathers) have no FLOP estimate
        return 0.0


def _log_identity(experiment: Experiment, target: dict, prepack: bool) -> dict:
    import tvm

    params = experiment.params
    return {"batch_size": params["batch_size"], "prepack": prepack, **({"dense_weights": DENSE_WEIGHTS} if prepack else {}),
            "target": target, "tvm_version": tvm.__version__, "model": params.get("onnx_model") or f"preset {params.get('preset')}",
            "cpu": cpu_description()}  # the machine the log was measured on, for its curve's caption


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
    for name, value in (("trials", trials), ("max_trials_per_task", max_trials_per_task),
                        ("trials_per_batch", trials_per_batch)):
        if value is not None and value > MAX_TRIALS:
            raise DlrmError(f"{name} is too large: at most {MAX_TRIALS:,}{MAX_TRIALS_WHY}, got {value}")


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

    known = read_untuned(folder)
    skipped = [s.name for s in states if s.name not in known and s.written_s is not None]
    if skipped:  # a naive GEMM takes seconds a run, and never beats the hand-written kernel
        log(f"[tune] not timing {len(skipped)} untuned kernels that have a hand-written kernel (their start)")
        known.update({name: None for name in skipped})
        write_json(folder / UNTUNED_FILE, known)
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


def _written_latencies(folder, tasks, module, target, knobs, prepack, builder, runner, session, log) -> None:
    """The hand-written kernels' latencies (`written.json`, measured once per log): a Dense
    task's packed GEMM is where its trials start from; the kernels used as written count in
    every estimate."""
    written = measure_written(folder, tasks, module, target, knobs, prepack, builder, runner, log)
    for state in session.tasks:
        state.written_s = (written["dense"].get(state.name) or {}).get("latency_s")
    session.fixed_s = fixed_seconds(written)


SPACES = ("union", "default", "hand-written")


def _space(task, space: str):
    """A task's design space: MetaSchedule's default x86 rules, the hand-written packed GEMM
    (dlrmlib.schedules.space) where it fits the kernel, or both (`union`, the default: the
    search samples either, its cost model and mutations compare them)."""
    from tvm.s_tir import meta_schedule as ms

    if space == "default" or hand_written(task) is None:
        return "post-order-apply"
    written = ms.space_generator.ScheduleFn(hand_written(task), sch_rules=[], postprocs=[], mutator_probs={})
    if space == "hand-written":
        return ms.space_generator.SpaceGeneratorUnion([written])
    return ms.space_generator.SpaceGeneratorUnion([written, ms.space_generator.PostOrderApply()])


def hand_written(task):
    """The hand-written schedule function that fits a task (Dense GEMM, the embeddings'
    concatenation), or None."""
    if dense_shape(task.dispatched[0]) is not None:
        return functools.partial(dense_space, lanes=vector_lanes(task.target))
    return concat_space if gather_concat_plan(task.dispatched[0]) is not None else None


def _contexts(tasks: list, folder: Path, threads: int, seed: int | None, space: str = "union") -> list:
    """One TuneContext per task, as `extracted_tasks_to_tune_contexts` makes them, with each
    task's own design space."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    loggers = get_loggers_from_work_dir(str(folder), [t.task_name for t in tasks])
    return [ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator=_space(task, space),
                           search_strategy=_search_strategy(), task_name=task.task_name, logger=logger,
                           rand_state=rand_state, num_threads=threads).clone()
            for task, logger, rand_state in zip(tasks, loggers, fork_seed(seed, n=len(tasks)))]


def _search_strategy():
    """MetaSchedule's evolutionary search with a smaller population per batch (see SEARCH)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.search_strategy.EvolutionarySearch(**SEARCH)


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
         num_threads: int | None = None, prepack: bool | None = None, trials_per_batch: int | None = None,
         seed: int | None = None, progress: bool = True, log: Callable[[str], None] = print,
         rpc: "RpcMeasurement | None" = None, roof_margin: float | None = ROOF_MARGIN,
         space: str = "union", kernel_precisions: tuple[str, ...] = ("fp32",),
         knob_seconds: float = KNOB_SECONDS) -> TuneResult:
    """Tune until the experiment's log holds `trials` records (a larger budget than last time
    continues from the log; killing the run loses at most the batch being measured).
    With `rpc` (dlrmlib.tuning.rpc.RpcMeasurement), candidates are measured on the RPC tracker's
    servers instead of this machine.

    `max_trials_per_task` caps each kernel's trials (across runs, to within one batch);
    `num_threads` sets build workers and search threads (default: every core; measurement
    always runs alone); a kernel whose best trial is within `roof_margin` of its compute roof
    (its FLOPs at this machine's sgemm peak, measured at the start; None: never) gets no more
    trials; `space` is each Dense kernel's design space (`union`: the hand-written packed GEMM
    and MetaSchedule's default rules; `default`; `hand-written`); `prepack` tunes the kernels of the weight-prepacked build (None: the
    default, prepacked, unless the experiment's only log is an older plain one, which goes on;
    False: the plain build, for the study). Before the trials, the run measures the knobs of the
    hand-written kernels MetaSchedule cannot time into the log's kernels.jsonl
    (dlrmlib.tuning.written.measure_untimed_knobs): the interaction's, and with "int8" in
    `kernel_precisions` the int8 GEMMs' tiles, each candidate timed for `knob_seconds` a pass;
    `()`: none (the kernel log's or the default knobs)."""
    experiment = Experiment.of(experiment)
    check_knob_step(kernel_precisions, knob_seconds)
    _check_budget(trials, max_trials_per_task, num_threads, trials_per_batch)
    if space not in SPACES:
        raise DlrmError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    if roof_margin is not None and not (isinstance(roof_margin, (int, float)) and roof_margin >= 0):
        raise DlrmError(f"roof_margin must be a non-negative fraction (or None), got {roof_margin!r}")
    prepack = resolve_prepack(experiment, prepack)
    folder = tuning_log_dir(experiment, prepack)
    started = time.perf_counter()
    with tuning_lock(experiment):
        folder.mkdir(parents=True, exist_ok=True)
        if (aside := set_aside_transposed_log(folder)) is not None:
            log(f"[tune] {folder} was tuned on Dense kernels no build makes now (a transposed weight copy): set aside as {aside.name}")
        if repair_log(folder):
            log(f"[tune] cut a torn last line off the database in {folder} (a run was killed mid-write)")
        set_aside_damaged_records(folder, log)  # TVM's loader would stop at them without naming them
        reconcile_trials(folder, log)
        done = count_records(folder)
        if done >= trials:
            log(f"[tune] {folder} already holds {done} trials (budget {trials}): nothing to tune")
            return TuneResult(folder, done, 0, time.perf_counter() - started, _logged_estimate(folder))
        return _tune_rest(experiment, folder, trials, done, max_trials_per_task, num_threads or os.cpu_count() or 1,
                          prepack, trials_per_batch, seed, progress, log, started, rpc=rpc,
                          roof_margin=roof_margin, space=space, knob_step=(kernel_precisions, knob_seconds))


def _tune_rest(experiment, folder, trials, done, cap, threads, prepack, per_batch, seed, progress, log,
               started, rpc=None, roof_margin=None, space="union", knob_step=((), KNOB_SECONDS)) -> TuneResult:
    import tvm


    (folder / SHIPPED_FILE).unlink(missing_ok=True)  # a shipped log tuned on further is this experiment's own now
    ts.cpu_intrinsics_only()
    target_dict = host_target()
    target = tvm.target.Target(target_dict)
    log(f"[tune] {experiment.name}: extracting kernels for {target_dict['mcpu']}, batch "
        f"{experiment.batch_size}, {'weights prepacked' if prepack else 'plain weights (per-batch transposes)'}")
    measure_untimed_knobs(experiment, folder, *knob_step, rpc, progress, log)
    knobs, kept = kernel_knobs(experiment, folder), {}
    fused = fused_module(experiment, target, prepack, before=with_written(target_dict, knobs, kept))
    tasks = extract_tasks(per_batch_kernels(fused, target, prepack), target)
    session = _new_session(experiment, folder, tasks, target_dict, prepack, trials, done, cap)
    if roof_margin is not None:
        _set_roofs(session, roof_margin, log)
    batch = _batch_size(trials - done, per_batch)
    written = sum(hand_written(t) is not None for t in tasks) if space != "default" else 0
    log(f"[tune] {len(tasks)} kernels ({written} with a hand-written schedule in their design space, {space}); {done} trials in the log, tuning {trials - done} more in batches of "
        f"{batch} ({threads} build workers, measurement alone); log: {folder}")
    with _quiet_metaschedule():
        contexts = _contexts(tasks, folder, threads, seed, space)
        builder, runner = ts.PooledBuilder(threads), ts.make_runner(rpc)
        session.retime_best = functools.partial(ts.retime_best, contexts, folder, target, builder, runner)
        if rpc is not None:
            log(f"[tune] measuring on {rpc.servers} RPC server(s) with key {rpc.key!r} via the tracker at {rpc.tracker}")
        try:
            _written_latencies(folder, tasks, kept["mod"], target_dict, knobs, prepack, builder, runner, session, log)
            once = ts.make_runner(rpc, repeat=ts.ONCE_REPEATS)
            _untuned_latencies(tasks, session.tasks, target, builder, once, folder, log)
            if space != "default":  # each Dense kernel's first trials: the hand-written kernel's knobs
                seeds = seed_candidates(contexts, tasks, session, target_dict, knobs, trials - done)
                measure_seeds(seeds, contexts, session, folder, target, builder, runner, log)
                if prepack:
                    adopt_measured_knobs(folder, knobs, session, log)
            built, ran, looped = builder.seconds, runner.seconds, time.perf_counter()
            with _stop_after_batch_on_interrupt(session, log):
                _run_tasks(contexts, session, folder, trials - done, cap, batch, builder, runner, seed, progress,
                           f"tune {experiment.name}")
            if session.new_trials:
                log(ts.phases_line(session.new_trials, time.perf_counter() - looped, builder.seconds - built,
                                   runner.seconds - ran))
            if session.new_trials and not session.stop_requested:  # which of each pair a build takes
                duel(folder, contexts, tasks, session, target_dict, builder, runner, log)
        finally:
            builder.close()
    result = TuneResult(folder, count_records(folder), session.new_trials, time.perf_counter() - started,
                        session.estimated_latency())
    estimate = (f"estimated {result.estimated_latency_s * 1e3:.3f} ms per batch"
                if result.estimated_latency_s is not None else "some kernels could not be timed")
    log(f"[tune] {result.new_trials} trials in {result.seconds:.0f} s ({result.trials_per_minute:.1f} per minute); "
        f"the log holds {result.trials}; {estimate}")
    for line in session.roof_lines():
        log(line)
    if session.stalled:
        log(f"[tune] converged (no gain of {ts.STALL_GAIN:.0%} in {ts.STALL_BATCHES} batches): {', '.join(session.stalled)}")
    if session.end_reason():
        log(f"[tune] ended early: {session.end_reason()}")
    if session.stop_requested:
        raise KeyboardInterrupt(f"tuning stopped at {result.trials} trials; run again to continue")
    return result


def _new_session(experiment, folder: Path, tasks: list, target: dict, prepack: bool, trials: int, done: int,
                 cap: int | None):
    """The run's shared state, after checking the log is for this batch size, target and
    layout; `tasks.json` is (re)written and earlier trials are counted per kernel."""

    identity = _log_identity(experiment, target, prepack)
    _check_log_identity(folder, identity)
    states = [ts.TaskState(t.task_name, float(t.weight), _task_flop(t)) for t in tasks]
    write_json(folder / TASKS_FILE, {**identity, "tasks": [  # shash: how the database names the task
        {"name": s.name, "weight": s.weight, "flop": s.flop, "shash": _workload_hash(t)}
        for s, t in zip(states, tasks)]})
    previous = read_trials(folder)
    _restore(states, previous)
    return ts.Session(tasks=states, budget=trials, trials=done, trials_file=folder / TRIALS_FILE,
                      time_offset=max((t.get("t", 0.0) for t in previous), default=0.0), max_trials_per_task=cap)


def _set_roofs(session, margin: float, log) -> None:
    """Each kernel's compute roof, from this machine's sgemm peak measured now (a second or
    two, on every core, as the kernels run): a kernel near it stops taking trials. The peak is
    measured again before any kernel stops there (the highest counts)."""
    def measure() -> float:
        return measure_peak_gflops(ROOF_GEMM, 3) * 1e9

    session.roof_margin, session.measure_peak = margin, measure
    session.set_peak(measure())
    log(f"[tune] sgemm peak {session.peak_flops / 1e9:.0f} GFLOP/s: a kernel within {margin:.0%} of its compute roof "
        "stops (the peak is measured again before it does)")


def _workload_hash(task) -> str:
    """The structural hash the JSON database writes for the task's workload."""
    import tvm_ffi

    return str(tvm_ffi.structural_hash(task.dispatched[0]))


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


# -- the curve and the per-task table ----------------------------------------------------------


