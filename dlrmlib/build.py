"""Build: ONNX model (+ tuning log) -> library (.so) + manifest (.json) + weights folder.

The weights stay out of the library: the normalised model's weights become the Relax
function's parameters after its three inputs, so the library is small, the weights folder can
be mapped by the native runner, and a build never needs the weights in memory.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from .errors import DlrmError
from .experiment import Experiment
from .files import atomic_path, sha256_file
from .machine import utc_now
from .normalise import WEIGHT_TYPES, embedding_tables, load_graph
from .target import cpu_description, host_target
from .tvmlog import quiet_tvm_log
from .weights import (ParamSpec, initializer_chunks, layout_id, param_file_name, write_manifest,
                      write_weights_folder)

NUM_INPUTS = 3


def runtime_params(model: onnx.ModelProto) -> list[ParamSpec]:
    """The library's parameters: the normalised model's initializers, in order."""
    specs = []
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.data_type not in WEIGHT_TYPES:
            raise DlrmError(f"initializer {tensor.name!r} is not floating point; normalise the model first")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).name
        specs.append(ParamSpec(name=tensor.name, file=param_file_name(i), shape=tuple(tensor.dims), dtype=dtype))
    return specs


def model_identity(path: Path) -> str:
    """A cheap content id of a model: its graph file's hash plus each external data file's
    size and time (hashing 96 GB of weights at every build would take minutes)."""
    digest = hashlib.sha256(sha256_file(path).encode())
    locations = {e.value for t in load_graph(path).graph.initializer for e in t.external_data if e.key == "location"}
    for name in sorted(locations):
        stat = (path.parent / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def import_relax(model: onnx.ModelProto):
    """The normalised model as a Relax module whose `main` takes the 3 inputs, then the weights
    as parameters. The weights' data is never read: each initializer becomes a graph input."""
    from tvm.relax.frontend.onnx import from_onnx

    graph_only = onnx.ModelProto()
    graph_only.CopyFrom(model)
    weights = list(graph_only.graph.initializer)
    del graph_only.graph.initializer[:]
    graph_only.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    _check_supported_ops(graph_only)
    try:
        with warnings.catch_warnings():  # "Renaming name input.1 to input_1", once per weight
            warnings.simplefilter("ignore", UserWarning)
            mod = from_onnx(graph_only, keep_params_in_input=False)
    except Exception as e:
        raise DlrmError(f"TVM's ONNX importer failed on the normalised model: {type(e).__name__}: "
                        f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}") from e
    mod["main"] = mod["main"].with_attr("num_input", NUM_INPUTS)
    if len(mod["main"].params) != NUM_INPUTS + len(weights):
        raise DlrmError(f"the imported function takes {len(mod['main'].params)} arguments, expected "
                        f"{NUM_INPUTS} inputs + {len(weights)} weights")
    return mod


def _check_supported_ops(model: onnx.ModelProto) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"Constant", "If"}
    missing = sorted({n.op_type for n in model.graph.node if n.op_type not in known})
    if missing:
        raise DlrmError(f"TVM's ONNX importer does not support these operators of the model: {', '.join(missing)}")


def compile_library(mod, target: dict, path: Path, pipeline=None) -> Path:
    """Compile with the default Relax pipeline for the target (it fuses operators; plain
    `tvm.compile` on CPU does not) and export the shared library atomically."""
    import tvm
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


@dataclass
class BuildResult:
    tag: str
    library: Path
    manifest: Path
    weights_dir: Path
    seconds: float
    verification: dict | None = None


def extract_weights(experiment: Experiment, progress: Callable | None = None) -> tuple[Path, list[ParamSpec], str]:
    """The experiment's plain weights folder (no transform): each initializer's bytes copied
    out of the ONNX model in the library's parameter order."""
    model = load_graph(experiment.normalised_model)
    params = runtime_params(model)
    layout = layout_id(model_identity(experiment.normalised_model), params, None)
    tensors = list(model.graph.initializer)
    folder = write_weights_folder(
        experiment.weights_root / layout, layout, params,
        [lambda t=t: initializer_chunks(t, experiment.model_dir) for t in tensors], progress)
    return folder, params, layout


def prepacked_weights(experiment: Experiment, library: Path, plan, plain: tuple[Path, list[ParamSpec], str],
                      transform_id: str | None = None, knobs: dict | None = None):
    """The weights folder of a library whose `main` takes transformed (prepacked) weights:
    (folder, params, layout), the transform run once here, never by a runner. `transform_id`
    names what the transform does (a tuned build hashes its IR); by default the hash of
    dlrmlib.schedules' code and the kernels' tuned `knobs` (panel widths change the packing), so
    changed packing never reuses a folder packed the old way."""
    from .schedules.prepack import TRANSFORM, transformed_param_specs, write_transformed_weights

    plain_dir, plain_params, _ = plain
    specs = transformed_param_specs(plain_params, plan)
    if transform_id is None:
        code = Path(__file__).parent / "schedules"
        code_bytes = b"".join(p.read_bytes() for p in sorted(code.glob("*.py")))
        transform_id = hashlib.sha256(code_bytes + json.dumps(knobs or {}, sort_keys=True).encode()).hexdigest()[:12]
    layout = layout_id(model_identity(experiment.normalised_model), specs, f"{TRANSFORM}:{transform_id}")
    folder = experiment.weights_root / layout
    write_transformed_weights(folder, layout, library, plan, plain_dir, plain_params)
    return folder, specs, layout


def build(experiment: Experiment, tag: str = "untuned", pipeline=None, build_info: dict | None = None,
          verify: bool = True, log: Callable[[str], None] = print, schedule: str = "default",
          weights: Callable[[Path], tuple[Path, list[ParamSpec], str, str | None]] | None = None,
          kernel_log: Path | None = None) -> BuildResult:
    """Library + manifest for the experiment's normalised model; checks the library against the
    reference outputs of the test data when `verify`. `schedule="custom"` uses the hand-written
    kernels of dlrmlib.schedules (packed GEMM, weights prepacked into the weights folder), with
    the knobs of `kernel_log` (a `dlrm tune --schedule custom` log folder; by default the
    experiment's own when it has one) or the defaults.
    `weights(library)`, for a `pipeline` that changes `main`'s parameters (tuned builds with
    weight prepacking), writes the weights folder and returns (folder, params, layout, transform)."""
    import tvm

    started = time.perf_counter()
    params_cfg = experiment.params
    model = load_graph(experiment.normalised_model)
    if verify:  # a bad test data folder should fail before minutes of compiling, not after
        from .testdata import read_test_data

        read_test_data(experiment.testdata_dir, embedding_tables(model))
    log(f"[build] importing {experiment.normalised_model.name} into Relax")
    mod = import_relax(model)
    target = host_target()
    if schedule == "custom":
        from .kernel_tune import default_kernel_log, kernel_configs
        from .schedules import PIPELINE_NAME, custom_module

        kernel_log = kernel_log if kernel_log is not None else default_kernel_log(experiment)
        knobs = kernel_configs(Path(kernel_log), log) if kernel_log is not None else {}
        if kernel_log is not None:
            log(f"[build] kernel knobs from {kernel_log} ({len(knobs)} kernels tuned)")
        mod, plan = custom_module(mod, target, NUM_INPUTS, configs=knobs)
        build_info = {"pipeline": PIPELINE_NAME, "schedule": "custom", "prepack": not plan.identity,
                      "kernel_log": str(kernel_log) if kernel_log is not None else None, "kernel_knobs": knobs,
                      **(build_info or {})}
        if not plan.identity:  # the same weights hook as a prepacked tuned build
            weights = lambda lib: (*prepacked_weights(experiment, lib, plan, extract_weights(experiment),  # noqa: E731
                                                      knobs=knobs), "main_transform_params")
    elif schedule != "default":
        raise DlrmError(f"unknown schedule {schedule!r}: default or custom")
    library = experiment.library_path(tag)
    log(f"[build] compiling for {target['mcpu']} ({target['mtriple']}) -> {library.name}")
    compile_library(mod, target, library, pipeline)
    log("[build] writing the weights folder")
    weights_dir, params, layout = extract_weights(experiment)
    transform = None
    if weights is not None:
        weights_dir, params, layout, transform = weights(library)
    batch = params_cfg["batch_size"]
    manifest_path = experiment.manifest_path(tag)
    output = model.graph.output[0].name
    write_manifest(manifest_path, {
        "library": {"file": library.name, "sha256": sha256_file(library)},
        "entry": "main",
        "batch_size": batch,
        "inputs": [{"name": i.name, "shape": [d.dim_value for d in i.type.tensor_type.shape.dim],
                    "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)).name}
                   for i in model.graph.input],
        "outputs": [{"name": output, "shape": [batch, 1], "dtype": "float32"}],
        "params": [p.to_dict() for p in params],
        "weights": {"layout_id": layout, "dir": f"../weights/{layout}", "transform": transform},
        "embedding": {"tables": embedding_tables(model), "dense_input": "input.1", "indices_input": "lS_i",
                      "offsets_input": "lS_o", "bags": params_cfg["bags"]},
        "target": target,
        "cpu": cpu_description(),
        "tvm_version": tvm.__version__,
        "build": {"tag": tag, "tuned": False, "trials": 0, "tuning_log": None, "prepack": False,
                  "pipeline": "relax default (cpu_generic)",
                  "created": utc_now(),
                  "model_id": model_identity(experiment.normalised_model), **(build_info or {})},
    })
    result = BuildResult(tag, library, manifest_path, weights_dir, time.perf_counter() - started)
    log(f"[build] {library.name} + {manifest_path.name} in {result.seconds:.1f} s")
    if verify:
        from .verify import verify_build

        result.verification = verify_build(experiment, manifest_path, log=log)
    return result
