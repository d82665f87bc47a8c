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
from dlrmlib.formats.tuning_log import RECORDS_FILE, UNTUNED_DB, read_tasks, snapshot_log
from dlrmlib.frontend.relax import NUM_INPUTS, front_passes
from dlrmlib.schedules.prepack import TRANSFORM, lift_weight_transforms


def tuned_pipeline(target: dict, database_dir: Path | None, prepack: bool, facts: dict):
    """The Relax pipeline for a build from a tuning log: the front passes, the database's best
    schedule for every kernel it knows, weight prepacking if asked, then the default CPU
    lowering. Records in `facts` how many kernels the log covered and, with prepacking, what
    `main_transform_params` computes."""
    import tvm  # deferred: TVM takes ~1.5 s to import
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

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
