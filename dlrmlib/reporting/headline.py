"""The report's first screen: one chart and one small table that answer the reader's question
(which runtime is fastest at each batch size, by how much, at what accuracy), and the sentences
that stand in for the rows a benchmark could not measure, said once instead of row by row."""
from __future__ import annotations

import base64
import html
from collections import defaultdict

import numpy as np
import pandas as pd

from dlrmlib.building.gate import MIN_AUC_RATIO
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.machine import caption as provenance_caption
from dlrmlib.measuring.bench import bench_table
from dlrmlib.reporting import plots

HEADLINE_FIGURE = "headline"
HEADLINE_TAG = "headline"  # the notebook cell that shows the headline; the report shows it first instead
LONG_LOG_LINES = 4  # a log longer than this is folded in the report
WIDE_TABLE = (12, 8)  # rows, columns: a table larger than this is folded in the report
PEERS = ("onnxruntime", "openvino", "pytorch-eager", "pytorch-compile")
TVM = "tvm"
REDUCED_SUFFIXES = ("-bf16", "-int8", "-int8-static")  # peers at their best precision (dlrmlib.backends.factory)
MISSING = "–"  # what a cell shows when there is nothing to show (never NaN)
SHOWN = ("batch", TVM, "TVM build", "precision", "% peak", "best peer", "its samples/s", "x best peer", "AUC / ref.")


def family(runtime: str) -> str:
    """The runtime a benchmark row belongs to: every TVM build is one runtime, "tvm"."""
    return TVM if runtime.startswith("tvm") else runtime


def _batch_rows(bench: dict) -> list[dict]:
    """The batch sweep's measured rows (it runs at the most threads)."""
    return [r for r in bench["rows"] if r.get("status") == "ok" and "batch" in r.get("sweeps", [])
            and r.get("samples_per_s")]


def best_builds(bench: dict) -> dict[tuple[int, str], dict]:
    """(batch size, runtime) -> the fastest measured row there; TVM's builds compete as one
    runtime, so its best build at each batch size stands for it."""
    best: dict[tuple[int, str], dict] = {}
    for r in _batch_rows(bench):
        key = (r["batch_size"], family(r["runtime"]))
        if key not in best or r["samples_per_s"] > best[key]["samples_per_s"]:
            best[key] = r
    return best


def _passes_gate(row: dict) -> bool:
    """A peer counts when it keeps the accuracy (an unknown AUC ratio: its fp32 run)."""
    return row.get("auc_ratio") is None or row["auc_ratio"] >= MIN_AUC_RATIO


def _best_peer(best: dict, batch: int) -> dict | None:
    """The fastest other runtime at this batch size, at whatever precision, if it passes the
    same accuracy gate as TVM's reduced-precision builds."""
    peers = [r for (b, name), r in best.items() if b == batch and name != TVM and _passes_gate(r)]
    return max(peers, key=lambda r: r["samples_per_s"]) if peers else None


def _runtime_columns(best: dict) -> list[str]:
    """Every runtime measured, the usual peers first, then the others (e.g. openvino-bf16), then TVM:
    the fastest peer is always one of the columns."""
    names = {name for _, name in best}
    others = sorted(names - set(PEERS) - {TVM})
    return [p for p in PEERS if p in names] + others + ([TVM] if TVM in names else [])


def _auc_ratio(exp: Experiment | None, build_tag: str) -> float | None:
    """A TVM build's AUC over the reference's on the test labels (its Python check,
    measurement `python_vm_<tag>`), when known."""
    m = exp.measurement(f"python_vm_{build_tag}") if exp is not None else None
    m = (m or {}).get("scored") or m  # after the calibration slice, as the peers' (older checks: every sample)
    if not m or not m.get("auc") or not m.get("reference_auc"):
        return None
    return m["auc"] / m["reference_auc"]


def _precision(row: dict) -> str:
    return row.get("precision") or "fp32"


def headline_frame(bench: dict, exp: Experiment | None = None) -> pd.DataFrame:
    """One row per batch size: each runtime's best samples/s, TVM's best build with its
    precision, its ratio to the best peer and its AUC ratio. Numbers, NaN where nothing ran."""
    best = best_builds(bench)
    runtimes = _runtime_columns(best)
    rows = []
    for batch in sorted({b for b, _ in best}):
        row: dict = {"batch": batch}
        for name in runtimes:
            r = best.get((batch, name))
            row[name] = r["samples_per_s"] if r else np.nan
        tvm, peer = best.get((batch, TVM)), _best_peer(best, batch)
        tag = tvm["runtime"].removeprefix("tvm-") if tvm else None
        row["TVM build"] = tag
        row["precision"] = _precision(tvm) if tvm else None
        row["% peak"] = 100 * tvm["fraction_of_peak"] if tvm and tvm.get("fraction_of_peak") else np.nan
        row["best peer"] = peer["runtime"] if peer else None
        row["its samples/s"] = peer["samples_per_s"] if peer else np.nan
        row["x best peer"] = tvm["samples_per_s"] / peer["samples_per_s"] if tvm and peer else np.nan
        row["AUC / ref."] = (_auc_ratio(exp, tag) if tag else None) or np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def headline_table(bench: dict, exp: Experiment | None = None) -> pd.DataFrame:
    """headline_frame's TVM and best-peer columns, formatted to read at a glance: samples/s
    with thousands separators, ratios with an x, a dash where nothing ran; a column with
    nothing known is left out."""
    frame = headline_frame(bench, exp)
    # small enough for the first screen: every runtime's figure is in the chart
    frame = frame[[c for c in SHOWN if c in frame.columns]].dropna(axis=1, how="all")
    shown = pd.DataFrame(index=frame.index)
    for col in frame.columns:
        values = frame[col]
        if col == "batch":
            shown[col] = values.astype(int).astype(str)
        elif col == "x best peer":
            shown[col] = [f"{v:.2f}x" if pd.notna(v) else MISSING for v in values]
        elif col == "% peak":
            shown[col] = [f"{v:.0f} %" if pd.notna(v) else MISSING for v in values]
        elif col == "AUC / ref.":
            shown[col] = [f"{v:.4f}" if pd.notna(v) else MISSING for v in values]
        elif col in ("TVM build", "precision", "best peer"):
            shown[col] = [v if isinstance(v, str) else MISSING for v in values]
        else:
            shown[col] = [f"{v:,.0f}" if pd.notna(v) else MISSING for v in values]
    return shown.rename(columns={TVM: "TVM"})


def table_legend(bench: dict) -> str:
    """What the table's columns mean, and the peers' precision (fp32 unless a row says otherwise)."""
    peers = {f"{name} {_precision(r)}" for (_, name), r in best_builds(bench).items() if name != TVM}
    precision = ("peers run fp32" if all(p.endswith(" fp32") for p in peers)
                 else f"peers: {', '.join(sorted(peers))}")
    return (f"samples/s of TVM's fastest build and of the fastest peer ({precision}; every runtime in the chart); "
            f"x best peer: TVM's over the fastest other "
            f"runtime's that keeps {MIN_AUC_RATIO:.1%} of the reference AUC, at any precision; % peak: TVM's share of the machine's "
            f"peak of its precision (fp32 sgemm, int8 GEMM through PyTorch/oneDNN); AUC / ref.: the TVM build's AUC on the "
            f"test labels over ONNX Runtime's, after the calibration slice.")


def headline_sentence(bench: dict) -> str:
    """TVM's best build against the best peer at each batch size, in one sentence."""
    best = best_builds(bench)
    parts = []
    for batch in sorted({b for b, _ in best}):
        tvm, peer = best.get((batch, TVM)), _best_peer(best, batch)
        if tvm and peer:
            parts.append(f"{tvm['samples_per_s'] / peer['samples_per_s']:.2f}x {peer['runtime']} at batch {batch} "
                         f"({tvm['runtime']})")
    threads = max(bench["threads"])
    if not parts:
        return f"No batch size has both a TVM build and a peer measured ({threads} threads)."
    return f"TVM's fastest build against the fastest peer, {threads} threads: {'; '.join(parts)}."


def unmeasured_notes(bench: dict) -> list[str]:
    """One sentence per reason rows were not measured (instead of a row of NaN each): where
    TVM has builds, TVM's thread pool, and any runtime that failed."""
    notes = []
    sweep = sorted({b for b in bench.get("batch_sizes", [])})
    by_series: dict[str, set[int]] = defaultdict(set)
    for tag, batch in (bench.get("tvm_builds") or {}).items():
        by_series[plots.series(f"tvm-{tag}")].add(batch)
    groups: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for name, batches in sorted(by_series.items()):
        if set(sweep) - batches:
            groups[tuple(sorted(batches))].append(name)
    for batches, names in groups.items():
        who = "TVM" if len(names) == len(by_series) else ", ".join(names)
        only = "only" if len(batches) == 1 else "only (a TVM library is compiled for one batch size)"
        notes.append(f"{who} built for batch {', '.join(map(str, batches))} {only}.")
    failed: dict[str, list[dict]] = defaultdict(list)
    for r in bench["rows"]:
        if r.get("status") != "ok" and not r["status"].startswith("no build for batch"):
            failed[_reason(r["status"])].append(r)
    for reason, rows in failed.items():
        names = sorted({r["runtime"] for r in rows})
        who = "TVM" if all(n.startswith("tvm") for n in names) else ", ".join(names)
        where = ", ".join(f"batch {b} x {t} threads" for b, t in sorted({(r["batch_size"], r["threads"]) for r in rows}))
        notes.append(f"{who}: {reason} (not measured at {where}).")
    return notes


def notes(bench: dict):
    """unmeasured_notes as a list to display in a notebook."""
    from IPython.display import Markdown

    return Markdown("\n".join(f"- {n}" for n in unmeasured_notes(bench)) or "Every configuration was measured.")


def _reason(status: str) -> str:
    """A status without its per-row numbers, so equal reasons group."""
    if status.startswith("not measured: TVM's thread pool"):
        return "measured only at the thread count of TVM's pool, sized once per process (TVM_NUM_THREADS)"
    return status


def measured_table(bench: dict, sweep: str) -> pd.DataFrame:
    """A sweep's measured rows (the unmeasured ones are unmeasured_notes' sentences)."""
    table = bench_table(bench, sweep)
    if table.empty:
        return table
    return table[table["status"] == "ok"].drop(columns="status").dropna(axis=1, how="all").reset_index(drop=True)


# -- the chart and the HTML block ----------------------------------------------------------------

def headline_chart(bench: dict):
    """Samples/s of each runtime's best build at each batch size, bars grouped by batch size
    (log scale), TVM's bar labelled with its ratio to the best peer."""
    import matplotlib.pyplot as plt

    best = best_builds(bench)
    batches = sorted({b for b, _ in best})
    names = _runtime_columns(best)
    fig, ax = plt.subplots(figsize=(7.2, 3.9))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        xs, ys = [], []
        for i, b in enumerate(batches):
            if (b, name) in best:
                xs.append(i + (k - (len(names) - 1) / 2) * width)
                ys.append(best[(b, name)]["samples_per_s"])
        # a peer at reduced precision (openvino-bf16) in its fp32 run's colour, hatched
        base = next((name.removesuffix(s) for s in REDUCED_SUFFIXES[::-1] if name.endswith(s)), name)
        colour = plots.TVM_COLOURS[0] if name == TVM else plots.style(base)[0]
        precision = next((_precision(r) for (_, n), r in best.items() if n == name), "fp32")
        ax.bar(xs, ys, width, color=colour, hatch=plots.hatch(name, precision) if name != TVM else None,
               edgecolor="white",
               label="TVM (best build)" if name == TVM else name)
        if name == TVM:
            for x, y, b in zip(xs, ys, [b for b in batches if (b, TVM) in best]):
                peer = _best_peer(best, b)
                if peer:
                    ax.annotate(f"{y / peer['samples_per_s']:.2f}x", (x, y), ha="center", va="bottom", fontsize=8,
                                fontweight="bold")
    ax.set_yscale("log")
    tallest = max((r["samples_per_s"] for r in best.values()), default=1.0)
    ax.set_ylim(top=tallest * 15)  # room for the legend above the bars
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s (median, log scale)")
    ax.set_title(f"Throughput at each batch size, each runtime's best build ({max(bench['threads'])} threads);\n"
                 f"label: TVM / best peer", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    plots.add_caption(fig, provenance_caption(bench))
    return fig


def headline_html(exp: Experiment) -> str:
    """The chart (embedded, saved as figures/headline.png too), the sentence, the table and
    the notes, side by side: the report's first screen."""
    import matplotlib.pyplot as plt

    bench = exp.measurement("bench")
    if not bench:
        return f"<p>Experiment <code>{html.escape(exp.name)}</code>: no benchmark yet (run <code>dlrm bench</code>).</p>"
    fig = headline_chart(bench)
    path = plots.save(fig, exp.figures_dir, HEADLINE_FIGURE)
    plt.close(fig)
    image = base64.b64encode(path.read_bytes()).decode()
    table = headline_table(bench, exp).to_html(index=False, border=0)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in unmeasured_notes(bench))
    return (f"<style>#dlrm-headline-table table{{font-size:12.5px}} #dlrm-headline-table td{{white-space:nowrap}}"
            f" #dlrm-headline-table th,#dlrm-headline-table td{{padding:0.3em 0.45em}}</style>"
            f'<div id="dlrm-headline" style="display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start">'
            f'<img id="dlrm-headline-chart" alt="throughput at each batch size" style="width:520px;max-width:100%" '
            f'src="data:image/png;base64,{image}">'
            f'<div style="flex:1;min-width:560px"><p><b>{html.escape(headline_sentence(bench))}</b></p>'
            f'<div id="dlrm-headline-table">{table}</div>'
            f'<p style="font-size:80%;color:#555">{html.escape(table_legend(bench))}</p>'
            f'<ul style="font-size:85%;color:#444">{notes}</ul>'
            f'<p style="font-size:80%;color:#555">Machine: {html.escape(provenance_caption(bench))}. '
            f'Timings interleaved round-robin; a shared machine slows every runtime alike.</p></div></div>')


# -- folding the report's long outputs -------------------------------------------------------------

def _details(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def _table_shape(markup: str) -> tuple[int, int]:
    """(body rows, header cells) of the first HTML table in `markup`."""
    first_row = markup[markup.find("<tr"):markup.find("</tr>")]
    return markup.count("<tr") - markup[:markup.find("</thead>")].count("<tr"), first_row.count("<th")


def collapse_outputs(outputs: list) -> list:
    """A cell's outputs for the report: consecutive log lines merged, logs longer than a few
    lines and tables larger than WIDE_TABLE folded into <details> (a click opens them)."""
    import nbformat

    merged: list = []
    for o in outputs:
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {}):
            continue  # a progress bar: a static page has no widget to draw, and it is done anyway
        if (o.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == o.get("name")):
            merged[-1] = nbformat.v4.new_output("stream", name=o["name"], text=merged[-1]["text"] + o["text"])
        else:
            merged.append(o)
    folded = []
    for o in merged:
        kind, data = o.get("output_type"), o.get("data", {})
        if kind == "stream" and o.get("text", "").count("\n") > LONG_LOG_LINES:
            text = o["text"]
            markup = _details(f"log: {text.count(chr(10))} lines", f"<pre>{html.escape(text)}</pre>")
            folded.append(nbformat.v4.new_output("display_data", data={"text/html": markup}))
        elif kind in ("display_data", "execute_result") and "<table" in str(data.get("text/html", "")):
            markup = str(data["text/html"])
            rows, columns = _table_shape(markup)
            if rows > WIDE_TABLE[0] or columns > WIDE_TABLE[1]:
                markup = _details(f"table: {rows} rows x {columns} columns", markup)
            folded.append(nbformat.v4.new_output("display_data", data={"text/html": markup}))
        else:
            folded.append(o)
    return folded
