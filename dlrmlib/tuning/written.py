"""The hand-written kernels in a tuning log: measured once per log, like a trial.

The tuned build uses some kernels as written (dlrmlib.schedules.written_kernels): the fused
gather + interaction + concatenation and the narrow last layer, which are no MetaSchedule task,
and, per Dense layer, the hand-written packed GEMM wherever it beat every trial. So that the
curve, the scheduler and the build compare them with the trials on equal terms, each is timed by
the tuning run's own builder and runner (same evaluator, cache flushed), and kept in
`written.json`; the GEMM's knobs are the custom build's (the experiment's kernel log, or the
defaults).
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.files import write_json
from dlrmlib.core.machine import precision_isa
from dlrmlib.formats.tuning_log import WRITTEN_FILE, read_written, written_wins
from dlrmlib.schedules import written_kernels
from dlrmlib.schedules.dense import DenseConfig, DenseShape, dense_func, row_block
from dlrmlib.schedules.knobs import default_kernel_log, dense_candidates, kernel_configs, tuning_log_knob_records
from dlrmlib.schedules.rewrite import vector_lanes
from dlrmlib.schedules.space import dense_shape, dense_space, written_decisions
from dlrmlib.tuning import session as ts
from dlrmlib.tuning.kernels import MS_UNTUNED, measure_knobs
from dlrmlib.tuning.kernels import PRECISIONS as KNOB_PRECISIONS


def kernel_knobs(experiment, log_dir: Path | None = None) -> dict:
    """The hand-written kernels' knobs per kernel name: the experiment's kernel log (`dlrm tune
    --schedule custom`), overridden by the knob records in the tuning log `log_dir` (those its
    run measured, `measure_untimed_knobs`); none where neither has a kernel."""
    knobs = {}
    for folder in (default_kernel_log(experiment), log_dir):
        if folder is not None:
            knobs.update(kernel_configs(Path(folder), log=lambda _: None, required=False))
    return knobs


def check_knob_step(precisions: tuple[str, ...], seconds: float) -> None:
    """A clear error, before a run starts, for knob precisions it cannot measure (unknown, or
    int8 on a CPU without int8 kernels) and a nonsense time per candidate."""
    if not set(precisions) <= set(KNOB_PRECISIONS):
        raise DlrmError(f"kernel_precisions must be among {', '.join(KNOB_PRECISIONS)}, got {precisions!r}")
    if "int8" in precisions and precision_isa("int8") is None:
        raise DlrmError("this CPU has no int8 kernels (they need AVX2 at least): tune without --precision int8")
    if not (isinstance(seconds, (int, float)) and 0 < seconds < 60):
        raise DlrmError(f"knob_seconds must be a time in seconds (above 0, under 60), got {seconds!r}")


def measure_untimed_knobs(experiment, folder: Path, precisions: tuple[str, ...], seconds: float, rpc, progress: bool,
                          log) -> None:
    """The knobs MetaSchedule's runner cannot time as the kernels run, measured by the knob
    tuner into the tuning log's own kernels.jsonl, resumably (what it holds is not measured
    again): the interaction's prefetch distance and cache level, on the experiment's tables and
    test-data ids (on random ids the rows come from cache and every distance looks alike), and,
    for `precisions` with int8, the int8 GEMMs' register tiles. Not over RPC: the tables are
    here, and a time taken here says nothing about the servers."""
    if rpc is not None:
        log("[tune] measuring on RPC servers: the interaction's prefetch knobs are not measured (they are timed on "
            "the experiment's tables, on this machine); the kernel log's or the default knobs are used")
        return
    for precision in precisions:
        measure_knobs(experiment, folder, log, progress, seconds, precision=precision, kinds=MS_UNTUNED)


def with_written(target: dict, knobs: dict, keep: dict):
    """The `before` step of task extraction: the hand-written kernels the tuned build always
    uses (gather + interaction, narrow last layer) put in; the module is kept in `keep`."""

    def before(mod):
        keep["mod"] = written_kernels(mod, target, frozenset(), knobs)
        return keep["mod"]

    return before


def dense_kernel(task, target, knobs: dict, prepack: bool):
    """(kernel name, knobs, PrimFunc) of the hand-written packed GEMM for a Dense task, or None
    (not a Dense kernel, a width the panels do not divide, or plain weights: the GEMM reads
    packed weights, which only a prepacked build lays out once)."""
    import tvm

    shape = dense_shape(task.dispatched[0])
    if shape is None or not prepack:
        return None
    m, k, n = shape
    layer = DenseShape(m=m, k=k, n=n, relu="relu" in task.task_name)
    config = DenseConfig(**knobs.get(layer.name, {}))
    if layer.narrow or not layer.packable(config.bn):
        return None
    func = dense_func(layer, vector_lanes(tvm.target.Target(target)), config)
    return layer.name, {**knobs.get(layer.name, {})}, func


def measure_written(folder: Path, tasks: list, module, target: dict, knobs: dict, prepack: bool, builder, runner,
                    log) -> dict:
    """`written.json`, measured now if the log has none: every Dense task's packed GEMM and the
    kernels used as written (the PrimFuncs marked scheduled in `module`)."""
    import tvm

    known = read_written(folder)
    if (folder / WRITTEN_FILE).is_file():
        return known
    dense = {t.task_name: dense_kernel(t, target, knobs, prepack) for t in tasks}
    dense = {name: made for name, made in dense.items() if made is not None}
    fixed = {gv.name_hint: f for gv, f in module.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled", False)
             and not gv.name_hint.startswith("pack_")}  # packing runs once, at build time
    funcs = [made[2] for made in dense.values()] + list(fixed.values())
    log(f"[tune] timing {len(funcs)} hand-written kernels once ({len(dense)} packed GEMMs, "
        f"{len(fixed)} used as written: {', '.join(fixed)})")
    mods = [tvm.IRModule({"main": f.with_attr("global_symbol", "main")}) for f in funcs]
    latencies = ts.measure_untuned(mods, tvm.target.Target(target), builder, runner)
    written = {"dense": {task: {"kernel": made[0], "knobs": made[1], "latency_s": latency}
                         for (task, made), latency in zip(dense.items(), latencies)},
               "fixed": {name: {"latency_s": latency, "weight": 1, "knobs": knobs.get(name)}
                         for name, latency in zip(fixed, latencies[len(dense):])}}
    write_json(folder / WRITTEN_FILE, written)
    return written


def seed_candidates(contexts: list, tasks: list, session, target: dict, knobs: dict, budget: int) -> list:
    """(task index, schedule) of the hand-written space with the custom build's decisions
    (dlrmlib.schedules.space.written_decisions), postprocessed as the search would, for each
    Dense task without a trial yet: the kernel log's knobs where it has the layer, else every
    knob candidate the knob tuner would measure (dlrmlib.schedules.knobs.dense_candidates), so
    that the tuning log holds the knob measurements (`knobs.tuning_log_knobs` reads them back for
    the custom build) and the evolutionary search starts from the hand-written kernels rather
    than from random samples. Taken in turns across the kernels, at most `budget`."""
    import tvm

    lanes = vector_lanes(tvm.target.Target(target))
    per_task = []
    for i, (context, task, state) in enumerate(zip(contexts, tasks, session.tasks)):
        shape = dense_shape(task.dispatched[0])
        if shape is None or state.trials:
            continue
        m, k, n = shape
        layer = DenseShape(m=m, k=k, n=n, relu="relu" in task.task_name)
        configs = [knobs[layer.name]] if layer.name in knobs else dense_candidates(layer, lanes)
        made = [_seed(context, layer, DenseConfig(**config), lanes) for config in configs]
        per_task.append([(i, sch) for sch in made if sch is not None])
    in_turns = [seed for turn in itertools.zip_longest(*per_task) for seed in turn if seed is not None]
    return in_turns[:max(0, budget)]


def _seed(context, layer: DenseShape, config: DenseConfig, lanes: int):
    """The hand-written space with one knob setting as its decisions, postprocessed; None where
    the space cannot say those knobs (the duel still runs the kernel log's)."""
    from tvm import s_tir

    if layer.narrow or not layer.packable(config.bn):
        return None
    mr = config.mr or row_block(layer.m, lanes)
    sch = s_tir.Schedule(context.mod, debug_mask="all")
    if dense_space(sch, lanes, written_decisions(layer.m, layer.n, mr, config.bn, config.threads(layer))) is None:
        return None
    sch.enter_postproc()  # as the search does: a replay of the trace drops what follows
    return sch if all(p.apply(sch) for p in context.space_generator.postprocs) else None


def measure_seeds(seeds: list, contexts: list, session, folder: Path, target, builder, runner, log) -> None:
    """Build and time the seed schedules like trials, commit them to the database and the
    trials file (each kernel's first trial)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    if not seeds:
        return
    kernels = len({i for i, _ in seeds})
    log(f"[tune] first trials: {len(seeds)} schedules of the hand-written space for {kernels} Dense kernels (the "
        "kernel log's knobs, or every knob candidate for a layer it does not have)")
    built = builder.build([BuilderInput(sch.mod, target) for _, sch in seeds])
    args = [ArgInfo.from_entry_func(sch.mod, remove_preproc=True) for _, sch in seeds]
    ready = [j for j, b in enumerate(built) if b.error_msg is None]
    ran = dict(zip(ready, runner.run([RunnerInput(built[j].artifact_path, "cpu", args[j]) for j in ready])))
    database = ms.database.JSONDatabase(work_dir=str(folder))
    # a kernel's seeds are one batch (committed together, one history step): counted one by one,
    # a kernel whose first seed was its fastest knobs "converged" before any search
    for i in dict.fromkeys(i for i, _ in seeds):
        latencies, errors = [], []
        for j in (j for j, (k, _) in enumerate(seeds) if k == i):
            result = ran[j].result() if j in ran else None
            error = built[j].error_msg or (result.error_msg if result is not None else None)
            latency = ts.mean_seconds(result.run_secs) if error is None else None
            # failed too, as MetaSchedule commits them: the trials file numbers trials by record
            database.commit_tuning_record(ms.database.TuningRecord(
                seeds[j][1].trace, database.commit_workload(contexts[i].mod),
                [latency if latency is not None else 1e10], target, args[j]))
            latencies.append(latency)
            errors.append(None if error is None else "seed: " + str(error).splitlines()[0][:200])
            if built[j].artifact_path:
                shutil.rmtree(Path(built[j].artifact_path).parent, ignore_errors=True)
        session.record(i, latencies, errors)


def adopt_measured_knobs(folder: Path, knobs: dict, session, log) -> None:
    """After the first trials: each Dense layer the kernel log has no knobs for takes, as its
    hand-written kernel in `written.json`, the fastest knobs those trials measured (with their
    time), so that the scheduler, the duel and a build weigh the best hand-written kernel
    against the search, not the default knobs (which cost a build from the 3000-trial log on
    Zen 3 0.88x the custom build: the two largest layers kept the default tiles)."""
    written = read_written(folder)
    measured = tuning_log_knob_records(folder)
    adopted = []
    for task, entry in written.get("dense", {}).items():
        name = entry["kernel"]
        if name in knobs or name not in measured or entry.get("knobs") == measured[name][1]:
            continue
        entry["latency_s"], entry["knobs"] = measured[name]
        entry.pop("duel", None)  # a duel of other knobs
        adopted.append(task)
        for state in session.tasks:
            if state.name == task:
                state.written_s = entry["latency_s"]
    if adopted:
        write_json(folder / WRITTEN_FILE, written)
        log(f"[tune] the hand-written GEMM of {len(adopted)} Dense layers takes the fastest knobs of its first trials")


DUEL_ROUNDS = 3  # alternating timings of each pair; the median of each side decides


def duel(folder: Path, contexts: list, tasks: list, session, target: dict, builder, runner, log) -> None:
    """At the end of a run, each Dense layer's hand-written GEMM and its best trial timed side by
    side (alternating, DUEL_ROUNDS times, the run's builder and runner), into `written.json`'s
    `duel`, by which a build chooses between them (formats.tuning_log.written_choice). Without
    it the choice compared a minimum over many noisy trials with one timing of the hand-written
    kernel taken at the start: on a loaded Zen 3 that picked the trial for 5 of 6 layers and the
    build came out at 0.77x the custom build, whose kernels those were."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    written = read_written(folder)
    database = ms.database.JSONDatabase(work_dir=str(folder))
    tvm_target = tvm.target.Target(target)
    pairs = []
    for context, task, state in zip(contexts, tasks, session.tasks):
        entry = written["dense"].get(task.task_name)
        made = entry and dense_kernel(task, target, {entry["kernel"]: entry.get("knobs", {})}, prepack=True)
        best = database.query_ir_module(context.mod, tvm_target, "main") if made and state.trials else None
        if best is not None and state.best_s is not None:
            pairs.append((task.task_name, state.best_s,
                          tvm.IRModule({"main": made[2].with_attr("global_symbol", "main")}), best))
    if not pairs:
        return
    latencies = ts.measure_alternating([m for _, _, w, t in pairs for m in (w, t)], tvm_target, builder, runner,
                                       DUEL_ROUNDS)
    for j, (task, logged, _, _) in enumerate(pairs):
        mine, theirs = latencies[2 * j], latencies[2 * j + 1]
        # `best_trial_logged_s`: a later trial faster than this makes the duel stale
        written["dense"][task]["duel"] = {"written_s": mine, "trial_s": theirs, "rounds": DUEL_ROUNDS,
                                          "best_trial_logged_s": logged}
    write_json(folder / WRITTEN_FILE, written)
    kept = sum(1 for d in written["dense"].values() if "duel" in d and written_wins(d["duel"]))
    log(f"[tune] side by side ({DUEL_ROUNDS} rounds each): the hand-written GEMM beat the best trial in {kept} of "
        f"{len(pairs)} Dense layers; a build uses the faster of each pair")
