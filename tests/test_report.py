"""Notebook 05 and the HTML report: every chart the measurements allow, and one page of the
executed notebooks with the code hidden."""
import json
import re
import shutil
import subprocess

import pytest

from dlrmlib.cli.main import make_parser
from dlrmlib.reporting import headline, plots, report, tables

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless Chromium in a sandboxed container, with nothing reaching the network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,900"]


@pytest.fixture(scope="module")
def reported(profiled_tiny):
    """The tiny experiment with its custom kernels built for a second batch size, 04_profile
    (profile and benchmark) and 05_report executed, and the HTML report of the two: conftest's
    profiled_tiny, shared with tests/test_profile.py."""
    return profiled_tiny.exp, profiled_tiny.report_notebook, profiled_tiny.html


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
    assert "DLRM on TVM: experiment <code>tiny</code>" in html
    assert "report.make_charts" not in html  # inputs excluded
    assert "Where the time goes" in html and "ratio to onnxruntime" in html


def test_headline_shows_each_runtime_at_each_batch_size_and_tvm_across_them(reported):
    exp, _, _ = reported
    bench = exp.measurement("bench")
    frame = headline.headline_frame(bench, exp)
    assert list(frame["batch"]) == [4, 16]
    assert frame["onnxruntime"].gt(0).all() and frame["tvm"].gt(0).all(), "TVM at both batch sizes"
    assert frame.loc[frame["batch"] == 4, "TVM build"].item() == "custom_b4"
    assert frame["x best peer"].gt(0).all() and set(frame["precision"]) == {"fp32"}
    assert frame["AUC / ref."].between(0.9, 1.1).all()
    assert frame["% peak"].gt(0).all(), "TVM's share of the peak of its precision"
    shown = headline.headline_table(bench, exp)
    assert "nan" not in shown.to_string().lower()
    # The unmeasured rows are sentences, each said once: untuned has no batch-4 build.
    notes = headline.unmeasured_notes(bench)
    assert "tvm-untuned built for batch 16 only." in notes and len(notes) == len(set(notes))


def test_report_folds_logs_and_wide_tables_and_shows_no_table_twice(reported):
    _, _, html_path = reported
    html = html_path.read_text()
    first = html.index('id="dlrm-headline"')
    assert first < html.index("04 Profile") < html.index("05 Report"), "the headline comes first"
    assert "<details><summary>log:" in html and "<details><summary>table:" in html
    assert "[bench] batch 4" in html[html.index("<details><summary>log:"):], "the benchmark's log is folded"
    assert "no build for batch" not in html and "not measured: TVM's thread pool" not in html
    tables = re.findall(r"<table.*?</table>", html, flags=re.S)
    assert len(tables) >= 5 and len(tables) == len(set(tables)), "no table shown twice"
    assert html.count('id="dlrm-headline-chart"') == 1


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian's chromium package; .ci/run "
                                             "installs it)")
def test_report_first_screen_in_headless_chromium(reported, tmp_path):
    """At 1400x900 the first screen holds the headline chart (decoded) and table (text, no NaN)."""
    _, _, html_path = reported
    probe = tmp_path / "report.html"  # the page plus a script that writes the layout into the DOM
    probe.write_text(html_path.read_text().replace("</body>", """<script>
      window.addEventListener("load", () => {
        const box = id => { const e = document.getElementById(id); if (!e) return null;
          const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, right: r.right, width: r.width,
          decoded: e.naturalWidth || 0, text: e.innerText}; };
        const out = document.createElement("pre"); out.id = "layout-probe";
        const table = document.querySelector("#dlrm-headline-table table");
        if (table) table.id = "headline-table-element";
        out.textContent = JSON.stringify({chart: box("dlrm-headline-chart"), table: box("headline-table-element"),
                                          width: window.innerWidth});
        document.body.appendChild(out); });
    </script></body>"""))
    run = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*run, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom, flags=re.S)
    assert found, f"chromium rendered no page: {dom[:300]!r}"
    layout = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    chart, table = layout["chart"], layout["table"]
    assert chart["decoded"] > 0 and chart["width"] > 300, "the headline chart is an image that decodes"
    assert layout["width"] == 1400, layout  # the layout of the screenshot below, whose first 900 pixels show:
    assert 0 <= chart["top"] and chart["bottom"] <= 900 and chart["right"] <= 1400, chart
    assert 0 <= table["top"] and table["bottom"] <= 900 and table["right"] <= 1400, table  # whole, not cut
    assert "x best peer" in table["text"] and "custom_b4" in table["text"]
    assert not re.search(r"\bnan\b", table["text"], flags=re.I)
    shot = tmp_path / "first_screen.png"
    subprocess.run([*run, f"--screenshot={shot}", probe.as_uri()], capture_output=True, timeout=120, check=True)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 900)
        colours = image.convert("RGB").resize((140, 90)).getcolors(140 * 90)
        assert len(colours) > 50, "the first screen is not blank"


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


def test_id_skew_means_something_at_any_scale(tiny_experiment):
    """The share of lookups the hottest 1% of the ids seen take: below 1 and above 1% for
    skewed ids, whatever the table's size (a share of the table's rows was 1.0 everywhere)."""
    skew = tables.id_skew(tiny_experiment)
    assert len(skew) == 26 and (skew["distinct ids seen"] <= skew["rows"]).all()
    share = skew["share of lookups they take"]
    assert share.lt(1).all() and share.gt(0.01).all()
    assert (skew["hottest 1% of ids seen"] >= 1).all()
    path = plots.id_rank_frequency(tiny_experiment)
    assert path.is_file() and path.stat().st_size > 10_000


def test_builds_for_other_batch_sizes_are_marked_and_refuse_nonsense(reported):
    from dlrmlib.building.build import build
    from dlrmlib.core.errors import DlrmError
    from dlrmlib.formats.weights import read_manifest

    exp, _, _ = reported
    manifest = read_manifest(exp.manifest_path("custom_b4"))
    assert manifest["batch_size"] == 4 and manifest["inputs"][0]["shape"] == [4, 13]
    assert exp.measurement("python_vm_custom_b4")["max_abs_error"] <= 1e-5
    with pytest.raises(DlrmError, match="batch size must be positive"):
        build(exp, batch_size=0, log=lambda _: None)


def test_best_peer_is_any_column_at_any_precision_that_keeps_the_accuracy(reported):
    """A peer at reduced precision (openvino-bf16) competes, and is a column of the table, as
    long as it keeps 99.9 % of the reference AUC; one that loses more does not count."""
    exp, _, _ = reported
    bench = exp.measurement("bench")
    tvm_rows = [r for r in bench["rows"] if r["runtime"].startswith("tvm") and r.get("samples_per_s")]
    top = max(tvm_rows, key=lambda r: r["samples_per_s"])

    def peer(name, factor, auc_ratio):
        return {**top, "runtime": name, "precision": "bf16", "samples_per_s": top["samples_per_s"] * factor,
                "auc_ratio": auc_ratio}

    kept = {**bench, "rows": bench["rows"] + [peer("openvino-bf16", 2.0, 0.9996)]}
    frame = headline.headline_frame(kept, exp).set_index("batch")
    assert "openvino-bf16" in frame.columns
    assert frame.loc[top["batch_size"], "best peer"] == "openvino-bf16"
    assert frame.loc[top["batch_size"], "x best peer"] == pytest.approx(0.5)
    lost = {**bench, "rows": bench["rows"] + [peer("onnxruntime-int8", 2.0, 0.9986)]}
    frame = headline.headline_frame(lost, exp).set_index("batch")
    assert frame.loc[top["batch_size"], "best peer"] != "onnxruntime-int8"
    assert frame.loc[top["batch_size"], "x best peer"] > 0.5
