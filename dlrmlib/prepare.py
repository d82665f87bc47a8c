"""Setup: the experiment's model, its normalised form and its test data folder.

`prepare` gets a DLRM ONNX model (generated with the MLPerf architecture, or the user's own),
normalises it for TVM at the experiment's batch size, and makes the test data: inputs,
labels, and reference outputs from ONNX Runtime.
"""
from __future__ import annotations

import numbers
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from dlrmlib.backends import predict_all
from dlrmlib.backends.onnxruntime import OnnxRuntimeBackend
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import DEFAULT_EXPERIMENT, Experiment
from dlrmlib.core.files import atomic_path, clone_or_copy
from dlrmlib.formats.model import generate_model
from dlrmlib.formats.normalise import BAG_LAYOUTS, check_external_data, embedding_tables, load_graph, normalise_model
from dlrmlib.formats.presets import preset_config
from dlrmlib.formats.testdata import (
    MAX_IDS_PER_BAG,
    TestData,
    draw_labels,
    read_mlperf_day23,
    synthesize_inputs,
    write_test_data,
)
from dlrmlib.formats.weights import extract_weights

MODEL_KEYS = ("preset", "table_rows", "seed", "style", "onnx_model")


def _bag_layout(bags: str | None, ids_per_bag: int, mlperf_data) -> str:
    """The bag layout: several ids per bag need (and imply) `any`; MLPerf's day-23 data is one-hot."""
    whole = isinstance(ids_per_bag, numbers.Integral) and not isinstance(ids_per_bag, bool)
    if not whole or not 1 <= ids_per_bag <= MAX_IDS_PER_BAG:
        raise DlrmError(f"ids per bag must be an integer from 1 to {MAX_IDS_PER_BAG} (each table's K x batch ids are "
                        f"gathered at once; MLPerf's multi-hot bags hold at most 100), got {ids_per_bag!r}")
    if mlperf_data and ids_per_bag > 1:
        raise DlrmError(f"--mlperf-data holds one id per bag (MLPerf's day-23 layout); it cannot fill {ids_per_bag} "
                        "ids per bag: drop --ids-per-bag")
    if bags is None:
        return "any" if ids_per_bag > 1 else "one_per_bag"
    if bags not in BAG_LAYOUTS:
        raise DlrmError(f"bags must be one of {BAG_LAYOUTS}, got {bags!r}")
    if bags == "one_per_bag" and ids_per_bag > 1:
        raise DlrmError(f"--bags one_per_bag takes one id per bag, not {ids_per_bag}; --ids-per-bag > 1 needs "
                        "--bags any (the default then)")
    return bags


def _experiment_params(preset, onnx_model, batch_size, samples, seed, table_rows, style, bags, mlperf_data,
                       ids, ids_per_bag) -> dict:
    if batch_size is None or int(batch_size) < 1:
        raise DlrmError(f"batch size must be a positive integer, got {batch_size}")
    if int(samples) < 1:
        raise DlrmError(f"samples must be a positive integer, got {samples}")
    bags = _bag_layout(bags, ids_per_bag, mlperf_data)
    if onnx_model is None:
        preset_config(preset, table_rows)  # fails early on an unknown preset
    elif Path(onnx_model).is_dir():
        raise DlrmError(f"--onnx-model {onnx_model} is a folder; name the .onnx file in it")
    return {"preset": None if onnx_model else preset,
            "onnx_model": str(Path(onnx_model).resolve()) if onnx_model else None,
            "table_rows": table_rows, "seed": int(seed), "style": None if onnx_model else style,
            "batch_size": int(batch_size), "samples": int(samples), "bags": bags, "ids_per_bag": int(ids_per_bag),
            "mlperf_data": str(mlperf_data) if mlperf_data else None, "ids": ids}


def _copy_user_model(source: Path, experiment: Experiment) -> None:
    """The user's model into the experiment: the graph and its external data copied (reflinked
    where the file system can), since ONNX refuses data files that are hard or symbolic links."""
    model = load_graph(source, inline_small=False)  # every external data file goes along
    for data in check_external_data(model, source.parent):
        clone_or_copy(data, experiment.model_dir / data.relative_to(source.parent))
    with atomic_path(experiment.source_model) as tmp:
        shutil.copyfile(source, tmp)


def _make_model(params: dict, experiment: Experiment, log) -> None:
    if params["onnx_model"]:
        log(f"[prepare] importing {params['onnx_model']}")
        _copy_user_model(Path(params["onnx_model"]), experiment)
    else:
        config = preset_config(params["preset"], params["table_rows"])
        log(f"[prepare] generating the {params['preset']} DLRM ({config.embedding_bytes / 2**30:.2f} GiB "
            f"of embeddings, {params['style']} embedding bags)")
        generate_model(config, experiment.source_model, seed=params["seed"], style=params["style"])


def normalise_source(source: Path, params: dict) -> onnx.ModelProto:
    """The model at `source` normalised (graph only; its weights are never read)."""
    model = load_graph(source)
    check_external_data(model, source.parent)
    return normalise_model(model, params["batch_size"], params["bags"], indices_per_bag=params.get("ids_per_bag", 1))


def _normalise(params: dict, experiment: Experiment, log, normalised: onnx.ModelProto | None = None
               ) -> onnx.ModelProto:
    per_bag = f", {params['ids_per_bag']} ids per bag" if params["ids_per_bag"] > 1 else ""
    log(f"[prepare] normalising for batch {params['batch_size']} ({params['bags']} bags{per_bag})")
    if normalised is None:
        normalised = normalise_source(experiment.source_model, params)
    # Saved beside the source model, so the external data locations still resolve.
    with atomic_path(experiment.normalised_model) as tmp:
        tmp.write_bytes(normalised.SerializeToString())
    return normalised


def _make_test_data(params: dict, experiment: Experiment, tables: list[int], log) -> TestData:
    if params["mlperf_data"]:
        log(f"[prepare] reading MLPerf data {params['mlperf_data']}")
        data = read_mlperf_day23(params["mlperf_data"], tables, ids=params["ids"], samples=params["samples"])
        labels_from = "the data set"
    else:
        dense, sparse = synthesize_inputs(params["samples"], tables, params["seed"], params["ids_per_bag"])
        data = TestData(dense=dense, sparse=sparse, labels=np.zeros(len(dense), np.float32))
        labels_from = "drawn from the reference scores"
    log(f"[prepare] reference outputs for {len(data)} samples with ONNX Runtime")
    ort = OnnxRuntimeBackend(experiment.normalised_model, params["batch_size"])
    data.reference = predict_all(ort, data.dense, data.sparse, progress=True)
    if not params["mlperf_data"]:
        data.labels = draw_labels(data.reference, params["seed"])
    write_test_data(experiment.testdata_dir, data, {
        "tables": tables, "batch_size": params["batch_size"], "labels": labels_from,
        "source": params["mlperf_data"] or f"synthetic Criteo-like, seed {params['seed']}",
        "reference_runtime": f"onnxruntime {ort.version}"})
    return data


def prepare(experiment: str = DEFAULT_EXPERIMENT, preset: str = "small", onnx_model: str | Path | None = None,
            batch_size: int = 128, samples: int = 1024, seed: int = 0, table_rows=None, style: str = "loop",
            bags: str | None = None, mlperf_data: str | Path | None = None, ids: str = "reject",
            ids_per_bag: int = 1, root: str | Path | None = None,
            log: Callable[[str], None] = print) -> Experiment:
    """Create (or bring up to date) an experiment's model, normalised model, test data and
    weights folder. A model generated with the same parameters is reused. `ids_per_bag` K > 1:
    multi-hot bags, K ids in every bag of the test data (bags `any`, the default then)."""
    params = _experiment_params(preset, onnx_model, batch_size, samples, seed, table_rows, style, bags,
                                mlperf_data, ids, ids_per_bag)
    # A user's model is normalised before anything is written: a form dlrmlib cannot read
    # leaves no experiment behind.
    checked = normalise_source(Path(params["onnx_model"]), params) if params["onnx_model"] else None
    exp = Experiment.open(experiment, root, create=True)
    exp.preparing_marker.write_text("`dlrm prepare` started and has not finished\n")  # removed at the end
    old = exp.params if exp.params_path.is_file() else {}
    same_model = all(old.get(k) == params[k] for k in MODEL_KEYS) and exp.source_model.is_file()
    if not same_model:
        shutil.rmtree(exp.model_dir, ignore_errors=True)
        _make_model(params, exp, log)
    else:
        log(f"[prepare] reusing {exp.source_model}")
    exp.save_params(params)
    normalised = _normalise(params, exp, log, checked)
    tables = embedding_tables(normalised)
    _make_test_data(params, exp, tables, log)

    folder, specs, _ = extract_weights(exp)
    log(f"[prepare] weights folder {folder} ({len(specs)} parameters, "
        f"{sum(p.bytes for p in specs) / 2**20:.1f} MiB)")
    exp.preparing_marker.unlink()
    log(f"[prepare] experiment ready: {exp.root}")
    return exp
