"""Charts people trust: batch size on a log2 axis, medians of repeated interleaved runs with
their spread and their count, a roofline against the machine's measured limits, and the exact
CPU and versions in every caption (drawn into the image, so a copied chart keeps them)."""
from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a notebook keeps its inline backend: a returned figure shows as a picture
    matplotlib.use("Agg")  # headless: files, not windows
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from dlrmlib.core.experiment import Experiment
from dlrmlib.core.machine import caption as provenance_caption
from dlrmlib.formats.tuning_log import (
    crossing,
    read_tasks,
    resolve_prepack,
    trials_frame,
    tuning_curve,
    tuning_log_dir,
)
from dlrmlib.measuring.cost_model import BUCKETS
from dlrmlib.reporting.tables import id_counts

CURVE_FIGURE = "tuning_curve.png"

RUNTIME_STYLE = {  # the same runtime keeps its colour and marker in every chart
    "onnxruntime": ("tab:blue", "o"), "openvino": ("tab:purple", "s"), "pytorch-eager": ("tab:red", "^"),
    "pytorch-compile": ("tab:orange", "v"), "python-vm": ("tab:gray", "x"),
    # a peer at its reduced precision: its fp32 colour, another marker (hatched bars)
    "onnxruntime-int8": ("tab:blue", "P"), "openvino-bf16": ("tab:purple", "P"), "pytorch-eager-bf16": ("tab:red", "P"),
    "onnxruntime-int8-static": ("tab:blue", "X"), "openvino-int8": ("tab:purple", "X"),
}
# bars of reduced-precision runs: hatched by how they got there (calibrated int8: crossed)
HATCHES = {"bf16": "..", "int8": "//"}
CALIBRATED_HATCH = "xx"


def hatch(runtime: str, precision: str) -> str | None:
    """The bar hatch of a row: none for fp32, dots for bf16, lines for int8, crosses for int8
    calibrated on the calibration slice (onnxruntime-int8-static, openvino-int8)."""
    if precision == "int8" and runtime.split(" x")[0] in ("onnxruntime-int8-static", "openvino-int8"):
        return CALIBRATED_HATCH
    return HATCHES.get(precision)
TVM_COLOURS = ("tab:green", "tab:olive", "tab:cyan", "tab:brown", "tab:pink")
BUCKET_COLOURS = dict(zip(BUCKETS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:gray")))


def style(runtime: str, tvm_order: list[str] | None = None) -> tuple[str, str]:
    """(colour, marker) for a runtime; TVM builds take greens in build order."""
    if runtime in RUNTIME_STYLE:
        return RUNTIME_STYLE[runtime]
    order = tvm_order or []
    index = order.index(runtime) if runtime in order else 0
    return TVM_COLOURS[index % len(TVM_COLOURS)], "D"


def add_caption(fig, text: str) -> None:
    """Caption under the axes, wrapped to the figure's width."""
    width = int(fig.get_figwidth() * 16)
    wrapped = "\n".join(textwrap.wrap(text, width))
    fig.text(0.01, 0.01, wrapped, fontsize=7, va="bottom", ha="left", color="0.25")
    lines = wrapped.count("\n") + 1
    fig.subplots_adjust(bottom=min((0.6 + 0.13 * lines) / fig.get_figheight(), 0.6))


def save(fig, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")  # legends beside the axes are not cut off
    return path


_BATCH_TAG = re.compile(r"_b\d+$")  # builds of one recipe at other batch sizes: custom_b16, custom_b2048


def series(runtime: str) -> str:
    """The line a benchmark row belongs to: a TVM build made for another batch size
    (`tvm-custom_b16`) joins its recipe's line (`tvm-custom`)."""
    return _BATCH_TAG.sub("", runtime) if runtime.startswith("tvm") else runtime


def _ok_rows(bench: dict, sweep: str) -> list[dict]:
    return [r for r in bench["rows"] if r.get("status") == "ok" and sweep in r.get("sweeps", [])]


def _tvm_names(rows: list[dict]) -> list[str]:
    return sorted({series(r["runtime"]) for r in rows if r["runtime"].startswith("tvm")})


def _runtimes(rows: list[dict]) -> list[str]:
    names = sorted({r["runtime"] for r in rows}, key=lambda n: (n.startswith("tvm"), n))
    return names


def _sweep_lines(ax, rows: list[dict], axis: str, value) -> None:
    """One line per runtime over `axis` (a row key): value(row, stat) for the latency statistic
    "median", with error bars between its "p10" and "p90" values; log-scale y, grid, legend."""
    tvm = _tvm_names(rows)
    for runtime in sorted({series(r["runtime"]) for r in rows}, key=lambda n: (n.startswith("tvm"), n)):
        mine = sorted((r for r in rows if series(r["runtime"]) == runtime), key=lambda r: r[axis])
        med, p10, p90 = (np.array([value(r, stat) for r in mine]) for stat in ("median", "p10", "p90"))
        low, high = np.minimum(p10, p90), np.maximum(p10, p90)
        colour, marker = style(runtime, tvm)
        ax.errorbar([r[axis] for r in mine], med, yerr=[med - low, high - med], color=colour, marker=marker,
                    capsize=3, lw=1.5, label=f"{runtime} (n={mine[0]['latency_ms']['n']})")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def latency_vs_batch(bench: dict):
    """Median latency per batch against batch size (log2), bars from the 10th to the 90th
    percentile; a TVM build is one point, at the batch size it was built for (a recipe built
    for several batch sizes is one line)."""
    rows = _ok_rows(bench, "batch")
    fig, ax = plt.subplots(figsize=(8, 5.2))
    _sweep_lines(ax, rows, "batch_size", lambda r, stat: r["latency_ms"][stat])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["batch_size"] for r in rows}) or [1])
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("batch size (log2 scale)")
    ax.set_ylabel("latency per batch, ms (median; bars p10-p90)")
    threads = rows[0]["threads"] if rows else "?"
    ax.set_title(f"Latency against batch size ({threads} threads)")
    add_caption(fig, f"{provenance_caption(bench)}. Runs interleaved round-robin, n per point in the legend. "
                     f"A TVM library is built for one batch size: each TVM point is a build made for it "
                     f"({_build_batches(bench)}).")
    return fig


def _build_batches(bench: dict) -> str:
    by_series: dict[str, list[int]] = {}
    for tag, b in (bench.get("tvm_builds") or {}).items():
        by_series.setdefault(series(f"tvm-{tag}"), []).append(b)
    return ", ".join(f"{name} at {', '.join(map(str, sorted(b)))}" for name, b in by_series.items()) or "no TVM builds"


def throughput_vs_threads(bench: dict):
    """Samples per second against thread count at the experiment's batch size; bars from the
    latency's 90th (low) to 10th (high) percentile."""
    rows = _ok_rows(bench, "threads")
    fig, ax = plt.subplots(figsize=(8, 5.2))
    _sweep_lines(ax, rows, "threads", lambda r, stat: r["batch_size"] / r["latency_ms"][stat] * 1e3)
    ax.set_xticks(sorted({r["threads"] for r in rows}) or [1])
    ax.set_xlabel("threads")
    ax.set_ylabel("samples / s (median; bars p10-p90)")
    batch_size = rows[0]["batch_size"] if rows else "?"
    ax.set_title(f"Throughput against threads (batch {batch_size})")
    add_caption(fig, f"{provenance_caption(bench)}. Runs interleaved round-robin.")
    return fig


def operator_breakdown(profile: dict):
    """Each build's and runtime's kernel time per bucket as a share of its end-to-end time, so
    a 2-second untuned build and a 20 ms runtime compare on one axis; the bar's end is the
    check (kernels add up to 100% of end to end, within the dashed margin)."""
    runs = profile["runs"]
    fig, ax = plt.subplots(figsize=(8, 1.9 + 0.7 * len(runs)))
    labels = [r["label"] for r in runs]
    left = np.zeros(len(runs))
    for bucket in BUCKETS:
        widths = np.array([r["buckets_ms"].get(bucket, 0.0) / r["end_to_end_ms"]["median"] for r in runs])
        ax.barh(labels, widths * 100, left=left * 100, color=BUCKET_COLOURS[bucket], label=bucket)
        left += widths
    margin = runs[0]["margin"]
    ax.axvline(100, color="black", lw=1.5)
    for edge in (100 * (1 - margin), 100 * (1 + margin)):
        ax.axvline(edge, color="black", lw=0.8, ls="--")
    for i, r in enumerate(runs):
        ms = r["end_to_end_ms"]["median"]
        ax.text(max(left[i] * 100, 100 * (1 + margin)) + 2, i, f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.3g} ms",
                va="center", fontsize=8)
    ax.set_xlim(0, max(130, left.max() * 100 + 25))
    ax.set_xlabel("share of the end-to-end time, % (medians over runs; solid line: 100%, dashed: the margin)")
    ax.invert_yaxis()
    ax.set_title(f"Where the time goes, per build and runtime (batch {runs[0]['batch_size']})")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="center right")
    fig.subplots_adjust(left=0.17, right=0.78, top=0.9)
    add_caption(fig, f"{provenance_caption(profile)}. Per bucket: median over {runs[0]['end_to_end_ms']['n']} "
                     f"profiled runs of its kernels' sum; end to end: median of as many plain runs, "
                     f"interleaved (the number at each bar). Kernels must add up to it within {margin:.0%}.")
    return fig


def roofline(profile: dict):
    """Each kernel that computes (FLOPs > 0) at its arithmetic intensity and achieved rate,
    under the machine's measured compute peak and memory bandwidth."""
    peaks = profile["peaks"]
    peak, bandwidth = peaks["peak_gflops"], peaks["bandwidth_gbs"]
    fig, ax = plt.subplots(figsize=(8, 5.6))
    runs = profile["runs"]
    labels = [r["label"] for r in runs]
    points = []
    for r in runs:
        colour, marker = style(r["label"], [x for x in labels if x.startswith("tvm")])
        ks = [k for k in r["kernels"] if k["kind"] == "kernel" and k["flops"] and k["gflops_per_s"]]
        if not ks:
            continue
        x = np.array([k["intensity"] for k in ks])
        y = np.array([k["gflops_per_s"] for k in ks])
        size = 20 + 200 * np.array([k["ms"] for k in ks]) / max(r["end_to_end_ms"]["median"], 1e-9)
        ax.scatter(x, y, s=size, color=colour, marker=marker, alpha=0.6, label=r["label"], edgecolors="black",
                   linewidths=0.3)
        points += list(zip(x, y))
    xs = np.logspace(-2, 3, 200)
    ax.plot(xs, np.minimum(peak, bandwidth * xs), color="black", lw=1.5)
    ax.axhline(peak, color="black", lw=0.5, ls=":")
    ax.text(xs[-1], peak * 1.08, f"measured sgemm {peak:.0f} GFLOP/s", ha="right", fontsize=8)
    ax.text(0.012, bandwidth * 0.012 * 1.25, f"memcpy {bandwidth:.1f} GB/s", rotation=0, fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if points:
        ys = [p[1] for p in points]
        ax.set_ylim(min(min(ys) / 3, bandwidth * 0.01), peak * 3)
    ax.set_xlabel("arithmetic intensity, FLOP/byte")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("Roofline of the kernels that compute (marker area: share of end-to-end time)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    add_caption(fig, f"{provenance_caption(profile)}. Peak: {peaks['gemm']} ({peaks.get('numpy_blas', '')}); "
                     f"bandwidth: {peaks['copy']}. Bytes are compulsory traffic (each argument once; "
                     f"gathers count the rows read). Data-movement kernels (0 FLOPs) are in the tables.")
    return fig


def experiments_comparison(table):
    """Throughput ratio to ONNX Runtime for every build/runtime of every experiment compared
    (`table` from `report.compare_experiments`)."""
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.35 * max(len(table), 1)))
    if len(table):
        labels = [f"{e} / {r}" for e, r in zip(table["experiment"], table["runtime"])]
        tvm = sorted({r for r in table["runtime"] if r.startswith("tvm")})
        colours = [style(r, tvm)[0] for r in table["runtime"]]
        ax.barh(labels, table["ratio to onnxruntime"], color=colours)
        for i, v in enumerate(table["ratio to onnxruntime"]):
            ax.text(v * 1.05, i, f"{v:.3g}x", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xlim(right=max(table["ratio to onnxruntime"]) * 4)
    ax.invert_yaxis()
    fig.subplots_adjust(left=0.32, right=0.97)
    ax.set_xlabel("throughput / ONNX Runtime's, same experiment and batch (log scale)")
    ax.set_title("Across experiments: each build and runtime against ONNX Runtime")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    cpus = sorted(set(table["cpu"])) if len(table) else []
    add_caption(fig, f"CPU: {'; '.join(cpus) or 'n/a'}. Each bar: median samples/s at the experiment's "
                     "batch size and the most threads, divided by ONNX Runtime's in the same interleaved run.")
    return fig


ZIPF_REFERENCE = ("a power law of exponent 1 (Zipf: frequency ~ 1/rank), the law the generated test data draws ids "
                  "from. Criteo's click logs are power-law skewed, a few hot ids taking most lookups (the premise of "
                  "FAE, Adnan et al., VLDB 2022, and CAFE, Zhang et al., SIGMOD 2024, arXiv:2312.03256); their "
                  "per-table exponents are not drawn, as none was checked here")


def id_rank_frequency(exp: Experiment, tables: int = 26) -> Path:
    """Each table's lookups per id against the id's rank, log-log, beside a power law of
    exponent 1 through the same number of lookups: a straight line of slope -1 is Zipf's law.
    Saved to the experiment's figures (`id_rank_frequency.png`); returns its path."""
    counts = id_counts(exp)[:tables]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for k, c in enumerate(counts):
        ax.loglog(np.arange(1, len(c) + 1), c / c.sum(), color="tab:blue", alpha=0.35, lw=1,
                  label="test data, one line per table" if k == 0 else None)
    longest = max(len(c) for c in counts)
    ranks = np.arange(1, longest + 1)
    ax.loglog(ranks, (1 / ranks) / np.sum(1 / ranks), color="black", ls="--", lw=1.5, label="frequency ~ 1/rank")
    ax.set_xlabel("rank of the id (1: the most looked-up)")
    ax.set_ylabel("share of the table's lookups")
    ax.set_title(f"Id skew: share of lookups against the id's rank ({int(counts[0].sum()):,} lookups per table)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    add_caption(fig, f"Reference line: {ZIPF_REFERENCE}. Test data: {exp.name}'s.")
    path = save(fig, exp.figures_dir, "id_rank_frequency")
    plt.close(fig)
    return path


def perf_vs_peers(rows: list[dict], caption: str = ""):
    """benchmarks/bench_perf.py's rows: per batch size, every runtime's share of the machine's
    measured peak of its own precision (reduced precision hatched; the legend has each row's
    precision and AUC ratio per batch size), TVM's bars labelled with their ratio to the best peer that
    keeps 99.9 % of the AUC; one panel per way of using the cores (one request at a time on all
    of them; parallel single-thread requests)."""
    modes = [m for m in ("latency", "parallel") if any(r.get("mode", "latency") == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(10 * len(modes), 4.6), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        mine = [r for r in rows if r.get("mode", "latency") == mode]
        batches = sorted({r["batch"] for r in mine})
        names = _runtimes(mine)
        tvm_names = [n for n in names if n.startswith("tvm")]
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            base = name.split(" x")[0]
            colour = style(base)[0] if not base.startswith("tvm") else style(name, tvm_names)[0]
            by_batch = {r["batch"]: r for r in mine if r["runtime"] == name}
            first = next(iter(by_batch.values()))
            aucs = [_auc_text(by_batch[b].get("auc_ratio")) for b in batches if b in by_batch]
            auc = f", AUC {' / '.join(aucs)}" if any(a != "-" for a in aucs) else ""
            label = f"{name} ({first.get('precision', 'fp32')}{auc})"
            xs = [i + (k - (len(names) - 1) / 2) * width for i, b in enumerate(batches) if b in by_batch]
            ys = [100 * by_batch[b]["fraction_of_peak"] for b in batches if b in by_batch]
            ax.bar(xs, ys, width, color=colour, label=label, hatch=hatch(name, first.get("precision", "fp32")),
                   edgecolor="white" if base.startswith("tvm") else None)
            if name.startswith("tvm"):
                for x, b in zip(xs, [b for b in batches if b in by_batch]):
                    r = by_batch[b]
                    ax.annotate(f"{r['ratio_to_best_peer']:.2f}x", (x, 100 * r["fraction_of_peak"]),
                                ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("% of the machine's peak of its precision\n(fp32 sgemm, int8 GEMM; same run)", fontsize=9)
        title = ("one request at a time, all cores" if mode == "latency"
                 else f"{mine[0].get('streams', 2)} requests in flight, 1 thread each")
        ax.set_title(f"{title}\n(label: TVM samples/s / best peer's that keeps 99.9 % of the AUC)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them
        ax.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(left=0.07, right=0.62 if len(modes) == 1 else 0.8, wspace=0.9)  # the legends on the right
    if caption:
        add_caption(fig, caption)
    return fig


def _auc_text(ratio: float | None, gate: float = 0.999) -> str:
    """An AUC ratio for a legend: 4 decimals, and whether it fails the 99.9 % gate."""
    if ratio is None:
        return "-"
    return f"{ratio:.4f}" + (" (fails)" if ratio < gate else "")


REFERENCES = {"onnxruntime": ("ONNX Runtime", "tab:blue"), "python_vm_custom": ("custom kernels", "tab:red")}


def reference_latencies(experiment: Experiment, batch_size: int | None = None) -> dict[str, float]:
    """The horizontal lines of the tuning curve, per-batch latency (s) by label: ONNX Runtime's
    and the custom-kernel build's, as the experiment last measured them (`onnxruntime`,
    `python_vm_custom`: every build's check measures ONNX Runtime too) at `batch_size`."""
    found = {}
    for name, (label, _) in REFERENCES.items():
        measured = experiment.measurement(name) or {}
        if measured.get("latency_ms_p50") and (batch_size is None or measured.get("batch_size") == batch_size):
            found[label] = float(measured["latency_ms_p50"]) * 1e-3
    return found


def _draw_references(axes, curve, references: dict[str, float]) -> list[str]:
    """A dashed line per peer on both panels, a dot where the curve first reaches it; returns
    one caption line per peer (where it crossed, or that it did not)."""
    colours = {label: colour for label, colour in REFERENCES.values()}
    notes = []
    for label, latency in references.items():
        colour = colours.get(label, "tab:gray")
        met = None if curve.empty else crossing(curve, latency)
        for ax, x in ((axes[0], "trial"), (axes[1], "t")):
            ax.axhline(latency * 1e3, color=colour, linestyle="--", linewidth=1, label=f"{label} {latency * 1e3:.2f} ms")
            if met:
                ax.plot([met[x]], [latency * 1e3], "o", color=colour, markersize=5)
        notes.append(f"{label}: {latency * 1e3:.2f} ms, reached at trial {met['trial']} ({met['t']:.0f} s)"
                     if met else f"{label}: {latency * 1e3:.2f} ms, not reached")
    if references:
        axes[0].legend(fontsize=7, loc="upper right")
    return notes


def plot_tuning_curve(experiment: Experiment | str, log_dir: str | Path | None = None, prepack: bool | None = None,
                      references: dict[str, float] | None = None):
    """The tuning curve against trials and against tuning time, saved to the experiment's
    figures folder (`tuning_curve.png`, or `tuning_curve_prepack.png`), with ONNX Runtime's
    and the custom kernels' measured latency per batch as horizontal lines (`references`,
    label -> seconds; default: the experiment's measurements at the log's batch size), so the
    reader sees where tuning crosses them. The caption names the machine the log was measured
    on (tasks.json), which need not be this one."""
    experiment = Experiment.of(experiment)
    folder = Path(log_dir) if log_dir else tuning_log_dir(experiment, resolve_prepack(experiment, prepack))
    curve = tuning_curve(folder)
    tasks = read_tasks(folder) or {}
    if references is None:
        references = reference_latencies(experiment, tasks.get("batch_size"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for ax, x, label in ((axes[0], "trial", "trials"), (axes[1], "t", "tuning time (s)")):
        if not curve.empty:
            ax.step(curve[x], curve["estimated_latency_s"] * 1e3, where="post", color="tab:green")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    notes = _draw_references(axes, curve, references)
    axes[0].set_ylabel("estimated latency per batch (ms)")
    axes[0].set_yscale("log")
    target = tasks.get("target", {})
    peers = ("\nLines: end-to-end latency per batch measured in this experiment (Python, median), against the "
             "kernel-sum estimate; " + "; ".join(notes)) if notes else ""
    fig.suptitle(f"MetaSchedule tuning of {experiment.name}: batch {tasks.get('batch_size', '?')}"
                 f"{', prepacked weights' if tasks.get('prepack') else ''}, {len(tasks.get('tasks', []))} kernels, "
                 f"{len(trials_frame(folder))} trials. Estimate: sum over kernels of calls x the faster of best "
                 f"trial so far and untuned kernel (each timed alone, cache flushed)\n{tasks.get('cpu', 'CPU not recorded')} "
                 f"({target.get('mcpu', '?')}, {target.get('num-cores', '?')} cores), TVM "
                 f"{tasks.get('tvm_version', '?')}{peers}", fontsize=8)
    fig.tight_layout()
    name = CURVE_FIGURE.replace(".png", "_prepack.png") if tasks.get("prepack") else CURVE_FIGURE
    out = experiment.figures_dir / name
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)  # a notebook shows the returned figure once, not twice
    return fig
