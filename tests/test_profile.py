"""Notebook 04: per-operator profiles that add up, and the peers benchmark, on the tiny model."""
import numpy as np
import pytest
from conftest import PROFILE_BATCHES as BATCHES, PROFILE_PEERS as PEERS, PROFILE_REPEATS

from dlrmlib.core.errors import DlrmError
from dlrmlib.measuring.bench import sweep_configs
from dlrmlib.measuring.cost_model import BUCKETS, TensorInfo, classify, kernel_cost

@pytest.fixture(scope="module")
def profiled(profiled_tiny):
    """04_profile executed on the shared tiny experiment (conftest's profiled_tiny, shared with
    tests/test_report.py): (executed notebook, profile, bench)."""
    return profiled_tiny.profile_notebook, profiled_tiny.profile, profiled_tiny.bench


def test_profile_covers_every_build_and_onnxruntime_and_adds_up(profiled):
    _, profile, _ = profiled
    labels = [r["label"] for r in profile["runs"]]
    assert "tvm-untuned" in labels and labels[-1] == "onnxruntime"
    for run in profile["runs"]:
        kernels = [k for k in run["kernels"] if k["kind"] == "kernel"]
        assert kernels and all(k["bucket"] in BUCKETS for k in run["kernels"])
        assert run["kernel_medians_sum_ms"] == pytest.approx(sum(k["ms"] for k in run["kernels"]))
        assert run["coverage"] == pytest.approx(run["kernels_sum_ms"] / run["end_to_end_ms"]["median"])
        assert run["margin"] == 0.10 and isinstance(run["within_margin"], bool)
        # Every part of DLRM is found, and the GEMMs carry their FLOPs for the roofline.
        # The custom schedule's one kernel gathers, interacts and concatenates (interaction).
        fused = {"embedding gather", "concatenation"} if run["label"] == "tvm-custom" else set()
        for bucket in {"embedding gather", "bottom MLP", "interaction", "concatenation", "top MLP"} - fused:
            assert run["buckets_ms"][bucket] > 0, (run["label"], bucket)
        assert any(k["flops"] > 0 and k["bucket"] == "top MLP" for k in kernels)
    assert profile["peaks"]["peak_gflops"] > 0 and profile["peaks"]["bandwidth_gbs"] > 0
    assert profile["machine"]["cpu"] and profile["versions"]["apache-tvm"]


def test_bench_lists_every_runtime_and_batch_size_and_says_where_tvm_has_no_build(profiled):
    _, _, bench = profiled
    rows = {(r["runtime"], r["batch_size"]): r for r in bench["rows"]}
    for runtime in PEERS:
        for batch in BATCHES:
            row = rows[(runtime, batch)]
            assert row["status"] == "ok" and row["samples_per_s"] > 0 and row["latency_ms"]["n"] == PROFILE_REPEATS
            assert row["agrees"], f"{runtime} at batch {batch} differs from ONNX Runtime"
            assert row["ratio_to_onnxruntime"] > 0
    assert rows[("onnxruntime", 16)]["ratio_to_onnxruntime"] == pytest.approx(1.0)
    assert rows[("tvm-untuned", 16)]["status"] == "ok" and rows[("tvm-untuned", 16)]["agrees"]
    assert rows[("tvm-untuned", 4)]["status"].startswith("no build for batch 4")
    assert rows[("tvm-untuned", 4)]["samples_per_s"] is None
    assert bench["invocation"]["call"].startswith("dlrmlib.measuring.bench.bench('tiny'")
    assert "flags" in bench["machine"] and bench["versions"]["openvino"]


def test_profile_notebook_shows_the_tables(profiled):
    executed, _, _ = profiled
    text = executed.read_text()
    for expected in ("kernels / end-to-end", "embedding gather", "FLOP/byte", "ratio to onnxruntime",
                     "built for batch 16 only"):
        assert expected in text


def test_gemm_cost_and_gather_bytes():
    flops, nbytes = kernel_cost("fused_matmul_add_relu", [TensorInfo((128, 13), "float32"),
                                                          TensorInfo((13, 512), "float32")],
                                [TensorInfo((128, 512), "float32")])
    assert flops == 2 * 128 * 512 * 13 + 2 * 128 * 512  # GEMM + bias + ReLU
    assert nbytes == (128 * 13 + 13 * 512 + 128 * 512) * 4
    flops, nbytes = kernel_cost("take3", [TensorInfo((100_000, 128), "float32"), TensorInfo((128,), "int64")],
                                [TensorInfo((128, 128), "float32")])
    assert flops == 0 and nbytes == 2 * 128 * 128 * 4 + 128 * 8  # rows read, not the whole table


def test_buckets_by_weights_inputs_and_producers():
    assert classify("fused_matmul_add_relu", ["bot_l.0.bias"], ["input.1"], [], [], 27) == "bottom MLP"
    assert classify("take7", ["emb_l.5.weight"], [], [], [], 27) == "embedding gather"
    assert classify("concatenate", [], [], ["bottom MLP"], [], 27) == "concatenation"
    batched = TensorInfo((16, 27, 16), "float32")
    assert classify("matmul2", [], [], ["concatenation"], [batched], 27) == "interaction"
    flat = TensorInfo((16, 367), "float32")
    assert classify("fused_matmul3", [], [], ["concatenation"], [flat], 27) == "top MLP"


def test_sweeps_share_their_common_point_and_reject_nonsense():
    configs = sweep_configs([1, 16], [1, 2], experiment_batch=16)
    assert [(c.batch_size, c.threads, c.sweeps) for c in configs] == [
        (1, 2, ("batch",)), (16, 1, ("threads",)), (16, 2, ("batch", "threads"))]
    with pytest.raises(DlrmError):
        sweep_configs([0], [1], 16)


def test_parallel_requests_count_every_sessions_samples(tiny_experiment):
    """bench_perf's parallel table: two single-thread ONNX Runtime sessions and a two-stream
    OpenVINO model each serve from their own Python thread; every finished batch counts."""
    from dlrmlib.backends import model_inputs
    from dlrmlib.backends.onnxruntime import OnnxRuntimeBackend
    from dlrmlib.backends.openvino import OpenVinoBackend
    from dlrmlib.formats.testdata import read_test_data
    from dlrmlib.measuring.bench import parallel_samples_per_s

    data = read_test_data(tiny_experiment.testdata_dir)
    batches = [model_inputs(data.dense, data.sparse, 0, 16)[0]]
    ort = [OnnxRuntimeBackend(tiny_experiment.normalised_model, 16, 1) for _ in range(2)]
    first = OpenVinoBackend(tiny_experiment.normalised_model, 16, threads=2, streams=2)
    ov = [first, first.another_request()]
    assert ov[1].request is not ov[0].request and ov[1].compiled is ov[0].compiled
    for sessions in (ort, ov):
        rate = parallel_samples_per_s(sessions, batches, 0.2)
        assert rate > 16 / 0.2, "at least one batch per session in 0.2 s"
        np.testing.assert_allclose(sessions[1].predict(batches[0]), sessions[0].predict(batches[0]), atol=1e-6)
