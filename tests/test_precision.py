"""Reduced-precision builds (`dlrm build --precision bf16|int8`): the kernels against numpy, the
manifest and weights folder they write, both runners on them, and the accuracy gate, including
a build it refuses."""

import numpy as np
import pytest

from dlrmlib.backends import predict_all
from dlrmlib.backends.tvm import TvmBackend
from dlrmlib.building.native import infer
from dlrmlib.cli.main import main
from dlrmlib.core.machine import cpu_flags, precision_isa
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.weights import manifest_weights_dir, read_manifest
from dlrmlib.schedules.dense import DenseShape

SAMPLES = 2048  # AUC over 64 samples moves by more than the 0.1 % the gate allows
needs_int8 = pytest.mark.skipif(precision_isa("int8") is None,
                                reason="int8 kernels need AVX2 (or AVX512-VNNI, AMX), which this host's CPU lacks")
needs_vnni = pytest.mark.skipif(precision_isa("int8") not in ("avx512_vnni", "amx_int8"),
                                reason="the VNNI kernel needs AVX512-VNNI, which this host's CPU lacks")


@pytest.fixture(scope="session")
def experiment(experiments_root):
    from dlrmlib.prepare import prepare

    return prepare("precision", preset="tiny", batch_size=16, samples=SAMPLES, root=experiments_root,
                   log=lambda _: None)


def _build(experiment, precision: str):
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom

    return build(experiment, Custom(tag=f"custom_{precision}", precision=precision), log=lambda _: None)


@pytest.fixture(scope="session")
def int8_build(experiment):
    if precision_isa("int8") is None:
        pytest.skip("int8 kernels need AVX2 (or AVX512-VNNI, AMX), which this host's CPU lacks")
    return _build(experiment, "int8")


def _compile(funcs: dict, target: dict):
    import tvm

    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    return tvm.compile(mod, target=tvm.target.Target(target))


AMX = "amx_int8" in cpu_flags() and precision_isa("int8") == "amx_int8"


@pytest.mark.parametrize("isa", ["avx512_vnni", pytest.param("amx_int8", marks=pytest.mark.skipif(
    not AMX, reason="the AMX kernel needs amx_int8 (and Linux's tile state), which this host lacks"))])
@needs_vnni
def test_int8_kernels_equal_their_numpy_emulation(isa):
    """Quantisation, packing and the VNNI or AMX GEMM against the same arithmetic in numpy: the
    int32 products exactly, the dequantised result to fp32 rounding; and within int8 noise of fp32."""
    import tvm

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules import amx, reduced

    m = 8 if isa == "avx512_vnni" else 32  # AMX: whole 16-row tiles
    shape = DenseShape(m=m, k=37, n=48, relu=False)  # K not a multiple of 4, N three 16-wide panels
    kp = reduced.padded_k(shape.k, amx.K_STEP if isa == "amx_int8" else 4)
    gemm = amx.amx_int8_dense_func(shape) if isa == "amx_int8" else reduced.int8_dense_func(shape)
    target = {**host_target(), **({"mattr": amx.MATTR} if isa == "amx_int8" else {})}
    lib = _compile({"q": reduced.quantize_rows_func(m, 37, kp, False), "g": gemm,
                    "p": reduced.int8_pack_func(48, 37, kp), "s": reduced.int8_scale_func(48, 37, kp),
                    "c": reduced.int8_colsum_func(48, 37, kp)}, target)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((m, 37)).astype(np.float32), rng.standard_normal((48, 37)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    t = tvm.runtime.tensor
    xq, xs, xz = t(np.zeros((m, kp), np.uint8)), t(np.zeros(m, np.float32)), t(np.zeros(m, np.int32))
    wq, ws, wsum = t(np.zeros((3, kp // 4, 64), np.int8)), t(np.zeros(48, np.float32)), t(np.zeros(48, np.int32))
    out = t(np.zeros((m, 48), np.float32))
    lib["q"](t(x), xq, xs, xz)
    for name, result in (("p", wq), ("s", ws), ("c", wsum)):
        lib[name](t(w), result)
    lib["g"](xq, xs, xz, wq, ws, wsum, t(b), out)

    scale = np.abs(w).max(axis=1) / 127
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int64)
    assert np.allclose(ws.numpy(), scale) and (wsum.numpy() == q.sum(axis=1)).all()
    unpacked = wq.numpy().reshape(3, kp // 4, 16, 4).transpose(0, 2, 1, 3).reshape(48, kp)
    assert (unpacked[:, :37] == q).all() and (unpacked[:, 37:] == 0).all()
    xq_, xz_ = xq.numpy().astype(np.int64), xz.numpy().astype(np.int64)
    assert np.abs((xq_[:, :37] - xz_[:, None]) * xs.numpy()[:, None] - x).max() <= xs.numpy().max() * 0.51
    assert (xq_[:, 37:] == 0).all()
    expected = ((xq_[:, :37] - xz_[:, None]) @ q.T) * (xs.numpy()[:, None] * scale[None, :]) + b
    assert np.allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(out.numpy() - (x @ w.T + b)).max() < 0.05 * np.abs(x @ w.T).max()


@needs_int8
def test_int8_build_passes_the_gate_and_records_it(experiment, int8_build):
    manifest = read_manifest(int8_build.manifest)
    precision = manifest["precision"]
    assert precision["name"] == "int8" and precision["isa"] == precision_isa("int8")
    assert precision["quantization"]["layers"] and precision["quantization"]["calibration_samples"] == 0
    assert set(precision["quantization"]["layers"].values()) == {precision["isa"]}  # batch 16: whole AMX tiles
    accuracy = precision["accuracy"]
    assert accuracy["passed"] and accuracy["auc_ratio"] >= 0.999 and accuracy["samples"] == SAMPLES - 256
    assert accuracy["calibration_samples"] == 256  # the first 256 samples score nothing
    assert 0 < accuracy["max_abs_diff"] < 0.05
    assert accuracy["auc_ratio"] == pytest.approx(accuracy["auc"] / accuracy["reference_auc"])
    dtypes = {p["dtype"] for p in manifest["params"]}
    assert {"int32", "float32"} <= dtypes and dtypes & {"int8", "int16"}  # AVX2's default kernels: int16 operands
    # Its own layout id, and the tables linked from the plain folder, not converted or copied.
    plain = read_manifest(experiment.manifest_path("custom")) if experiment.manifest_path("custom").is_file() else None
    folder = manifest_weights_dir(int8_build.manifest, manifest)
    tables = [p for p in manifest["params"] if p["name"].startswith("emb")]
    assert tables and all(p["dtype"] == "float32" for p in tables)
    assert all((folder / p["file"]).stat().st_nlink >= 2 for p in tables)
    assert plain is None or plain["weights"]["layout_id"] != manifest["weights"]["layout_id"]


@needs_int8
def test_both_runners_run_the_int8_build(experiment, int8_build):
    data = read_test_data(experiment.testdata_dir)
    python = predict_all(TvmBackend(int8_build.manifest), data.dense, data.sparse)
    assert np.abs(python - data.reference).max() == pytest.approx(
        read_manifest(int8_build.manifest)["precision"]["accuracy"]["max_abs_diff"])
    native = infer(experiment, int8_build.manifest, log=lambda _: None, iterations=1)
    assert native["max_abs_error"] == pytest.approx(np.abs(python - data.reference).max(), abs=1e-6)
    assert native["auc"] == pytest.approx(int8_build.verification["auc"])  # both over every sample


def test_bf16_build_passes_the_gate_and_runs_natively(experiment):
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom

    lines = []
    result = build(experiment, Custom(tag="custom_bf16", precision="bf16"), log=lines.append)
    check = next(line for line in lines if line.startswith("[verify]"))
    assert "tolerance inf" not in check and "gated on AUC" in check and "256-sample calibration slice" in check
    manifest = read_manifest(result.manifest)
    assert manifest["precision"]["name"] == "bf16" and manifest["precision"]["accuracy"]["passed"]
    assert manifest["precision"]["isa"] == precision_isa("bf16")  # amx_bf16 where the host has it
    assert manifest["precision"]["accuracy"]["max_abs_diff"] < 1e-2
    assert "uint16" in {p["dtype"] for p in manifest["params"]}
    native = infer(experiment, result.manifest, log=lambda _: None, iterations=1)
    assert native["auc"] == pytest.approx(result.verification["auc"])  # both over every sample


@needs_int8
def test_a_build_below_the_gate_is_refused_with_its_figures(experiment, capfd):
    """An absurd gate (AUC 1.5x the reference's): refused, the figures said, nothing left behind."""
    status = main(["build", "--experiment", experiment.name, "--precision", "int8", "--tag", "refused",
                   "--min-auc-ratio", "1.5"])
    err = capfd.readouterr().err
    assert status == 2
    assert "refused by the accuracy gate" in err and "x the fp32 reference's" in err and "largest score" in err
    assert not experiment.manifest_path("refused").exists() and not experiment.library_path("refused").exists()


def test_bad_precision_options_are_one_line_errors(experiment, capfd, monkeypatch):
    monkeypatch.setenv("DLRM_IN_CHILD", "1")  # checked in this process: no child per command (seconds of imports)
    assert main(["build", "--experiment", experiment.name, "--precision", "bf16", "--no-verify"]) == 2
    assert "accuracy gate" in capfd.readouterr().err
    assert main(["build", "--experiment", experiment.name, "--precision", "int8", "--schedule", "default"]) == 2
    assert "hand-written kernels" in capfd.readouterr().err
    assert main(["build", "--experiment", experiment.name, "--precision", "bf16", "--min-auc-ratio", "0"]) == 2
    assert "--min-auc-ratio" in capfd.readouterr().err


def test_instruction_set_follows_the_cpu_flags():
    zen3 = ["avx", "avx2", "fma"]
    zen4 = zen3 + ["avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
    emerald_rapids = zen4 + ["amx_tile", "amx_int8", "amx_bf16"]
    assert precision_isa("int8", zen3) == "avx2" and precision_isa("int8", zen4) == "avx512_vnni"
    assert precision_isa("int8", ["avx", "sse4_2"]) is None
    assert precision_isa("int8", emerald_rapids) == "amx_int8"
    assert precision_isa("fp32", zen3) == "avx2" and precision_isa("fp32", zen4) == "avx512f"
    assert precision_isa("bf16", zen3).endswith("avx2 fp32 FMA")
    assert precision_isa("fp32") == precision_isa("fp32", cpu_flags())


@pytest.mark.skipif(not AMX, reason="AMX needs amx_int8 and Linux's tile state, which this host lacks")
def test_amx_and_vnni_builds_compute_the_same_integers(experiment, int8_build):
    """On an AMX host the default int8 build uses the tiles (target with AMX features), and a
    build forced onto the VNNI kernels gives the very same scores (integer sums are exact)."""
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom

    manifest = read_manifest(int8_build.manifest)
    assert manifest["precision"]["isa"] == "amx_int8" and "+amx-int8" in manifest["target"]["mattr"]
    vnni = build(experiment, Custom(tag="custom_int8_vnni", precision="int8", isa="avx512_vnni"), log=lambda _: None)
    assert read_manifest(vnni.manifest)["precision"]["isa"] == "avx512_vnni"
    data = read_test_data(experiment.testdata_dir)
    assert (predict_all(TvmBackend(vnni.manifest), data.dense, data.sparse)
            == predict_all(TvmBackend(int8_build.manifest), data.dense, data.sparse)).all()


def test_bench_rows_carry_precision_and_auc_ratio(experiment):
    """`dlrm bench` with the peers at their reduced precision: every row says its precision and
    its AUC against the fp32 reference's; reduced rows are not flagged as disagreeing."""
    from dlrmlib.measuring.bench import bench

    result = bench(experiment, batch_sizes=[16], threads=[2], runtimes=["onnxruntime", "onnxruntime-int8",
                                                                         "openvino-bf16"],
                   repeats=1, warmup=1, log=lambda _: None)
    rows = {r["runtime"]: r for r in result["rows"] if r.get("status") == "ok"}
    assert rows["onnxruntime"]["precision"] == "fp32" and rows["onnxruntime"]["auc_ratio"] == pytest.approx(1.0)
    assert rows["onnxruntime-int8"]["precision"] == "int8" and rows["openvino-bf16"]["precision"] == "bf16"
    for name in ("onnxruntime-int8", "openvino-bf16"):
        assert 0.9 < rows[name]["auc_ratio"] < 1.1 and rows[name]["agrees"] is None
        assert 0 < rows[name]["max_abs_diff_vs_reference"] < 0.05


@pytest.mark.parametrize("k", [37, 100, 264])  # one chain; 4 chains + 2 leftover vectors; 4 chains + a scalar tail
def test_row_quantisation_min_max_chains_change_nothing(k):
    """The quantisation with 4 independent min/max chains per row gives the former one-chain
    kernel's bytes, scales and zero points exactly, and the range numpy computes."""
    import tvm

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules import reduced

    m, kp = 16, reduced.padded_k(k, 4)
    x = np.random.default_rng(2).standard_normal((m, k)).astype(np.float32)
    results = []
    for chains in (1, reduced.MINMAX_CHAINS):
        lib = _compile({"q": reduced.quantize_rows_func(m, k, kp, True, chains=chains)}, host_target())
        out = [tvm.runtime.tensor(np.zeros((m, kp), np.uint8)), tvm.runtime.tensor(np.zeros(m, np.float32)),
               tvm.runtime.tensor(np.zeros(m, np.int32))]
        lib["q"](tvm.runtime.tensor(x), *out)
        results.append([o.numpy() for o in out])
    for former, new in zip(*results):
        assert (former == new).all()
    expected_scale = (np.maximum(x.max(axis=1), 0) - np.minimum(x.min(axis=1), 0)) / 255
    np.testing.assert_allclose(results[1][1], expected_scale, rtol=1e-6)


@pytest.mark.parametrize("relu", [False, True])
def test_bf16_storage_kernel_equals_fp32_math_on_its_rounded_weights(relu):
    """The bf16-storage GEMM (any AVX-512 host; AMX hosts build tdpbf16ps instead, so this is
    its only check there): weights packed to bf16 bits, widened in registers, fp32 FMAs."""
    import tvm

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules import reduced

    shape = DenseShape(m=8, k=37, n=64, relu=relu)
    lib = _compile({"p": reduced.bf16_pack_func(64, 37), "g": reduced.bf16_dense_func(shape)}, host_target())
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((8, 37)).astype(np.float32), rng.standard_normal((64, 37)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    t = tvm.runtime.tensor
    packed, out = t(np.zeros((2, 37, 32), np.uint16)), t(np.zeros((8, 64), np.float32))
    lib["p"](t(w), packed)
    lib["g"](t(x), packed, t(b), out)
    bits = packed.numpy().astype(np.uint32) << 16
    rounded = bits.view(np.float32).transpose(0, 2, 1).reshape(64, 37)  # panels back to W's rows
    assert np.abs(rounded - w).max() <= np.abs(w).max() * 2 ** -8, "bf16 keeps 8 bits of mantissa"
    expected = x @ rounded.T + b
    np.testing.assert_allclose(out.numpy(), np.maximum(expected, 0) if relu else expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("levels,dtype", [(255, "uint8"), (255, "int16"), (127, "uint8")])
def test_static_quantisation_kernel_matches_numpy(levels, dtype):
    """The calibrated int8 input kernel: one scale and zero point for every row, the dynamic
    kernel's rounding and saturation, the same three outputs (any AVX2 host: no VNNI in it); also
    as the AVX2 kernels take it: widened to int16 (`s16`), or onto 0..127 (`u8s8`)."""
    import tvm

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules.static import quantize_static_func, scale_and_zero

    m, k, kp = 16, 37, 40
    lib = _compile({"q": quantize_static_func(m, k, kp, True, levels=levels, dtype=dtype)}, host_target())
    x = (np.random.default_rng(4).standard_normal((m, k)) * 3).astype(np.float32)  # partly outside the range
    scale, zero = scale_and_zero(-2.0, 5.0, levels)
    assert (scale, zero) == (pytest.approx(7 / levels), round(2 / (7 / levels)))
    t = tvm.runtime.tensor
    out = [t(np.zeros((m, kp), dtype)), t(np.zeros(m, np.float32)), t(np.zeros(m, np.int32))]
    lib["q"](t(x), t(np.array([scale], np.float32)), t(np.array([zero], np.int32)), *out)
    expected = np.clip(np.floor(x * (np.float32(1) / np.float32(scale)) + 0.5) + zero, 0, levels).astype(dtype)
    assert (out[0].numpy()[:, :k] == expected).all() and (out[0].numpy()[:, k:] == 0).all()
    assert (out[1].numpy() == np.float32(scale)).all() and (out[2].numpy() == zero).all()
    assert scale_and_zero(0.0, 0.0) == (1.0, 0)  # an all-zero input: any scale, zero at 0


def test_calibration_ranges_come_from_the_calibration_slice_only(experiment):
    """Static calibration reads the test data's first 256 samples (2048 here), nothing after:
    the first layer's input is the dense features, so its range is theirs over the slice."""
    from dlrmlib.building.calibrate import activation_ranges

    data = read_test_data(experiment.testdata_dir)
    found = activation_ranges(experiment, log=lambda _: None)
    assert found["samples"] == 256 and "0..255" in found["which"]
    assert found["ranges"]["bot_l_0_weight"] == [float(data.dense[:256].min()), float(data.dense[:256].max())]
    assert all(lo <= hi for lo, hi in found["ranges"].values()) and len(found["ranges"]) == 5


def test_static_peers_calibrate_and_are_scored_after_the_slice(experiment):
    """onnxruntime-int8-static (quantize_static QDQ S8S8) and openvino-int8 (NNCF): int8 rows with
    an AUC ratio over the samples after the calibration slice; without the slice they refuse."""
    from dlrmlib.backends.factory import make_backend
    from dlrmlib.core.errors import DlrmError
    from dlrmlib.measuring.bench import bench

    result = bench(experiment, batch_sizes=[16], threads=[2], repeats=1, warmup=1, log=lambda _: None,
                   runtimes=["onnxruntime", "onnxruntime-int8-static", "openvino-int8"])
    rows = {r["runtime"]: r for r in result["rows"] if r.get("status") == "ok"}
    for name in ("onnxruntime-int8-static", "openvino-int8"):
        assert rows[name]["precision"] == "int8" and 0.8 < rows[name]["auc_ratio"] < 1.2
        assert rows[name]["agrees"] is None and 0 < rows[name]["max_abs_diff_vs_reference"] < 0.2
    with pytest.raises(DlrmError, match="calibration"):
        make_backend("onnxruntime-int8-static", model_path=experiment.normalised_model, batch_size=16)


@needs_int8
def test_static_int8_build_records_its_calibration_and_is_scored_after_the_slice(experiment):
    """One scale per layer from 256 samples loses more AUC than per-row scales (0.5 % on this
    tiny model on an AVX2 host, as ONNX Runtime's quantize_static on the small preset): the gate is lowered deliberately here, to
    check what the build records and that both runners run it."""
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom

    result = build(experiment, Custom(tag="custom_int8_static", precision="int8", calibration="static"),
                   log=lambda _: None, min_auc_ratio=0.98)
    manifest = read_manifest(result.manifest)
    quantization, accuracy = manifest["precision"]["quantization"], manifest["precision"]["accuracy"]
    assert quantization["calibration"] == "static" and quantization["calibration_samples"] == 256
    assert set(quantization["activation_ranges"]) >= {"bot_l_0_weight", "top_l_0_weight"}
    assert accuracy["passed"] and accuracy["samples"] == SAMPLES - 256 and accuracy["min_auc_ratio"] == 0.98
    data = read_test_data(experiment.testdata_dir)
    native = infer(experiment, result.manifest, log=lambda _: None, iterations=1)
    python = predict_all(TvmBackend(result.manifest), data.dense, data.sparse)
    assert native["max_abs_error"] == pytest.approx(np.abs(python - data.reference).max(), abs=1e-6)


def test_calibration_and_batch_size_options(experiment, capfd, monkeypatch):
    """--calibration is int8's; --batch-size builds another batch size, tagged _b<N>."""
    monkeypatch.setenv("DLRM_IN_CHILD", "1")  # in this process: the child path is the refused build's test above
    assert main(["build", "--experiment", experiment.name, "--precision", "bf16", "--calibration", "static"]) == 2
    assert "applies to --precision int8" in capfd.readouterr().err
    assert main(["build", "--experiment", experiment.name, "--schedule", "custom", "--batch-size", "32"]) == 0
    manifest = read_manifest(experiment.manifest_path("custom_b32"))
    assert manifest["batch_size"] == 32 and manifest["inputs"][0]["shape"] == [32, 13]


def test_precision_peaks_have_every_precision():
    from dlrmlib.core.machine import precision_peaks

    peaks = precision_peaks(n=256, repeats=1)
    assert set(peaks) == {"fp32", "int8", "bf16"} and all(p["gops"] > 0 and p["how"] for p in peaks.values())


INT8_ISAS = [pytest.param("avx2", marks=pytest.mark.skipif(
                 "avx2" not in cpu_flags(), reason="the AVX2 int8 kernels need AVX2, which this host's CPU lacks")),
             pytest.param("avx512_vnni", marks=needs_vnni),
             pytest.param("amx_int8", marks=pytest.mark.skipif(
                 not AMX, reason="the AMX kernel needs amx_int8 (and Linux's tile state), which this host lacks"))]


@pytest.mark.parametrize("isa", INT8_ISAS)
def test_every_int8_tile_candidate_gives_the_default_tiles_integers(isa):
    """The knob tuner's int8 candidates (rows and panels per register tile, or AMX tiles per task;
    one thread or all) change only the blocking: every one gives the default rule's outputs
    bit for bit, on quantised operands of the kernel's own shapes."""
    import tvm

    from dlrmlib.core.target import host_target
    from dlrmlib.schedules import amx
    from dlrmlib.schedules.int8_tiles import Int8Config, int8_candidates, int8_gemm_func
    from dlrmlib.tuning.kernels import _random_args

    shape = DenseShape(m=32, k=70, n=64, relu=True)
    target = {**host_target(), **({"mattr": amx.MATTR} if isa == "amx_int8" else {})}
    configs = [{}] + int8_candidates(shape, isa, "s16")
    assert len(configs) > 3
    outputs = []
    for config in configs:
        func = int8_gemm_func(shape, isa, "s16", Int8Config(**config))
        args = _random_args(func, np.random.default_rng(5))
        _compile({"g": func}, target)["g"](*args)
        outputs.append(args[-1].numpy())
    assert all((out == outputs[0]).all() for out in outputs[1:])


@needs_int8
def test_int8_knob_tuner_and_a_build_from_its_log(experiment, int8_build, tmp_path):
    """`dlrm tune --schedule custom --precision int8` records this host's int8 GEMMs apart from the
    fp32 kernels (name, kind, instruction set, knobs version), skipping the shared interaction
    already in the log; a build from a log whose winners are not the default rules uses them
    (the manifest's `tiles` say so) and scores exactly as the default-rules build."""
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom
    from dlrmlib.schedules.int8_tiles import int8_tile_rule, is_int8_kernel
    from dlrmlib.schedules.knobs import INT8_KNOBS_VERSION, KNOBS_VERSION, append_record, read_log
    from dlrmlib.tuning.kernels import candidates, model_kernels, tune_kernels

    isa = precision_isa("int8")
    shared = [k for k in model_kernels(experiment, "int8") if k.kind == "interaction"]
    for kernel in shared:  # measured already (by an fp32 run): not measured again
        for config in candidates(kernel, 8):
            append_record(tmp_path, {"kernel": kernel.name, "kind": kernel.kind, "config": config, "seconds": 1.0,
                                     "knobs_version": KNOBS_VERSION})
    before = len(read_log(tmp_path))
    tune_kernels(experiment, log_dir=tmp_path, log=lambda _: None, progress=False, min_seconds=0.01, passes=1,
                 precision="int8")
    measured = read_log(tmp_path)[before:]
    int8 = [r for r in measured if r["kind"] == "int8"]
    assert int8 and all(r["kind"] != "interaction" for r in measured)
    prefix = {"avx2": "avx2_int8_s16_", "avx512_vnni": "int8_", "amx_int8": "amx_int8_"}[isa]
    for r in int8:
        assert r["kernel"].startswith(prefix) and is_int8_kernel(r["kernel"]) and r["isa"] == isa
        assert r["precision"] == "int8" and r["knobs_version"] == INT8_KNOBS_VERSION
        assert r["error"] is None and r["seconds"] > 0
    chosen = {r["kernel"]: r["config"] for r in int8  # winners that are not the default rule's tile
              if (r["config"]["mr"], r["config"]["nb"]) != int8_tile_rule(DenseShape(**r["shape"]), isa, "s16")}
    assert chosen
    for name, config in chosen.items():
        append_record(tmp_path, {"kernel": name, "config": config, "seconds": 1e-9, "knobs_version": INT8_KNOBS_VERSION})

    result = build(experiment, Custom(tmp_path, "custom_int8_knobs", "int8"), log=lambda _: None)
    manifest = read_manifest(result.manifest)
    tiles = manifest["precision"]["quantization"]["tiles"]
    assert manifest["precision"]["accuracy"]["passed"]
    used = {t["kernel"]: t for t in tiles.values()}
    for name, config in chosen.items():
        assert (used[name]["mr"], used[name]["nb"]) == (config["mr"], config["nb"])
        assert config["parallel"] in (None, used[name]["parallel"])
    assert all(t["knobs"] == "kernel log" for t in tiles.values())
    assert {k: v for k, v in manifest["build"]["kernel_knobs"].items() if k in chosen} == chosen
    defaults = read_manifest(int8_build.manifest)["precision"]["quantization"]["tiles"]
    assert defaults.keys() == tiles.keys() and all(t["knobs"] == "default rules" for t in defaults.values())
    data = read_test_data(experiment.testdata_dir)
    assert (predict_all(TvmBackend(result.manifest), data.dense, data.sparse)
            == predict_all(TvmBackend(int8_build.manifest), data.dense, data.sparse)).all()
