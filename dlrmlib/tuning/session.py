"""What one tuning session hands to MetaSchedule: builder, runner, scheduler, callback.

Kept apart from `tune.py` because it imports MetaSchedule at module level (the `@derived_object`
classes need it), which `dlrmlib.tuning.metaschedule`'s plotting and log functions do not.

Why each piece exists:
- `cpu_intrinsics_only`: every `TuneContext` imports `tvm.s_tir.tensor_intrin`, about 30-40 s
  of registering GPU intrinsics; a CPU target needs only its own architecture's.
- `PooledBuilder`: LocalBuilder's build step with `tune_workers.build_candidate`, which skips
  that import, over workers kept from batch to batch; one worker per core.
- `make_runner`: LocalRunner with in-range ids for gathers (`tune_workers.alloc_in_range`).
- `MeasureAloneRunner`: LocalRunner measures asynchronously, so the next batch's search and
  builds ran on the same cores as the measurement. Waiting for it keeps timings clean.
- `CommittingScheduler`: MetaSchedule's gradient-based scheduler commits nothing to the
  database during its first round over all tasks (23 batches of 64 trials for the small DLRM);
  a kill then lost every trial. This one is the same gradient rule but joins every finished
  batch before choosing the next task, so each batch is on disk as soon as it is measured.
- `TrialRecorder`: one JSON line per measured trial (tune/trials.jsonl) and the progress bar.
- `measure_untuned`, `commit_untuned`: every kernel's untuned latency, as a starting point and
  as a record, so that a build never takes a tuned kernel slower than the untuned one.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerInput
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from dlrmlib.core.files import append_jsonl
from dlrmlib.tuning.workers import alloc_in_range, alloc_in_range_remote, build_candidate

INTRINSICS_BY_MACHINE = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm_cpu", "arm64": "arm_cpu",
                         "riscv64": "riscv_cpu"}
STALL_BATCHES = 3  # a kernel whose last this many batches gained less than STALL_GAIN stops
STALL_GAIN = 0.01
FAILED = 1e9  # the latency MetaSchedule's schedulers give a batch with no valid candidate
# CPU measurement: every repeat flushes the cache and runs once, so a kernel is timed with
# its weights cold (as when the previous layer's data displaced them), and builds never
# overlap it (MeasureAloneRunner).
EVALUATOR = dict(number=1, repeat=10, min_repeat_ms=0, enable_cpu_cache_flush=True)
BUILD_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 30.0


def cpu_intrinsics_only() -> None:
    """Register only this CPU's tensor intrinsics, so that the `import tvm.s_tir.tensor_intrin`
    inside every TuneContext finds the package already imported (0.3 s instead of 30-40 s)."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    package = importlib.util.module_from_spec(importlib.util.find_spec(name))
    sys.modules[name] = package  # the package without its __init__, which imports all targets
    tvm.s_tir.tensor_intrin = package
    arch = INTRINSICS_BY_MACHINE.get(platform.machine().lower())
    if arch:
        importlib.import_module(f"{name}.{arch}")


def mean_seconds(run_secs) -> float | None:
    """A measured candidate's latency: the mean of its runs (None when it has none)."""
    secs = [float(s) for s in run_secs or []]
    return sum(secs) / len(secs) if secs else None


@derived_object
class PooledBuilder(PyBuilder):
    """LocalBuilder's build step over one long-lived pool of workers. LocalBuilder starts new
    workers for every batch, and each start imports TVM, which imports torch when it is
    installed (tvm_ffi does): 4-5 s per batch. Workers are replaced after `uses` builds instead,
    which bounds the leak that made TVM restart them."""

    def __init__(self, workers: int, timeout_s: float = BUILD_TIMEOUT_S, uses: int = 256) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.seconds = 0.0  # spent building, over the run (where a trial's time goes)
        self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s, maximum_process_uses=uses)

    def build(self, build_inputs):
        started = time.perf_counter()
        jobs = [(build_candidate, None, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
        results = [self._result(r) for r in self.pool.map_with_error_catching(lambda job: _worker_func(*job), jobs)]
        self.seconds += time.perf_counter() - started
        return results

    def _result(self, outcome) -> BuilderResult:
        if outcome.status == StatusKind.COMPLETE:
            return BuilderResult(outcome.value, None)
        if outcome.status == StatusKind.TIMEOUT:
            return BuilderResult(None, f"LocalBuilder: Timeout, killed after {self.timeout_s} seconds")
        return BuilderResult(None, f"LocalBuilder: An exception occurred\n{outcome.value}")

    def close(self) -> None:
        self.pool.shutdown()


ONCE_REPEATS = 3  # the untuned kernels, timed once per log (the curve's start): they take
# seconds each (a naive 1024 x 1024 GEMM), and 10 runs of each made the start-up take minutes


def make_runner(rpc=None, repeat: int | None = None):
    """LocalRunner, or with `rpc` (dlrmlib.tuning.rpc.RpcMeasurement) TVM's RPCRunner on the tracker's
    servers; either way with in-range ids and waiting for each batch's measurement. `repeat`:
    runs per candidate (EVALUATOR's by default)."""
    evaluator = ms.runner.EvaluatorConfig(**{**EVALUATOR, **({"repeat": repeat} if repeat else {})})
    if rpc is not None:
        return MeasureAloneRunner(rpc.runner(evaluator, RUN_TIMEOUT_S, alloc_in_range_remote))
    inner = ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=evaluator,
                                  f_alloc_argument=alloc_in_range)
    return MeasureAloneRunner(inner)


@derived_object
class MeasureAloneRunner(PyRunner):
    """LocalRunner, but `run` returns only when the batch is measured."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.seconds = 0.0  # spent measuring, over the run

    def run(self, runner_inputs):
        started = time.perf_counter()
        results = [future.result() for future in self.inner.run(runner_inputs)]
        self.seconds += time.perf_counter() - started
        return [RunnerFuture(lambda: True, lambda r=r: r) for r in results]


def measure_untuned(mods: list, target, builder, runner) -> list[float | None]:
    """Each kernel as an untuned build compiles it (no schedule), timed like a trial: the
    tuning curve's starting point, and what a build uses for a kernel not tuned yet."""
    built = builder.build([BuilderInput(mod, target) for mod in mods])
    ready = [(i, b) for i, b in enumerate(built) if b.error_msg is None]
    inputs = [RunnerInput(b.artifact_path, "cpu", ArgInfo.from_entry_func(mods[i])) for i, b in ready]
    latencies: list[float | None] = [None] * len(mods)
    for (i, b), future in zip(ready, runner.run(inputs)):
        result = future.result()
        if result.error_msg is None:
            latencies[i] = mean_seconds(result.run_secs)
        shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
    return latencies


def measure_alternating(mods: list, target, builder, runner, rounds: int) -> list[float | None]:
    """Each module built once, then all timed in turn, `rounds` times over (so that a change in
    the machine's load touches every module alike); the median of each module's rounds."""
    built = builder.build([BuilderInput(mod, target) for mod in mods])
    ready = [(i, b) for i, b in enumerate(built) if b.error_msg is None]
    inputs = [RunnerInput(b.artifact_path, "cpu", ArgInfo.from_entry_func(mods[i])) for i, b in ready]
    seen: list[list[float]] = [[] for _ in mods]
    try:
        for _ in range(rounds):
            for (i, _b), future in zip(ready, runner.run(inputs)):
                result = future.result()
                if result.error_msg is None:
                    seen[i].append(mean_seconds(result.run_secs))
    finally:
        for _i, b in ready:
            shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
    return [float(statistics.median(s)) if s else None for s in seen]


def retime_best(contexts: list, folder: Path, target, builder, runner, i: int, rounds: int = 3) -> float | None:
    """Task i's best record in the log built again and timed `rounds` times (the median): what
    a roof stop checks, as the duel checks a build's choice (dlrmlib.tuning.written.duel)."""
    best = ms.database.JSONDatabase(work_dir=str(folder)).query_ir_module(contexts[i].mod, target, "main")
    return None if best is None else measure_alternating([best], target, builder, runner, rounds)[0]


def phases_line(trials: int, total: float, build: float, run: float) -> str:
    """Where a trial's time went in the tuning loop: search (candidates, cost model, database),
    build (the workers), measurement."""
    search = max(0.0, total - build - run)
    return (f"[tune] per trial: search {search / trials:.2f} s, build {build / trials:.2f} s, "
            f"measure {run / trials:.2f} s ({trials} trials, {total:.0f} s in the loop)")


def commit_untuned(folder: Path, mods: list, latencies: list[float | None], target) -> None:
    """The untuned kernels as tuning records in a database of their own, which a build adds to
    the log's: MetaSchedule then applies, per kernel, the faster of the untuned kernel and the
    best trial, so a few trials never make a kernel slower. The trace only looks up the root
    block: MetaSchedule ignores records whose trace has no instruction."""
    folder.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(folder))
    for mod, latency in zip(mods, latencies):
        if latency is not None:
            schedule = tvm.s_tir.Schedule(mod)
            schedule.get_sblock("root")
            database.commit_tuning_record(ms.database.TuningRecord(
                schedule.trace, database.commit_workload(mod), [latency], target, ArgInfo.from_entry_func(mod)))


# -- the session's state: what the scheduler, the callback and the caller share ------------------

@dataclass
class TaskState:
    name: str
    weight: float
    flop: float
    trials: int = 0  # in this log, earlier runs included
    best_s: float | None = None
    untuned_s: float | None = None
    history: list[float] = field(default_factory=list)  # best after each batch, earlier runs included
    floor_s: float | None = None  # compute roof: FLOPs at the machine's measured sgemm peak
    written_s: float | None = None  # the hand-written kernel (a Dense layer's packed GEMM), if any

    def used_s(self) -> float | None:
        """What a build uses: the fastest of the best trial, the untuned and the hand-written kernel."""
        return min((x for x in (self.best_s, self.untuned_s, self.written_s) if x is not None), default=None)

    def at_roof(self, margin: float | None) -> bool:
        """Its best trial within `margin` (0.05: 5 %) of the compute roof: more trials cannot
        gain much. Kernels without a FLOP estimate (gathers, copies) never stop this way. (Not
        the hand-written kernel: on a loaded machine the measured peak is low, and every Dense
        kernel stopped before its first batch.)"""
        return (margin is not None and self.floor_s is not None and self.best_s is not None
                and self.best_s <= self.floor_s * (1.0 + margin))

    def stalled(self, batches: int = STALL_BATCHES, gain: float = STALL_GAIN) -> bool:
        """Its last `batches` batches brought its best trial down by less than `gain` (a
        fraction): the search has converged. A kernel with no valid trial never stalls here."""
        history = self.history
        if len(history) <= batches or history[-1] >= FAILED:
            return False
        return history[-1] > history[-1 - batches] * (1.0 - gain)

    def cost(self) -> float:
        """Seconds per batch before tuning (FLOPs when no kernel could be timed)."""
        used = self.used_s()
        return self.weight * (used if used is not None else self.flop * 1e-9)

    def add_trial(self, latency: float | None) -> None:
        self.trials += 1
        if latency is not None and (self.best_s is None or latency < self.best_s):
            self.best_s = latency

    def best_or_failed(self) -> float:
        """The history's value after a batch: the best so far, or what the schedulers score a
        kernel with no valid candidate."""
        return self.best_s if self.best_s is not None else FAILED


@dataclass
class Session:
    """The tuning run as the caller sees it: tasks, budget, trials so far, the trials file."""

    tasks: list[TaskState]
    budget: int  # total trials the log should reach
    trials: int  # records in the log
    trials_file: Path
    time_offset: float = 0.0  # tuning seconds of earlier runs, so the curve's time axis continues
    started: float = field(default_factory=time.perf_counter)
    max_trials_per_task: int | None = None
    progress: object = None
    new_trials: int = 0
    stop_requested: bool = False  # Ctrl-C: no new batch
    roof_margin: float | None = None  # stop a kernel within this fraction of its compute roof
    at_roof: list[str] = field(default_factory=list)  # kernels stopped there, in order
    peak_flops: float | None = None  # the highest sgemm peak measured in this run (FLOP/s)
    measure_peak: Callable[[], float] | None = None  # measures it again (FLOP/s), before any roof stop
    retime_best: Callable[[int], float | None] | None = None  # a task's best trial timed again, before its roof stop
    retimed: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # name: (logged, timed again)
    fixed_s: float = 0.0  # the kernels used as written, per batch (no task)
    stalled: list[str] = field(default_factory=list)  # kernels whose search converged, in order
    capped: list[str] = field(default_factory=list)  # kernels at max_trials_per_task
    converge: bool = True  # stop a kernel whose search stalled (STALL_BATCHES)

    def elapsed(self) -> float:
        return self.time_offset + time.perf_counter() - self.started

    def estimated_latency(self) -> float | None:
        """Sum over tasks of weight x the fastest of best trial, untuned and hand-written kernel,
        plus the kernels used as written: what a build from the log would take, kernel by kernel."""
        latencies = [t.used_s() for t in self.tasks]
        if any(latency is None for latency in latencies):
            return None
        return self.fixed_s + sum(t.weight * latency for t, latency in zip(self.tasks, latencies))

    def roof_stops(self, alive: list[int]) -> list[int]:
        """The tasks among `alive` whose best trial is now within the margin of their compute
        roof (noted in `at_roof`): the scheduler gives them no more trials."""
        stops = [i for i in alive if self.tasks[i].at_roof(self.roof_margin)]
        if stops and self.measure_peak is not None:
            # A peak measured while another job ran is too low, and every kernel would look at
            # its roof (all 6 Dense kernels stopped at trial 198 of 3000 that way): measure again
            # now, keep the highest, and stop only the kernels still within the margin.
            self.set_peak(self.measure_peak())
            stops = [i for i in stops if self.tasks[i].at_roof(self.roof_margin)]
        stops = [i for i in stops if self._at_roof_when_timed_again(i)]
        self.at_roof += [self.tasks[i].name for i in stops]
        return stops

    def _at_roof_when_timed_again(self, i: int) -> bool:
        """Whether task i's best trial, timed again (`retime_best`), is within the margin too.
        The best of hundreds of noisy timings is biased low: on Zen 3 two Dense kernels logged
        167 GFLOP/s against a 160 GFLOP/s peak and stopped after 68 trials, while timed again
        they ran 112-122. Timed once per best trial; one that cannot be timed does not stop."""
        task = self.tasks[i]
        if self.retime_best is None:
            return True
        logged, again = self.retimed.get(task.name, (None, None))
        if logged != task.best_s:
            logged, again = task.best_s, self.retime_best(i)
            self.retimed[task.name] = (logged, again)
        return again is not None and task.floor_s is not None and again <= task.floor_s * (1.0 + self.roof_margin)

    def held_back(self) -> dict[str, tuple[float, float | None]]:
        """The kernels whose best trial reached the roof margin as logged but not when timed
        again, and are still searched: name -> (logged, timed again) seconds."""
        return {name: pair for name, pair in self.retimed.items() if name not in self.at_roof}

    def roof_lines(self) -> list[str]:
        """What the roof rule did, for the run's log: the kernels it stopped, and those it kept
        searching because their best trial, timed again, was slower than logged."""
        def ms(seconds):
            return "could not be timed" if seconds is None else f"{seconds * 1e3:.3f} ms"

        lines = []
        if self.at_roof:
            lines.append(f"[tune] within {self.roof_margin:.0%} of the compute roof (sgemm peak "
                         f"{self.peak_flops / 1e9:.0f} GFLOP/s, the highest measured), no more trials: " + ", ".join(
                             f"{name} (best trial timed again: {ms(self.retimed[name][1])})" if name in self.retimed
                             else name for name in self.at_roof))
        if self.held_back():
            lines.append("[tune] searched on, their best trial at the roof as logged but not timed again: " + ", ".join(
                f"{name} ({ms(logged)} logged, {ms(again)} again)" for name, (logged, again) in self.held_back().items()))
        return lines

    def set_peak(self, flops: float) -> None:
        """Each kernel's compute roof at the highest sgemm peak measured so far."""
        self.peak_flops = max(flops, self.peak_flops or 0.0)
        for task in self.tasks:
            task.floor_s = task.flop / self.peak_flops if task.flop > 0 else None

    def end_reason(self) -> str | None:
        """Why the run ended before its budget (None when it did not): every kernel done."""
        if self.trials >= self.budget or self.stop_requested:
            return None
        parts = [f"{len(names)} {why}" for names, why in ((self.at_roof, "within the roof margin"),
                                                         (self.stalled, f"no gain in {STALL_BATCHES} batches"),
                                                         (self.capped, "at the per-kernel cap")) if names]
        return f"every kernel is done ({', '.join(parts) or 'none left'}) at {self.trials} of {self.budget} trials"

    def record(self, task_id: int, latencies: list[float | None], errors: list[str | None]) -> None:
        """One measured batch: update the task, append its trials to the file, move the bar."""
        task = self.tasks[task_id]
        now = round(self.elapsed(), 3)
        lines = []
        for latency, error in zip(latencies, errors):
            self.trials += 1
            self.new_trials += 1
            task.add_trial(latency)
            lines.append({"trial": self.trials, "t": now, "task": task.name, "latency_s": latency, "error": error})
        task.history.append(task.best_or_failed())
        append_jsonl(self.trials_file, lines)  # one write per batch
        self._show(len(latencies))

    def _show(self, n: int) -> None:
        if self.progress is None:
            return
        estimate = self.estimated_latency()
        tuned = sum(t.best_s is not None for t in self.tasks)
        self.progress.set_postfix_str(
            (f"est. {estimate * 1e3:.3f} ms/batch, " if estimate is not None else "")
            + f"{tuned}/{len(self.tasks)} kernels tuned", refresh=False)
        self.progress.total = max(self.progress.total, self.progress.n + n)  # the last batch is not cut
        self.progress.update(n)


def _error_kind(builder_result, runner_result) -> str | None:
    if builder_result.error_msg:
        return "build: " + str(builder_result.error_msg).strip().splitlines()[0][:200]
    if runner_result.error_msg:
        return "run: " + str(runner_result.error_msg).strip().splitlines()[0][:200]
    return None


@derived_object
class TrialRecorder(PyMeasureCallback):
    """Hands every measured batch to the session (trials file, best latencies, progress bar)."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        latencies, errors = [], []
        for built, ran in zip(builder_results, runner_results):
            error = _error_kind(built, ran)
            latencies.append(mean_seconds(ran.run_secs) if error is None else None)
            errors.append(error)
        self.session.record(int(task_id), latencies, errors)


@derived_object
class CommittingScheduler(PyTaskScheduler):
    """MetaSchedule's gradient-based task choice (alpha, window as in `GradientBased`), joining
    every finished batch first so its records are committed at once; unexplored tasks go in
    order of their untuned time per batch, so a small budget is spent where the time is."""

    def __init__(self, session: Session, alpha: float = 0.2, window: int = 3, seed: int | None = None) -> None:
        super().__init__()
        self.session = session
        self.alpha = alpha
        self.window = window
        self.random = random.Random(seed)

    def next_task_id(self) -> int:
        scheduler = self._outer()
        records = scheduler.tasks_
        for i in range(len(records)):
            scheduler.touch_task(i)  # joins a measured batch: callbacks commit it
        if self.session.trials >= self.session.budget or self.session.stop_requested:
            return -1
        self._stop_done(scheduler, records)
        alive = [i for i in range(len(records)) if not records[i].is_terminated]
        if not alive:
            self._say_why()
            return -1
        scores = {i: self._score(i) for i in alive}
        best = max(scores.values())
        tied = [i for i in alive if scores[i] == best]
        if best >= FAILED:  # still exploring: fewest batches first, then where the time goes
            return min(tied, key=lambda i: (len(self.session.tasks[i].history), -self.session.tasks[i].cost(), i))
        return tied[0] if len(tied) == 1 else self.random.choice(tied)

    def _stop_done(self, scheduler, records) -> None:
        """Terminate the kernels that need no more trials: at their roof, converged, capped."""
        session, cap = self.session, self.session.max_trials_per_task
        for i in session.roof_stops([i for i in range(len(records)) if not records[i].is_terminated]):
            scheduler.terminate_task(i)
        for i, task in enumerate(session.tasks):
            if records[i].is_terminated:
                continue
            if cap and task.trials >= cap:
                session.capped.append(task.name)
                scheduler.terminate_task(i)
            elif session.converge and task.stalled():
                session.stalled.append(task.name)
                scheduler.terminate_task(i)

    def _say_why(self) -> None:
        reason = self.session.end_reason()
        if reason and self.session.progress is not None:
            self.session.progress.set_postfix_str(f"ended early: {reason}", refresh=True)

    def _score(self, i: int) -> float:
        """The expected latency gain per trial of tuning task i further (TVM's formula)."""
        task = self.session.tasks[i]
        history, w = task.history, self.window
        if len(history) < w:
            return FAILED
        best = history[-1]
        if best >= FAILED:
            return -FAILED
        g1 = (history[-1 - w] - best) / w if len(history) > w else (history[0] - best) / w
        g2 = best / len(history)
        return (self.alpha * g1 + (1 - self.alpha) * g2) * task.weight
