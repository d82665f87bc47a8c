"""`dlrm tune --schedule custom`: the kernel-knob log is measured for real, resumes after a
kill, drives the custom build, and the logs shipped under logs/ are ones a build accepts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from workloads import dense_workload

from dlrmlib.core.errors import DlrmError

LOGS = Path(__file__).resolve().parent.parent / "logs"
NAME = "tiny-kernels"  # its own experiment: builds here must not become another test's latest build
FAST = 0.01  # seconds of timed work per candidate: enough to rank nothing, but every path runs


@pytest.fixture(scope="module")
def experiment(experiments_root):
    from dlrmlib.prepare import prepare

    return prepare(NAME, preset="tiny", batch_size=16, samples=64, root=experiments_root, log=lambda _: None)


def _tune(experiment, folder, passes: int = 2):
    from dlrmlib.tuning.kernels import tune_kernels

    return tune_kernels(experiment, log_dir=folder, log=lambda _: None, progress=False, min_seconds=FAST,
                        passes=passes)


def test_kernel_log_records_every_candidate_per_pass_and_resumes(experiment, tmp_path):
    import tvm

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules.knobs import LOG_FILE, read_log
    from dlrmlib.schedules.rewrite import vector_lanes
    from dlrmlib.tuning.kernels import candidates, model_kernels

    kernels = model_kernels(experiment)
    assert {k.kind for k in kernels} == {"dense", "narrow", "interaction"}
    interaction = next(k for k in kernels if k.kind == "interaction")
    assert len(interaction.table_params) == 26
    # the candidates follow the host's vector width (16 fp32 lanes with AVX-512, 8 with AVX2)
    lanes = vector_lanes(tvm.target.Target(host_target()))
    expected = sum(len(candidates(k, lanes)) for k in kernels)

    # Compiling each candidate is the time here: one pass first (every candidate once), and the
    # second pass measured by the resumed run below.
    _tune(experiment, tmp_path, passes=1)
    records = read_log(tmp_path)
    assert len(records) == expected  # every candidate, once per pass
    assert all(r["error"] is None and r["seconds"] > 0 for r in records)

    # A kill mid-run: half the records and a torn line survive; the rerun (two passes) measures
    # only the rest: the lost half of the first pass, then every candidate once more.
    path = tmp_path / LOG_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]) + '{"kernel": "dense_m16')
    _tune(experiment, tmp_path)
    again = read_log(tmp_path)
    assert len(again) == 2 * expected
    assert all(r["error"] is None and r["seconds"] > 0 for r in again)
    assert sorted((r["kernel"], json.dumps(r["config"], sort_keys=True)) for r in again) == \
        sorted(2 * [(r["kernel"], json.dumps(r["config"], sort_keys=True)) for r in records])

    _tune(experiment, tmp_path)  # nothing left to measure
    assert len(read_log(tmp_path)) == 2 * expected


def test_custom_build_takes_the_fastest_knobs_of_a_log(experiment, tmp_path):
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom
    from dlrmlib.formats.weights import read_manifest
    from dlrmlib.schedules.knobs import KNOBS_VERSION, append_record

    # A hand-made log whose winners are not the defaults: 64-wide panels, 2-row tiles, no prefetch;
    # a faster line of an older knobs version must not count.
    chosen = {"dense_m16_k367_n64_relu": {"bn": 64, "mr": 2, "parallel": True},
              "interaction_b16_d16_t26_ids": {"prefetch": 0, "locality": 3}}
    losers = {"dense_m16_k367_n64_relu": {"bn": 32, "mr": 8, "parallel": True},
              "interaction_b16_d16_t26_ids": {"prefetch": 4, "locality": 2}}
    for kernel, config in chosen.items():
        append_record(tmp_path, {"kernel": kernel, "config": config, "seconds": 1e-6, "knobs_version": KNOBS_VERSION})
        append_record(tmp_path, {"kernel": kernel, "config": losers[kernel], "seconds": 2e-6,
                                 "knobs_version": KNOBS_VERSION})
        append_record(tmp_path, {"kernel": kernel, "config": losers[kernel], "seconds": 1e-9,
                                 "knobs_version": KNOBS_VERSION - 1})
    result = build(experiment, Custom(tmp_path, "custom-knobs"), log=lambda _: None)
    assert result.verification["within_tolerance"]
    manifest = read_manifest(result.manifest)
    assert manifest["build"]["kernel_knobs"] == chosen
    packed = [p for p in manifest["params"] if p["name"].startswith("main_transform_params")]
    assert [1, 367, 64] in [p["shape"] for p in packed], "the 64-wide panel must reach the weights folder"


def test_build_from_an_empty_or_outdated_kernel_log_says_so(experiment, tmp_path):
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom
    from dlrmlib.schedules.knobs import KNOBS_VERSION, append_record

    with pytest.raises(DlrmError, match="holds no kernel log"):
        build(experiment, Custom(tmp_path, "nolog"), log=lambda _: None)
    append_record(tmp_path, {"kernel": "interaction_b16_d16_t26_ids", "config": {"prefetch": 2}, "seconds": 1e-6,
                             "knobs_version": KNOBS_VERSION - 1})
    with pytest.raises(DlrmError, match="measured with older kernels"):
        build(experiment, Custom(tmp_path, "oldlog"), log=lambda _: None)
    for bad in ({"bn": 33, "mr": 4}, {"tile": 8}, {"bn": "64"}):  # hand-edited lines
        append_record(tmp_path / "bad", {"kernel": "dense_m16_k367_n64_relu", "config": bad, "seconds": 1e-6,
                                         "knobs_version": KNOBS_VERSION})
        with pytest.raises(DlrmError, match="cannot build"):
            build(experiment, Custom(tmp_path / "bad", "badlog"), log=lambda _: None)
        (tmp_path / "bad" / "kernels.jsonl").unlink()
    # damaged times never win and never raise: text, NaN, negative, infinite, a boolean
    from dlrmlib.schedules.knobs import best_configs

    good = {"kernel": "dense_m16_k367_n64_relu", "config": {"bn": 32, "mr": 4}, "seconds": 2e-6,
            "knobs_version": KNOBS_VERSION}
    damaged = [{**good, "config": {"bn": 64, "mr": 2}, "seconds": bad}
               for bad in ("fast", float("nan"), -1.0, float("inf"), True, None, [1e-9])]
    assert best_configs(damaged + [good] + damaged) == {good["kernel"]: good["config"]}
    from dlrmlib.tuning.kernels import knob_table

    for record in damaged + [good]:
        append_record(tmp_path / "damaged", {**record, "shape": {"m": 16, "k": 367, "n": 64, "relu": True}})
    table = knob_table(tmp_path / "damaged")
    assert table["measurements"].tolist() == [1] and table["best knobs"].tolist() == [good["config"]]


@pytest.mark.parametrize("bn,mr", [(64, 2), (64, 4), (32, 4)])
def test_packed_dense_knobs_match_numpy(bn, mr):
    import tvm

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules.dense import DenseConfig, DenseShape, dense_func, pack_func, pack_name

    shape, config = DenseShape(8, 37, 128), DenseConfig(bn, mr, parallel=True)
    rng = np.random.default_rng(bn + mr)
    x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in ((8, 37), (128, 37), (128,)))
    target = tvm.target.Target(host_target())
    packed = tvm.runtime.empty((128 // bn, 37, bn), "float32", tvm.cpu())
    tvm.compile(tvm.IRModule({"p": pack_func(128, 37, bn)}), target=target)[pack_name(128, 37, bn)](
        tvm.runtime.tensor(w), packed)
    out = tvm.runtime.empty((8, 128), "float32", tvm.cpu())
    tvm.compile(tvm.IRModule({"d": dense_func(shape, 16, config)}), target=target)[shape.name](
        tvm.runtime.tensor(x), packed, tvm.runtime.tensor(b), out)
    np.testing.assert_allclose(out.numpy(), np.maximum(x @ w.T + b, 0), rtol=1e-5, atol=1e-5)


def test_shipped_kernel_logs_are_complete_and_usable():
    """Every shipped log: one folder per machine / preset / batch, only complete records of
    this project's kernels, and knobs a build accepts."""
    from dlrmlib.schedules.dense import DenseConfig
    from dlrmlib.schedules.int8_tiles import Int8Config, is_int8_kernel
    from dlrmlib.schedules.knobs import LOG_FILE, best_configs, current, read_log

    logs = sorted(LOGS.glob(f"*/*/b*/{LOG_FILE}"))
    assert logs, "no kernel log shipped under logs/"
    for path in logs:
        batch = int(path.parent.name.removeprefix("b"))
        records = current(read_log(path.parent))
        assert len(records) == len(path.read_text().splitlines()), f"{path}: a torn line or an outdated record"
        assert all(r["seconds"] and r["seconds"] > 0 for r in records), path
        for kernel, config in best_configs(records).items():
            assert f"_m{batch}_" in kernel or f"_b{batch}_" in kernel, (path, kernel)
            if kernel.startswith("dense"):
                DenseConfig(**config)
            elif is_int8_kernel(kernel):  # the int8 GEMMs' tiles (dlrm tune --schedule custom --precision int8)
                Int8Config(**config)
            else:
                assert set(config) == {"prefetch", "locality"}


@pytest.mark.parametrize("m, k, n, epilogue", [(16, 367, 64, "relu"), (16, 13, 32, "bias"), (12, 40, 48, "none")])
def test_every_sampled_hand_written_schedule_computes_the_dense_layer(m, k, n, epilogue):
    """The hand-written GEMM as a MetaSchedule design space: schedules sampled with different
    decisions (rows per tile, panel width, jobs, unrolling), postprocessed as the tuner does,
    all give numpy's answer, and so do the custom build's knobs given as decisions (AVX2's 6-row
    tiles too, where 6 does not divide the batch); a kernel it does not fit (N = 1) is left to the
    default rules."""
    import tvm
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules.dense import tallest_rows
    from dlrmlib.schedules.space import dense_shape, dense_space, written_decisions
    from dlrmlib.tuning.session import cpu_intrinsics_only

    cpu_intrinsics_only()  # a TuneContext imports every target's intrinsics otherwise (30-40 s)
    func = dense_workload(m, k, n, epilogue)
    assert dense_shape(tvm.IRModule({"main": func})) == (m, k, n)
    assert dense_shape(tvm.IRModule({"main": dense_workload(m, k, 1, "relu")})) is None
    target = tvm.target.Target(host_target())
    postprocs = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=target, space_generator="post-order-apply",
                               search_strategy="replay-trace").space_generator.postprocs
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype("float32") for s in ((m, k), (n, k), (n,)))
    expected = x @ w.T + (b if epilogue != "none" else 0)
    expected = np.maximum(expected, 0) if epilogue == "relu" else expected
    decisions = set()
    tall = tallest_rows(m, 16, 8)  # AVX2's tallest tile for a 16-wide panel: 6 rows, 16 % 6 cuts the last short
    written = {0: written_decisions(m, n, 2, 32, True) if n % 32 == 0 else None,
               9: written_decisions(m, n, tall, 16, False) if m % tall else None}
    for seed in [s for s in range(10) if s in range(1, 9) or written[s]]:  # 0, 9: the custom build's knobs
        sch = s_tir.Schedule(tvm.IRModule({"main": func}), seed=max(seed, 1))
        lanes = 8 if seed % 2 else 16  # AVX2's and AVX-512's spaces: their tallest tiles differ
        assert dense_space(sch, lanes, written.get(seed)) is not None
        if seed == 9:
            tiles = [sch.get(loop).extent for loop in sch.get_loops(sch.get_sblock("matmul_update"))[:2]]
            assert [int(t) for t in tiles] == [1, -(-m // tall) * (n // 16)], "not the cut-short 6 x 16 tiles"
        assert all(p.apply(sch) for p in postprocs)
        decisions.add(str([d for d in sch.trace.decisions.values()]))
        out = tvm.runtime.tensor(np.zeros((m, n), "float32"))
        args = [tvm.runtime.tensor(a) for a in ((x, w, b) if epilogue != "none" else (x, w))]
        tvm.compile(sch.mod, target=target)(*args, out)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert len(decisions) > 2, "the sampled schedules did not differ"


def test_sampled_concatenation_schedules_copy_every_embedding_in_place():
    """The interaction's concatenation (F inputs of (B, D) -> (B, F, D), one chain of selects
    per element as imported): the hand-written space copies input by input; every sampled
    schedule gives numpy's answer."""
    import tvm
    from tvm import s_tir, te, topi
    from tvm.s_tir import meta_schedule as ms

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules.space import concat_space, dense_shape, gather_concat_plan
    from dlrmlib.tuning.session import cpu_intrinsics_only

    cpu_intrinsics_only()
    b, d, n = 12, 16, 8
    inputs = [te.placeholder((b, d), "float32", name=f"e{i}") for i in range(n)]
    out = topi.reshape(topi.concatenate(inputs, axis=1), (b, n, d))
    mod = tvm.IRModule({"main": te.create_prim_func([*inputs, out])})
    assert gather_concat_plan(mod) is not None and dense_shape(mod) is None
    target = tvm.target.Target(host_target())
    postprocs = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                               search_strategy="replay-trace").space_generator.postprocs
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((b, d)).astype("float32") for _ in range(n)]
    for seed in (1, 2):
        sch = s_tir.Schedule(mod, seed=seed)
        concat_space(sch)
        assert all(p.apply(sch) for p in postprocs)
        result = tvm.runtime.tensor(np.zeros((b, n, d), "float32"))
        tvm.compile(sch.mod, target=target)(*[tvm.runtime.tensor(a) for a in arrays], result)
        np.testing.assert_array_equal(result.numpy(), np.stack(arrays, axis=1))


def test_int8_knobs_are_checked_and_kept_apart_from_fp32():
    """int8 GEMM records: their own knobs version (an fp32 record of version 1 is outdated, an
    int8 one current), their own knob names, tiles that do not fit the layer refused in one line."""
    from dlrmlib.schedules.dense import DenseShape
    from dlrmlib.schedules.int8_tiles import Int8Config, int8_gemm_func, int8_kernel_name
    from dlrmlib.schedules.knobs import INT8_KNOBS_VERSION, KNOBS_VERSION, best_configs, current

    shape = DenseShape(32, 70, 64)
    names = {isa: int8_kernel_name(shape, isa, "s16") for isa in ("avx2", "avx512_vnni", "amx_int8")}
    assert len(set(names.values()) | {shape.name}) == 4
    records = [{"kernel": names["avx2"], "config": {"mr": 2, "nb": 4, "parallel": None}, "seconds": 1e-6,
                "knobs_version": INT8_KNOBS_VERSION},
               {"kernel": shape.name, "config": {"bn": 64}, "seconds": 1e-6, "knobs_version": INT8_KNOBS_VERSION}]
    assert [r["kernel"] for r in current(records)] == ([names["avx2"]] if INT8_KNOBS_VERSION != KNOBS_VERSION else
                                                       [names["avx2"], shape.name])
    with pytest.raises(DlrmError, match="cannot build"):
        best_configs([{**records[0], "config": {"bn": 64}}])
    for isa, config in (("avx2", Int8Config(3, 1)), ("avx512_vnni", Int8Config(8, 4)), ("amx_int8", Int8Config(4, 1))):
        with pytest.raises(DlrmError, match="do not fit"):
            int8_gemm_func(shape, isa, "s16", config)
    for isa in ("avx512_vnni", "amx_int8"):  # written (not compiled) on any host
        assert int8_gemm_func(shape, isa, None, Int8Config(2, 1, False)) is not None
