"""Build: the normalised ONNX model and a recipe -> library (.so) + manifest (.json) + weights
folder, checked against the test data's reference outputs.

`build(experiment, recipe)` is the one way in; the recipes (dlrmlib.building.recipes) say how
the model is lowered: untuned, from a tuning log (plain or prepacked), or custom kernels. The
graph is read and hashed once per build and the plain weights folder written at most once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from onnx import helper

from dlrmlib.building.recipes import Custom, FromLog, Source, Untuned, best_recipe
from dlrmlib.building.gate import MIN_AUC_RATIO, apply_gate
from dlrmlib.building.verify import TOLERANCE, verify_build
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import atomic_path, sha256_file
from dlrmlib.core.machine import utc_now
from dlrmlib.core.target import cpu_description, host_target
from dlrmlib.core.tvmlog import quiet_tvm_log
from dlrmlib.formats.normalise import embedding_table_weights, embedding_tables, load_graph, normalise_model
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.tuning_log import resolve_prepack, tuning_log_dir
from dlrmlib.formats.weights import layout_checksums, model_identity, param_entries, write_manifest
from dlrmlib.frontend.relax import import_relax


@dataclass
class BuildResult:
    tag: str
    library: Path
    manifest: Path
    weights_dir: Path
    seconds: float
    verification: dict | None = None


def compile_library(mod, target: dict, path: Path, pipeline=None) -> Path:
    """Compile with the default Relax pipeline for the target (it fuses operators; plain
    `tvm.compile` on CPU does not) and export the shared library atomically."""
    import tvm  # deferred: TVM takes ~1.5 s to import
    from tvm import relax

    tvm_target = tvm.target.Target(target)
    pipeline = pipeline or relax.get_default_pipeline(tvm_target)
    with tvm_target, quiet_tvm_log():
        executable = tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline)
    with atomic_path(path) as tmp:
        so = tmp.with_suffix(".so")  # export_library picks the linker by the suffix
        try:
            executable.export_library(str(so))
            so.replace(tmp)
        finally:
            so.unlink(missing_ok=True)
    return path


def build(experiment: Experiment | str, recipe=None, verify: bool = True,
          log: Callable[[str], None] = print, min_auc_ratio: float = MIN_AUC_RATIO,
          batch_size: int | None = None) -> BuildResult:
    """Library + manifest + weights folder for the experiment's normalised model, lowered as
    `recipe` says (default: `Untuned()`); checked against the reference outputs when `verify`.
    A reduced-precision recipe is always verified and must pass the accuracy gate
    (dlrmlib.building.gate: AUC >= `min_auc_ratio` x the fp32 reference's).
    `batch_size`: build for another batch size than the experiment's (the model normalised
    again for it; same weights, so the same weights folder)."""
    import tvm  # deferred, as above

    experiment = Experiment.of(experiment)
    recipe = recipe or Untuned()
    started = time.perf_counter()
    if not experiment.normalised_model.is_file():
        raise DlrmError(f"experiment {experiment.name!r} is not prepared (no normalised model); run "
                        f"`dlrm prepare --experiment {experiment.name}` first")
    if batch_size is not None and batch_size < 1:
        raise DlrmError(f"batch size must be positive, got {batch_size}")
    model = load_graph(experiment.normalised_model)
    model_id = model_identity(experiment.normalised_model, model)  # the weights' identity at any batch size
    batch = batch_size or experiment.batch_size
    if batch != experiment.batch_size:
        model = normalise_model(load_graph(experiment.source_model), batch, experiment.params["bags"],
                                indices_per_bag=experiment.ids_per_bag)
    tables = embedding_tables(model)
    reduced = getattr(recipe, "precision", "fp32") != "fp32"
    if reduced and not verify:
        raise DlrmError(f"a {recipe.precision} build must pass the accuracy gate, which runs the test data: "
                        "drop --no-verify")
    if not 0 < min_auc_ratio <= 2:
        raise DlrmError(f"--min-auc-ratio must lie in (0, 2], got {min_auc_ratio}")
    if verify:  # a bad test data folder should fail before minutes of compiling, not after
        read_test_data(experiment.testdata_dir, tables, per_bag=experiment.ids_per_bag)
    log(f"[build] importing {experiment.normalised_model.name} into Relax" +
        (f" at batch {batch}" if batch != experiment.batch_size else ""))
    source = Source(experiment, model, model_id, import_relax(model), host_target(), log, batch_size=batch)
    with recipe.lower(source) as lowering:
        tag = lowering.tag or recipe.tag
        library = experiment.library_path(tag)
        log(f"[build] compiling for {source.target['mcpu']} ({source.target['mtriple']}) -> {library.name}")
        compile_library(lowering.mod, source.target, library, lowering.pipeline)
        for line in lowering.after:
            line()
        log("[build] writing the weights folder")
        weights_dir, params, layout, transform = (lowering.weights(library) if lowering.weights
                                                  else (*source.plain_weights(), None))
    manifest_path = experiment.manifest_path(tag)
    checksums = layout_checksums(weights_dir)  # as written, or verified when the folder was reused
    write_manifest(manifest_path, _manifest(source, tag, library, params, checksums, layout, transform, tables,
                                            tvm.__version__, lowering.info, lowering.precision))
    result = BuildResult(tag, library, manifest_path, weights_dir, time.perf_counter() - started)
    log(f"[build] {library.name} + {manifest_path.name} in {result.seconds:.1f} s")
    if verify:
        result.verification = verify_build(experiment, manifest_path, tolerance=float("inf") if reduced else TOLERANCE,
                                           log=log)
    if reduced:
        result.verification["gate"] = apply_gate(manifest_path, library, result.verification, min_auc_ratio, log)
    return result


def _manifest(source: Source, tag: str, library: Path, params, checksums: list[str], layout: str,
              transform: str | None, tables: list[int], tvm_version: str, info: dict,
              precision: dict) -> dict:
    """The contract between the library and its runners (docs/formats.md)."""
    model, batch = source.model, source.batch_size
    return {
        "library": {"file": library.name, "sha256": sha256_file(library)},
        "entry": "main",
        "batch_size": batch,
        "inputs": [{"name": i.name, "shape": [d.dim_value for d in i.type.tensor_type.shape.dim],
                    "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)).name}
                   for i in model.graph.input],
        "outputs": [{"name": model.graph.output[0].name, "shape": [batch, 1], "dtype": "float32"}],
        "params": param_entries(params, checksums),
        "weights": {"layout_id": layout, "dir": f"../weights/{layout}", "transform": transform},
        "embedding": {"tables": tables, "table_params": embedding_table_weights(model),
                      "dense_input": "input.1", "indices_input": "lS_i",
                      "offsets_input": "lS_o", "bags": source.experiment.params["bags"],
                      "ids_per_bag": source.experiment.ids_per_bag},
        "target": source.target,
        "precision": precision,
        "cpu": cpu_description(),
        "tvm_version": tvm_version,
        "build": {"tag": tag, "created": utc_now(), "model_id": source.model_id, **info},
    }


def build_best(experiment: Experiment | str, log_dir: str | Path | None = None, prepack: bool | None = None,
               verify: bool = True, log: Callable[[str], None] = print) -> BuildResult:
    """From the tuning log when it has records (an explicit `log_dir` must), else untuned;
    prepacked unless `prepack=False` or the experiment's only log is an older plain one."""
    experiment = Experiment.of(experiment)
    recipe = best_recipe(experiment, Path(log_dir) if log_dir else None, prepack)
    if not isinstance(recipe, FromLog) or not recipe.require_records:
        log(f"[build] no tuning records in {tuning_log_dir(experiment, resolve_prepack(experiment, prepack))}: "
            "building untuned")
    return build(experiment, recipe, verify, log)


def build_custom_batches(experiment: Experiment | str, batch_sizes: list[int],
                         log: Callable[[str], None] = print, precision: str = "fp32") -> list[BuildResult]:
    """The hand-written kernels built for more batch sizes (`custom_b<N>`; the experiment's own
    is the `custom` build), so that charts show TVM across batch sizes; with `precision` bf16 or
    int8, also `custom_<precision>_b<N>` (accuracy-gated: a refused one is said and left out, as
    the gate may refuse one batch size's kernels and not another's). Each is checked."""
    experiment = Experiment.of(experiment)
    results = []
    for b in sorted(set(batch_sizes)):
        if b == experiment.batch_size:
            continue
        results.append(build(experiment, Custom(tag=f"custom_b{b}"), log=log, batch_size=b))
        if precision != "fp32":
            try:
                results.append(build(experiment, Custom(tag=f"custom_{precision}_b{b}", precision=precision), log=log,
                                     batch_size=b))
            except DlrmError as e:
                log(f"[build] no {precision} build at batch {b}: {e}")
    return results


def build_variants(experiment: Experiment | str, log_dir: str | Path | None = None, prepack: bool | None = None,
                   untuned: bool = True, custom: bool = True, log: Callable[[str], None] = print,
                   precision: str = "fp32", calibration: str = "dynamic") -> list:
    """The builds notebook 03 compares, each checked against the reference: from the tuning log
    (untuned while the log is empty), the untuned baseline, and the hand-written kernels (also
    in `precision` when it is bf16 or int8, accuracy-gated; int8 with `calibration` "static":
    activation scales from the calibration slice, tag custom_int8_static). Returns the fast ones
    (tuned, custom), the ones worth running natively."""
    experiment = Experiment.of(experiment)
    if calibration != "dynamic" and precision != "int8":
        raise DlrmError(f"calibration {calibration!r} applies to precision int8 (its activations' scales)")
    fast = [build_best(experiment, log_dir=log_dir, prepack=prepack, log=log)]
    if custom:
        fast.append(build(experiment, Custom(), log=log))
    if custom and precision != "fp32":
        static = "_static" if calibration == "static" else ""
        fast.append(build(experiment, Custom(tag=f"custom_{precision}{static}", precision=precision,
                                             calibration=calibration), log=log))
    if untuned and fast[0].tag != "untuned":
        build(experiment, log=log)
    return fast


def measure_references(experiment: Experiment | str, log: Callable[[str], None] = print) -> dict[str, dict]:
    """The tuning curve's horizontal lines, measured now in this process: the custom-kernel
    build (built with the experiment's kernel knobs, checked like every build) and ONNX Runtime,
    both at the experiment's batch size (saved as `python_vm_custom` and `onnxruntime`)."""
    experiment = Experiment.of(experiment)
    result = build(experiment, Custom(), log=log)
    return {"python_vm_custom": result.verification, "onnxruntime": experiment.measurement("onnxruntime")}
