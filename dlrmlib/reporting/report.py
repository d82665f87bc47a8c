"""The shareable report: the experiment's charts (into its `figures/`), the tables behind them,
and one HTML page of its executed notebooks with the code hidden (`notebooks/report.html`)."""
from __future__ import annotations

from pathlib import Path

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment, experiments_root
from dlrmlib.core.files import atomic_path
from dlrmlib.formats.tuning_log import TRIALS_FILE, tuning_log_dir
from dlrmlib.measuring.bench import bench_table, load_bench
from dlrmlib.reporting import plots
from dlrmlib.reporting.headline import HEADLINE_TAG, collapse_outputs, headline_html
from dlrmlib.reporting.plots import CURVE_FIGURE, plot_tuning_curve

# -- what the charts read -------------------------------------------------------------------------

def tuning_logs(exp: Experiment) -> list[tuple[Path, bool]]:
    """The experiment's tuning logs that hold measured trials (`trials.jsonl`, written by
    dlrmlib.tuning.metaschedule): (folder, prepacked), plain first."""

    logs = [(tuning_log_dir(exp, prepack), prepack) for prepack in (False, True)]
    return [(folder, prepack) for folder, prepack in logs if (folder / TRIALS_FILE).is_file()]


def _tuning_curves(exp: Experiment) -> dict[str, Path]:
    """The tuning engineer's curves (dlrmlib.tuning.metaschedule.plot_tuning_curve), one per tuning log."""
    import matplotlib.pyplot as plt


    charts = {}
    for folder, prepack in tuning_logs(exp):
        fig = plot_tuning_curve(exp, folder, prepack)
        name = CURVE_FIGURE.removesuffix(".png") + ("_prepack" if prepack else "")
        charts[name] = exp.figures_dir / f"{name}.png"
        plt.close(fig)
    return charts


def _top_rows(exp: Experiment, bench: dict) -> list[dict]:
    """The benchmark's measured rows at the experiment's batch size with the most threads."""
    batch, top = exp.batch_size, max(bench["threads"])
    return [r for r in bench["rows"] if r.get("status") == "ok" and r["batch_size"] == batch and r["threads"] == top]


def comparison(exp: Experiment, compare: list[str] | None = None):
    """The experiments table the report shows and charts: `exp` and `compare`, or every
    experiment beside it with a benchmark."""
    names = list(dict.fromkeys([exp.name, *compare])) if compare else None
    return compare_experiments(names, exp.root.parent)


def compare_experiments(names: list[str] | None = None, root: Path | None = None):
    """One row per runtime/build per experiment: samples/s and ratio to ONNX Runtime at the
    experiment's batch size with the most threads, from each experiment's benchmark. Default:
    every experiment under the root that has one."""
    import pandas as pd

    root = Path(root) if root else experiments_root()
    if names is None:
        names = sorted(p.parent.parent.name for p in root.glob("*/measurements/bench.json"))
    rows = []
    for name in names:
        exp = Experiment.open(name, root)
        bench = exp.measurement("bench")
        if bench is None:
            raise DlrmError(f"experiment {name!r} has no benchmark to compare; run `dlrm bench --experiment {name}`")
        for r in _top_rows(exp, bench):
            rows.append({"experiment": name, "runtime": r["runtime"], "precision": r.get("precision", "fp32"),
                         "auc ratio": r.get("auc_ratio"), "batch size": r["batch_size"],
                         "threads": r["threads"], "samples/s": r["samples_per_s"],
                         "ratio to onnxruntime": r["ratio_to_onnxruntime"], "runs": r["latency_ms"]["n"],
                         "cpu": bench["machine"]["cpu"]})
    return pd.DataFrame(rows, columns=["experiment", "runtime", "precision", "auc ratio", "batch size", "threads",
                                       "samples/s",
                                       "ratio to onnxruntime", "runs", "cpu"])


# -- the charts -----------------------------------------------------------------------------------

def make_charts(exp: Experiment, compare: list[str] | None = None) -> dict[str, Path | str]:
    """Every chart the experiment's measurements allow, saved to its figures folder. Returns
    chart name -> PNG path, or -> the reason it was skipped."""
    import matplotlib.pyplot as plt


    bench, profile = exp.measurement("bench"), exp.measurement("profile")
    makers = {
        "latency_vs_batch": (bench, lambda: plots.latency_vs_batch(bench), "no benchmark: run `dlrm bench`"),
        "throughput_vs_threads": (bench, lambda: plots.throughput_vs_threads(bench), "no benchmark: run `dlrm bench`"),
        "operator_breakdown": (profile, lambda: plots.operator_breakdown(profile), "no profile: run `dlrm profile`"),
        "roofline": (profile, lambda: plots.roofline(profile), "no profile: run `dlrm profile`"),
        "experiments_comparison": (bench, lambda: plots.experiments_comparison(comparison(exp, compare)),
                                   "no benchmark: run `dlrm bench`"),
    }
    charts: dict[str, Path | str] = _tuning_curves(exp) or {
        "tuning_curve": f"not tuned: no {exp.tune_dir.name}/trials.jsonl"}
    for name, (needed, make, reason) in makers.items():
        if not needed:
            charts[name] = reason
            continue
        fig = make()
        charts[name] = plots.save(fig, exp.figures_dir, name)
        plt.close(fig)
    for name, value in charts.items():
        if not isinstance(value, Path):
            (exp.figures_dir / f"{name}.png").unlink(missing_ok=True)  # a stale chart would mislead
    return charts


def show(charts: dict[str, Path | str], name: str) -> None:
    """Display a chart and its variants (`tuning_curve`, `tuning_curve_prepack`) in a notebook,
    embedded so that the HTML report carries them; or say why it is missing."""
    from IPython.display import Image, Markdown, display

    for key, value in charts.items():
        if key == name or key.startswith(f"{name}_"):
            display(Image(filename=str(value)) if isinstance(value, Path) else Markdown(f"*{key}: {value}*"))


def peers_table(exp: Experiment):
    """The benchmark's rows (both sweeps), the columns people compare."""

    return bench_table(load_bench(exp))


def show_headline(exp: Experiment) -> None:
    """The report's first screen in the notebook: chart, sentence, table, what was not measured."""
    from IPython.display import HTML, display

    display(HTML(headline_html(exp)))


# -- the HTML page ------------------------------------------------------------------------------

def _executed_notebooks(folder: Path) -> list[Path]:
    """Executed notebooks in workflow order (numbered names sort that way)."""
    return sorted(p for p in folder.glob("*.ipynb") if p.stem[:2].isdigit())


def merged_notebook(exp: Experiment, notebooks: list[Path]):
    """One notebook of all the executed ones: a title and the headline (chart and table) first,
    then every notebook with raw logs and wide tables collapsed, without stderr noise (progress
    bars, TVM's warnings) and without the headline cell, already shown on top."""
    import nbformat

    merged = nbformat.v4.new_notebook()
    merged.cells.append(nbformat.v4.new_markdown_cell(f"# DLRM on TVM: experiment `{exp.name}`"))
    top = nbformat.v4.new_code_cell("")
    top.outputs = [nbformat.v4.new_output("display_data", data={"text/html": headline_html(exp)})]
    merged.cells.append(top)
    merged.cells.append(nbformat.v4.new_markdown_cell(
        f"## How it was measured\n\nThe executed notebooks {', '.join(p.stem for p in notebooks)}, code hidden "
        f"(the notebooks in `notebooks/` of the repository hold it); logs and wide tables are folded: click to open."))
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if HEADLINE_TAG in cell.metadata.get("tags", []):
                continue
            if cell.cell_type == "code":
                cell.outputs = collapse_outputs([o for o in cell.get("outputs", [])
                                                 if not (o.get("output_type") == "stream" and o.get("name") == "stderr")])
            merged.cells.append(cell)
    merged.metadata = nbformat.read(notebooks[-1], as_version=4).metadata if notebooks else {}
    return merged


def render_report(exp: Experiment | str, notebooks_dir: Path | None = None) -> Path:
    """`report.html` beside the executed notebooks: every one of them, code hidden."""
    from nbconvert import HTMLExporter

    exp = Experiment.open(exp) if isinstance(exp, str) else exp
    folder = Path(notebooks_dir) if notebooks_dir else exp.notebooks_dir
    notebooks = _executed_notebooks(folder)
    if not notebooks:
        raise DlrmError(f"no executed notebooks in {folder}; run `dlrm demo` or `dlrm report` first")
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    html, _ = exporter.from_notebook_node(merged_notebook(exp, notebooks),
                                          resources={"metadata": {"name": f"DLRM on TVM: {exp.name}"}})
    path = folder / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(html)
        tmp.chmod(0o644)  # a page to share, not a private temporary file
    return path


