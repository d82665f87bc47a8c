"""Tables and charts the notebooks and the command line show."""
from __future__ import annotations

import numpy as np
import pandas as pd

from dlrmlib.core.experiment import Experiment
from dlrmlib.formats.normalise import load_graph
from dlrmlib.formats.testdata import read_test_data, read_test_meta
from dlrmlib.formats.weights import read_manifest


def experiment_overview(exp: Experiment) -> pd.DataFrame:
    """What the experiment is: its model, batch size and test data, one row per fact."""
    params = exp.params
    meta = read_test_meta(exp.testdata_dir)
    tables = meta["tables"]
    model = load_graph(exp.normalised_model)
    weights = sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer)
    rows = {
        "model": params["onnx_model"] or f"generated: preset {params['preset']}, {params['style']} embedding bags",
        "batch size": params["batch_size"],
        "embedding bags": params["bags"],
        "tables": f"{len(tables)} tables, {min(tables):,} to {max(tables):,} rows ({sum(tables):,} in all)",
        "weights": f"{len(model.graph.initializer)} tensors, {weights / 2**20:,.1f} MiB",
        "test samples": meta["samples"],
        "test data": meta["source"],
        "reference outputs": meta["reference_runtime"],
        "folder": str(exp.root),
    }
    return pd.DataFrame({"value": list(rows.values())}, index=list(rows))


HOT_SHARE = 0.01  # "hot": the hottest 1% of the ids seen in a table


def id_counts(exp: Experiment) -> list[np.ndarray]:
    """Per table, how often each id seen in the test data is looked up, most frequent first."""
    data = read_test_data(exp.testdata_dir)
    return [np.sort(np.unique(data.sparse[:, t], return_counts=True)[1])[::-1] for t in range(data.sparse.shape[1])]


def id_skew(exp: Experiment) -> pd.DataFrame:
    """How skewed the test ids are, at any scale: per table, the share of lookups that hit the
    hottest 1% of the ids seen (not of the table's rows: 1,024 samples touch a few hundred of
    100,000 rows, and 1% of the rows would hold every one of them)."""
    tables = read_test_meta(exp.testdata_dir)["tables"]
    rows = []
    for t, (size, counts) in enumerate(zip(tables, id_counts(exp))):
        hot = max(1, int(np.ceil(HOT_SHARE * len(counts))))
        rows.append({"table": t, "rows": size, "lookups": int(counts.sum()), "distinct ids seen": len(counts),
                     "hottest 1% of ids seen": hot,
                     "share of lookups they take": round(float(counts[:hot].sum() / counts.sum()), 3),
                     "hottest id's share": round(float(counts[0] / counts.sum()), 3)})
    return pd.DataFrame(rows).set_index("table")


def build_summary(manifest_path) -> pd.DataFrame:
    m = read_manifest(manifest_path)
    rows = {"library": m["library"]["file"], "batch size": m["batch_size"],
            "target": f"{m['target']['mcpu']} ({m['target']['mtriple']}, {m['target']['num-cores']} cores)",
            "cpu": m.get("cpu", ""), "TVM": m["tvm_version"], "tuned": m["build"]["tuned"],
            "trials": m["build"]["trials"], "parameters": len(m["params"]),
            "weights": f"{sum(p['bytes'] for p in m['params']) / 2**20:,.1f} MiB in {m['weights']['dir']}"}
    return pd.DataFrame({"value": list(rows.values())}, index=list(rows))


def measurements_table(exp: Experiment) -> pd.DataFrame:
    """Every measurement with a headline figure (a runtime and its samples/s: a build checked in
    Python, the native runner, ONNX Runtime, a LoadGen run), one row each, the columns people
    compare. The sweeps (`bench`, `profile`) have tables of their own."""
    columns = ["runtime", "build", "batch_size", "samples_per_s", "latency_ms_p50", "latency_ms_p99",
               "max_abs_error", "auc"]
    rows = []
    for name, m in exp.measurements().items():
        if "runtime" not in m or "samples_per_s" not in m:
            continue
        rows.append({"measurement": name, **{c: m.get(c) for c in columns}})
    return pd.DataFrame(rows, columns=["measurement", *columns]).set_index("measurement")
