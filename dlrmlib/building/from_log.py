"""Build from a tuning log: the Relax pipeline that applies the database's best schedule for
every kernel it knows (or the untuned kernel where that was faster), optionally with the
weights prepacked once (`main_transform_params`).

A log that a tuning run is still appending to is read through a snapshot of its complete
lines (dlrmlib.formats.tuning_log.snapshot_log), so a build never waits for tuning and never
reads half a record.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.tuning_log import RECORDS_FILE, UNTUNED_DB, check_dense_weights, read_tasks, snapshot_log
from dlrmlib.frontend.relax import NUM_INPUTS, front_passes
from dlrmlib.schedules import written_kernels
from dlrmlib.schedules.prepack import TRANSFORM, lift_weight_transforms


def tuned_pipeline(target: dict, database_dir: Path | None, prepack: bool, facts: dict,
                   written: tuple[frozenset[str], dict] | None = None):
    """The Relax pipeline for a build from a tuning log: with `written` (Dense kernels to use as
    written, knobs), the hand-written kernels first (dlrmlib.schedules.written_kernels: the
    gather + interaction, the narrow last layer, those Dense layers), then the front passes,
    the database's best schedule for every other kernel it knows, weight prepacking if asked,
    then the default CPU lowering. Records in `facts` how many kernels the log covered and,
    with prepacking, what `main_transform_params` computes."""
    import tvm  # deferred: TVM takes ~1.5 s to import
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    tvm_target = tvm.target.Target(target)

    @tvm.transform.module_pass(opt_level=0, name="dlrm_tuned_pipeline")
    def _pipeline(mod, _ctx):
        with tvm_target:
            if written is not None:
                mod = written_kernels(mod, target, written[0] if prepack else frozenset(), written[1])
            mod = _not_layout_free(tvm.transform.Sequential(front_passes(tvm_target, prepack))(mod))
            facts["written_kernels"] = _count_scheduled(mod)[1]
            if database_dir is not None:
                mod = relax.transform.MetaScheduleApplyDatabase(str(database_dir))(mod)
            facts["kernels"], scheduled = _count_scheduled(mod)
            facts["tuned_kernels"] = scheduled - facts["written_kernels"]
            if database_dir is not None and facts["tuned_kernels"] == 0:
                raise DlrmError("the tuning log has no record for any kernel of this model: it was tuned for "
                                "another model, batch size or weight layout (plain vs --prepack)")
            if prepack:
                mod = _beside_written(relax.transform.SplitLayoutRewritePreproc(), mod)
                mod, facts["plan"] = lift_weight_transforms(mod, NUM_INPUTS)
                mod = relax.transform.FoldConstant()(mod)
                facts["transform_id"] = _transform_id(mod)
            mod = tvm.transform.Sequential(cpu.dataflow_lower_passes(tvm_target)
                                           + cpu.finalize_passes(tvm_target))(mod)
        return mod

    return _pipeline


def _beside_written(apply, mod):
    """`apply(mod)` with the hand-written kernels set aside meanwhile: MetaSchedule's layout
    splitting checks every PrimFunc for a root block, which TVMScript kernels written as plain
    loops have not; it has nothing to do in them anyway."""
    import tvm  # deferred, as above
    from tvm import s_tir

    aside = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
             and not isinstance(f.body, s_tir.SBlockRealize)}
    kept = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv not in aside}, attrs=mod.attrs)
    out = apply(kept)
    for gv, func in aside.items():
        out[gv] = func
    return out


def _not_layout_free(mod):
    """The hand-written kernels (scheduled before the front passes) take their weights as they
    are (their packing is a call of its own, lifted like any weight transform): no layout is
    for MetaSchedule to rewrite, and its layout splitting would refuse them (no root block)."""
    import tvm  # deferred, as above

    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs and func.attrs.get("tirx.is_scheduled", False) \
                and "layout_free_buffers" in func.attrs:
            mod[gv] = func.without_attr("layout_free_buffers")
    return mod


def _transform_id(mod) -> str | None:
    """What `main_transform_params` computes (its IR and the kernels it calls), so that two
    libraries share a prepacked weights folder only when their transforms are the same: the
    tuned kernels choose the packed layouts, and two layouts can have the same shapes."""
    import tvm  # deferred, as above

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
    import tvm  # deferred, as above

    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    tuned = [f for f in funcs if f.attrs and f.attrs.get("tirx.is_scheduled", False)]
    return len(funcs), len(tuned)


def check_log_mode(folder: Path, prepack: bool) -> None:
    """A plain log cannot serve a prepacked build, nor the reverse: different kernels."""
    tasks = read_tasks(folder)
    if tasks is not None and bool(tasks.get("prepack")) != prepack:
        def said(prepacked):
            return "with" if prepacked else "without"

        def flag(prepacked):
            return "--prepack" if prepacked else "--no-prepack"

        raise DlrmError(f"the tuning log {folder} was tuned {said(tasks.get('prepack'))} weight prepacking, this "
                        f"build is {said(prepack)}: their kernels are different functions. Build with "
                        f"{flag(tasks.get('prepack'))}, or tune with {flag(prepack)} first")
    check_dense_weights(folder, tasks)


def add_untuned(folder: Path, snapshot: Path) -> int:
    """The untuned kernels (measured once per log by the tuner, `untuned/`) join the snapshot
    as candidates, so that a kernel whose best trial is slower keeps its untuned schedule.
    Returns how many records were added."""
    untuned = folder / UNTUNED_DB
    if not (untuned / RECORDS_FILE).is_file():
        return 0
    from tvm.s_tir import meta_schedule as ms  # deferred: MetaSchedule's import is heavy

    snapshot_log(untuned, snapshot / UNTUNED_DB)
    target = ms.database.JSONDatabase(work_dir=str(snapshot))
    records = ms.database.JSONDatabase(work_dir=str(snapshot / UNTUNED_DB),
                                       allow_missing=False).get_all_tuning_records()
    for record in records:
        target.commit_tuning_record(ms.database.TuningRecord(
            record.trace, target.commit_workload(record.workload.mod), record.run_secs, record.target,
            record.args_info))
    return len(records)
