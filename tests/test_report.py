"""Notebook 05 and the HTML report: every chart the measurements allow, and one page of the
executed notebooks with the code hidden."""
import os

import pytest

from dlrmlib.cli.main import make_parser
from dlrmlib.cli.notebooks import run_notebook
from dlrmlib.measuring.profile import profile
from dlrmlib.reporting import report

# TVM sizes its thread pool once per process (dlrmlib sets TVM_NUM_THREADS to the usable
# cores; the notebook kernels inherit it): bench TVM at that size.
TVM_POOL = int(os.environ["TVM_NUM_THREADS"])
BENCH = {"batch_sizes": [4, 16], "threads": [TVM_POOL], "runtimes": ["onnxruntime", "openvino", "tvm"], "repeats": 3}


@pytest.fixture(scope="module")
def reported(tiny_build, tmp_path_factory):
    """05_report executed on the tiny experiment (measuring first if test_profile has not)."""
    from dlrmlib.core.experiment import Experiment
    from dlrmlib.measuring.bench import bench

    exp = Experiment.open("tiny")
    if not (exp.measurements_dir / "bench.json").is_file():
        bench(exp, **BENCH, log=lambda _: None)
    if not (exp.measurements_dir / "profile.json").is_file():
        profile(exp, repeats=3, min_seconds=0.2, quick_peaks=True, log=lambda _: None)
    out = tmp_path_factory.mktemp("notebooks")
    executed = run_notebook("05_report", "tiny", {}, output_dir=out)
    return exp, executed, report.render_report(exp, out)


def test_report_notebook_draws_every_chart_the_measurements_allow(reported):
    exp, executed, _ = reported
    for name in ("latency_vs_batch", "throughput_vs_threads", "operator_breakdown", "roofline",
                 "experiments_comparison"):
        path = exp.figures_dir / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 10_000, name
    text = executed.read_text()
    assert text.count('"image/png"') >= 5
    if not report.tuning_logs(exp):
        assert "not tuned: no tune/trials.jsonl" in text


def test_report_html_holds_the_charts_and_hides_the_code(reported):
    _, executed, html_path = reported
    assert html_path == executed.parent / "report.html"
    html = html_path.read_text()
    assert html.count("data:image/png;base64") >= 5
    assert "Experiment <code>tiny</code>" in html or "Experiment `tiny`" in html
    assert "report.make_charts" not in html  # inputs excluded
    assert "Where the time goes" in html and "ratio to onnxruntime" in html


def test_tables_hold_every_runtime_and_the_comparison(reported):
    exp, _, _ = reported
    table = report.peers_table(exp)
    assert {"onnxruntime", "openvino", "tvm-untuned"} <= set(table["runtime"])
    assert {4, 16} <= set(table["batch size"])
    ok = table[table["status"] == "ok"]
    assert ok["samples/s"].gt(0).all() and ok["ratio to onnxruntime"].gt(0).all()
    compared = report.compare_experiments(root=exp.root.parent)
    assert "tiny" in set(compared["experiment"])
    assert compared.loc[compared["runtime"] == "onnxruntime", "ratio to onnxruntime"].eq(1.0).all()


def test_cli_has_profile_bench_and_report():
    args = make_parser().parse_args(["bench", "--experiment", "x", "--batch-sizes", "1,64", "--threads", "2",
                                     "--runtimes", "onnxruntime,tvm", "--json", "out.json"])
    assert (args.batch_sizes, args.threads, args.runtimes, args.json) == ([1, 64], [2], ["onnxruntime", "tvm"],
                                                                          "out.json")
    assert make_parser().parse_args(["profile", "--experiment", "x"]).repeats == 10
    assert make_parser().parse_args(["report", "--compare", "a,b"]).compare == ["a", "b"]
