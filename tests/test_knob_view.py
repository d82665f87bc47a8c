"""One tuning log holds every knob: every knob setting of the hand-written GEMM is a schedule of
its design space, a record of it reads back as the same knobs (other schedules as none), a
tuning run without a kernel log measures every candidate as its first trials and the
interaction's knobs into the same log, and `dlrm build --schedule custom` takes the fastest from
it. Real TVM, a real JSON database, a real (tiny) tuning run and build."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from workloads import dense_workload

NAME = "tiny-knob-view"  # its own experiment: its tuning log starts empty and has no kernel log


def _records(folder: Path) -> list:
    return [json.loads(line) for line in (folder / "database_tuning_record.json").read_text().splitlines()]


def _read_back(database, folder: Path, mod, trace) -> dict | None:
    """The knobs a record of `trace` says, committed to and read from a real JSON database."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from dlrmlib.schedules.space import knobs_of_trace

    database.commit_tuning_record(ms.database.TuningRecord(
        trace, database.commit_workload(mod), [1.0], tvm.target.Target("llvm"), ArgInfo.from_prim_func(mod["main"])))
    return knobs_of_trace(_records(folder)[-1][1][0])


@pytest.mark.parametrize("m, k, n", [(128, 64, 128), (16, 13, 64), (12, 40, 48)])
def test_every_knob_candidate_is_a_schedule_whose_record_reads_back_as_its_knobs(m, k, n, tmp_path):
    import tvm
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules.dense import DenseConfig, DenseShape
    from dlrmlib.schedules.knobs import dense_candidates
    from dlrmlib.schedules.space import dense_space, written_decisions
    from dlrmlib.tuning.session import cpu_intrinsics_only

    cpu_intrinsics_only()
    mod = tvm.IRModule({"main": dense_workload(m, k, n, "relu")})
    layer = DenseShape(m, k, n)
    database = ms.database.JSONDatabase(work_dir=str(tmp_path))
    for lanes in (8, 16):  # AVX2's candidates (16-wide panels, 6-row cut-short tiles) and AVX-512's
        for config in (DenseConfig(**c) for c in dense_candidates(layer, lanes)):
            mr, parallel = config.rows(layer, lanes), bool(config.threads(layer))
            sch = s_tir.Schedule(mod, debug_mask="all")
            if dense_space(sch, lanes, written_decisions(m, n, mr, config.bn, parallel)) is None:
                # the one exception: a cut-short tile over a single panel (TVM's verifier rejects it)
                assert m % mr and n == config.bn, f"the space cannot say {config} on {lanes} lanes"
                continue
            tiles = -(-m // mr) * (n // config.bn)  # one tile: one thread either way
            assert _read_back(database, tmp_path, mod, sch.trace) == {
                "bn": config.bn, "mr": mr, "parallel": parallel and tiles > 1}

    # schedules the custom build has no knobs for read as none: the default rules', explicit
    # unrolling, tiles split between one thread and one job each
    context = ms.TuneContext(mod=mod, target=tvm.target.Target(host_target()), space_generator="post-order-apply",
                             search_strategy="replay-trace")
    default = context.space_generator.generate_design_space(mod)
    assert default and all(_read_back(database, tmp_path, mod, s.trace) is None for s in default)
    tiles = -(-m // 4) * (n // 16)
    for decisions in ({"unroll": 1}, {"jobs": [2, tiles // 2]} if tiles % 2 == 0 else {"unroll": 2}):
        sch = s_tir.Schedule(mod, debug_mask="all")
        assert dense_space(sch, 16, {**written_decisions(m, n, 4, 16, True), **decisions}) is not None
        assert _read_back(database, tmp_path, mod, sch.trace) is None, decisions


def test_one_tuning_log_holds_every_knob_and_the_custom_build_takes_the_fastest(experiments_root, tmp_path):
    """No kernel log: the tuning run measures the interaction's knobs into its own log, every
    Dense knob candidate is a first trial, and both builds read their knobs from that log."""
    import tvm

    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom
    from dlrmlib.core.machine import precision_isa
    from dlrmlib.core.target import host_target
    from dlrmlib.formats.tuning_log import KNOBS_FILE, read_trials, read_written, tuning_log_dir, written_choice
    from dlrmlib.formats.weights import read_manifest
    from dlrmlib.prepare import prepare
    from dlrmlib.schedules.knobs import default_kernel_log, dense_candidates, kernel_configs, read_log, tuning_log_knobs
    from dlrmlib.schedules.rewrite import vector_lanes
    from dlrmlib.tuning.kernels import PASSES, candidates, model_kernels
    from dlrmlib.tuning.metaschedule import tune

    experiment = prepare(NAME, preset="tiny", batch_size=16, samples=64, root=experiments_root, log=lambda _: None)
    lanes = vector_lanes(tvm.target.Target(host_target()))
    kernels = model_kernels(experiment)
    dense = [k.shape for k in kernels if k.kind == "dense"]
    interaction = next(k for k in kernels if k.kind == "interaction")
    seeds = sum(len(dense_candidates(layer, lanes)) for layer in dense)

    # one trial per kernel beyond the seeds: the Dense kernels are done after their first trials
    tune(experiment, trials=seeds + 8, max_trials_per_task=1, trials_per_batch=4, progress=False, log=lambda _: None)
    log_dir = tuning_log_dir(experiment, prepack=True)
    assert default_kernel_log(experiment) is None, "the run wrote a second log"
    # the knobs MetaSchedule cannot time: every interaction candidate, on the experiment's tables, in the log
    measured = read_log(log_dir)
    assert {r["kind"] for r in measured} == {"interaction"}
    assert len(measured) == PASSES * len(candidates(interaction, lanes)) > PASSES
    assert all(r["seconds"] > 0 for r in measured)
    fastest = kernel_configs(log_dir)[interaction.name]
    first = [t for t in read_trials(log_dir) if t.get("error") is None]
    assert len(first) >= seeds
    # a kernel's seeds are one batch of its search (one step of its history): counted one by one,
    # a kernel whose first seed was its fastest "converged" before any search batch
    seeded = read_trials(log_dir)[:seeds]
    assert len({(t["task"], t["t"]) for t in seeded}) == len({t["task"] for t in seeded}) == len(dense)
    view = tuning_log_knobs(log_dir)
    assert set(view) == {layer.name for layer in dense}, "a Dense layer's knobs are missing from the tuning log"
    for layer in dense:
        assert view[layer.name]["bn"] in {c["bn"] for c in dense_candidates(layer, lanes)}
    # the hand-written kernels the duel and a tuned build use: the fastest knobs, not the defaults
    written = read_written(log_dir)
    assert written["dense"] and all(entry["knobs"] == view[entry["kernel"]] for entry in written["dense"].values())
    assert written["fixed"][interaction.name]["knobs"] == fastest == written_choice(log_dir)[1][interaction.name]

    result = build(experiment, Custom(), log=lambda _: None)
    manifest = read_manifest(result.manifest)
    assert manifest["build"]["knobs_from_tuning_log"] == sorted([*view, interaction.name])
    assert manifest["build"]["kernel_knobs"] == {**view, interaction.name: fastest}
    assert result.verification["max_abs_error"] < 1e-4
    # a resumed run measures no knob twice; with int8, it adds the int8 GEMMs' tiles to the same log
    int8 = ("int8",) if precision_isa("int8") else ()
    tune(experiment, trials=seeds + 12, max_trials_per_task=2, trials_per_batch=4, progress=False, log=lambda _: None,
         kernel_precisions=("fp32", *int8), knob_seconds=0.02)
    assert [r for r in read_log(log_dir) if r["kind"] == "interaction"] == measured
    if int8:
        tiles = {k.name for k in model_kernels(experiment, "int8") if k.kind == "int8"}
        assert tiles and tiles <= set(kernel_configs(log_dir)), "an int8 GEMM's tiles are missing from the log"
    # an explicit kernel log says which knobs to use: the tuning log does not fill in
    (tmp_path / "knobs").mkdir()
    (tmp_path / "knobs" / KNOBS_FILE).write_text((log_dir / KNOBS_FILE).read_text())
    explicit = build(experiment, Custom(kernel_log=tmp_path / "knobs"), log=lambda _: None)
    assert read_manifest(explicit.manifest)["build"]["knobs_from_tuning_log"] == []
    # the same tag, other knobs, one process: the second library is the one packed and checked
    assert explicit.verification["max_abs_error"] < 1e-4

    # a damaged log loses only what is damaged: a trace not as MetaSchedule writes them, a
    # workload TVM cannot read back; the rest still reads, nothing raises
    damaged = tmp_path / "damaged"
    shutil.copytree(log_dir, damaged)
    lines = (damaged / "database_tuning_record.json").read_text().splitlines()
    first = json.loads(lines[0])
    first[1][0] = [[["SampleCategorical", [], "not attributes", ["v0"]]], [[0, 7]]]
    workloads = (damaged / "database_workload.json").read_text().splitlines()
    hit = json.loads(workloads[first[0]])
    workloads[first[0]] = json.dumps([hit[0], "bm90IGEgbW9kdWxl"])  # base64 of "not a module"
    (damaged / "database_tuning_record.json").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    (damaged / "database_workload.json").write_text("\n".join(workloads) + "\n")
    survived = tuning_log_knobs(damaged)
    assert survived and set(survived) < set(view)
    assert all(knobs == view[name] for name, knobs in survived.items())
