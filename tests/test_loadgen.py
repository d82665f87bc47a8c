"""MLPerf LoadGen on a real tiny build: the three scenarios in both modes with short research
settings, the aggregated query samples, the results saved into the experiment, the CLI."""

import numpy as np
import pytest

from dlrmlib.cli.main import main
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import read_json
from dlrmlib.measuring.aggregation import PAIRS_PER_SAMPLE, aggregate
from dlrmlib.measuring.loadgen import SCENARIOS, loadgen_table, research_overrides, run_loadgen

SHORT = {"query_samples": 12, "min_duration_s": 1.5, "min_query_count": 8}


@pytest.fixture(scope="module")
def exp(copy_tiny, experiments_root):
    """A copy of the session's tiny experiment (build included), so LoadGen's measurements do
    not show up in other tests' tables."""
    copy_tiny(experiments_root / "tiny-loadgen")
    return Experiment.open("tiny-loadgen")


def test_aggregation_follows_mlperf_distribution():
    a = aggregate(num_rows=64, count=4000, seed=3)
    sizes = a.sizes()
    assert set(np.unique(sizes)) <= set(PAIRS_PER_SAMPLE) and sizes.min() >= 100 and sizes.max() <= 700
    assert abs(sizes.mean() - 270) < 10
    assert abs((sizes == 200).mean() - 0.6) < 0.03
    counts = np.bincount(a.rows, minlength=64)  # whole shuffled passes: every row used alike
    assert counts.max() - counts.min() <= 1
    again = aggregate(num_rows=64, count=4000, seed=3)
    assert np.array_equal(a.rows, again.rows) and np.array_equal(a.offsets, again.offsets)
    assert not np.array_equal(a.rows, aggregate(num_rows=64, count=4000, seed=4).rows)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_runs_and_is_recorded(exp, scenario):
    r = run_loadgen(exp, scenario, log=lambda _: None, **SHORT)
    perf, acc = r["performance"], r["accuracy"]
    assert r["research"] and not r["valid_mlperf_result"] and r["build"] == "untuned"
    assert perf["result"] in ("VALID", "INVALID") and perf["summary"]["Scenario"] == scenario
    assert perf["queries_per_s"] > 0 and perf["pairs_per_s"] > 100 * perf["queries_per_s"]
    assert perf["settings"]["min_duration_ms"] == 1500 and perf["settings"]["min_sample_count"] >= 8
    b, sizes = r["batch_size"], aggregate(64, SHORT["query_samples"]).sizes()
    for section in (perf, acc):
        assert section["batches"] * b == section["pairs_run"] + section["padded_pairs"]
    if scenario == "Offline":  # one query: its pairs packed into full batches, only the last padded
        assert perf["padded_pairs"] < b and acc["batches"] == -(-sizes.sum() // b)
    if scenario == "SingleStream":  # one sample at a time: each sample's last batch padded
        assert acc["batches"] == sum(-(-sizes // b))
    # Accuracy: every sample once, scored from LoadGen's own accuracy log.
    assert acc["query_samples"] == SHORT["query_samples"] and acc["pairs"] == r["aggregation"]["pairs"]
    assert acc["max_abs_error"] <= 1e-5 and acc["auc"] == pytest.approx(acc["reference_auc"], abs=1e-4)
    saved = read_json(exp.measurements_dir / f"loadgen_{scenario}.json")
    assert saved["performance"]["result"] == perf["result"] and saved["samples_per_s"] == perf["pairs_per_s"]
    for mode in ("performance", "accuracy"):
        folder = exp.root / "loadgen" / scenario / f"tvm-{mode}"
        assert (folder / "mlperf_log_summary.txt").is_file() and (folder / "mlperf_log_detail.txt").is_file()
        assert (folder / "aggregation.npz").is_file()


def test_loadgen_table_shows_each_scenario(exp):
    for scenario in SCENARIOS:
        if not (exp.measurements_dir / f"loadgen_{scenario}.json").is_file():
            run_loadgen(exp, scenario, modes="performance", log=lambda _: None, **SHORT)
    table = loadgen_table(exp)
    assert {f"loadgen_{s}" for s in SCENARIOS} <= set(table.index)
    assert (table["pairs_per_s"] > 0).all() and table["research"].all()


def test_onnxruntime_for_comparison_and_modes_kept(exp):
    run_loadgen(exp, "Offline", backend="onnxruntime", modes="accuracy", log=lambda _: None, **SHORT)
    r = run_loadgen(exp, "Offline", backend="onnxruntime", modes="performance", log=lambda _: None, **SHORT)
    assert r["runtime"] == "onnxruntime" and r["performance"]["pairs_per_s"] > 0
    assert r["accuracy"]["max_abs_error"] == 0.0  # the reference outputs are ONNX Runtime's own
    assert (exp.measurements_dir / "loadgen_Offline_onnxruntime.json").is_file()


def test_mlperf_rules_are_not_research():
    assert research_overrides("Server", min_duration_s=600, server_latency_ms=60) == {}
    assert research_overrides("Server", min_duration_s=5) == {"min_duration_s": 5}


def test_user_errors(exp):
    with pytest.raises(DlrmError, match="scenario"):
        run_loadgen(exp, "MultiStream", log=lambda _: None)
    with pytest.raises(DlrmError, match="min_duration_s"):
        run_loadgen(exp, "Offline", min_duration_s=-1, log=lambda _: None)
    with pytest.raises(DlrmError, match="query samples"):
        run_loadgen(exp, "Offline", query_samples=0, log=lambda _: None)


def test_cli(exp, capsys):
    code = main(["loadgen", "--experiment", exp.name, "--scenario", "SingleStream", "--mode", "accuracy",
                 "--query-samples", "4"])
    assert code == 0
    assert "loadgen_SingleStream" in capsys.readouterr().out
    assert main(["loadgen", "--experiment", exp.name, "--backend", "tvm", "--target-qps", "-1",
                 "--mode", "accuracy"]) == 2
