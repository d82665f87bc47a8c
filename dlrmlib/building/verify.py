"""Check a build against the test data's reference outputs and time it in Python."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

from dlrmlib.backends import measure, predict_all
from dlrmlib.backends.onnxruntime import OnnxRuntimeBackend
from dlrmlib.backends.tvm import TvmBackend
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.metrics import accuracy
from dlrmlib.formats.testdata import calibration_samples, read_test_data

TOLERANCE = 1e-5  # max |output - ONNX Runtime's reference| for a build to pass (scores in [0, 1])
FAILED_DIR = "failed"  # builds/failed/: builds that failed their check, out of every runner's way


def verify_build(experiment: Experiment, manifest_path: Path, tolerance: float = TOLERANCE,
                 repeats: int = 20, log: Callable[[str], None] = print) -> dict:
    """Max/mean absolute error against ONNX Runtime's reference, AUC against the labels, and
    Python-VM latency; saved as the measurement `python_vm_<tag>`."""
    # On every usable core, as ONNX Runtime (dlrmlib/__init__.py). The build wrote the weights
    # folder, or verified it when it reused it, moments ago: no second pass over the files.
    backend = TvmBackend(manifest_path, verify_weights=False)
    data = read_test_data(experiment.testdata_dir, backend.manifest["embedding"]["tables"],
                          per_bag=backend.ids_per_bag)
    if data.reference is None:
        raise DlrmError(f"{experiment.testdata_dir} has no reference.npy to check the build against")
    outputs = predict_all(backend, data.dense, data.sparse, progress=True)
    result = {"experiment": experiment.name, "build": backend.tag, "runtime": "python-vm",
              **accuracy(outputs, data.reference, data.labels),
              **measure(backend, data.dense, data.sparse, warmup=1, repeats=repeats, max_seconds=10)}
    # AUC over the samples after the calibration slice, as every AUC ratio (formats.md): the gate's figures
    k = calibration_samples(len(data))
    scored = data.scored()
    result["scored"] = {**accuracy(outputs[k:], scored.reference, scored.labels), "calibration_samples": k}
    result["within_tolerance"] = result["max_abs_error"] <= tolerance
    result["tolerance"] = tolerance if math.isfinite(tolerance) else None
    result["status"] = "ok" if result["within_tolerance"] else "failed"
    against = ""
    if backend.batch_size == experiment.batch_size:  # the yardstick runs the experiment's normalised model
        peer = measure_onnxruntime(experiment, data, backend.batch_size, repeats)
        result["ratio_to_onnxruntime"] = result["samples_per_s"] / peer["samples_per_s"]
        against = f" ({result['ratio_to_onnxruntime']:.3f}x ONNX Runtime's {peer['samples_per_s']:.0f})"
    experiment.save_measurement(f"python_vm_{backend.tag}", result)
    # a reduced-precision build has no output tolerance: the accuracy gate checks its AUC instead
    checked = (f"tolerance {tolerance:g}), AUC {result['auc']:.4f} (reference {result['reference_auc']:.4f})"
               if math.isfinite(tolerance) else
               f"no output tolerance: gated on AUC), AUC {result['scored']['auc']:.4f} (reference "
               f"{result['scored']['reference_auc']:.4f}) over the {result['scored']['samples']} samples after the "
               f"{k}-sample calibration slice")
    log(f"[verify] {backend.tag}: max |TVM - ONNX Runtime| = {result['max_abs_error']:.2e} over "
        f"{result['samples']} samples ({checked}, {result['samples_per_s']:.0f} samples/s at batch "
        f"{backend.batch_size}{against}")
    if not result["within_tolerance"]:
        del backend  # the library is unmapped before it moves
        aside = set_aside(manifest_path)
        raise DlrmError(f"build {result['build']} differs from the reference by {result['max_abs_error']:.2e} "
                        f"(> {tolerance:g}); moved to {aside} so that no runner picks it up; see "
                        f"{experiment.measurements_dir}")
    return result


def set_aside(manifest_path: Path) -> Path:
    """Move a build (manifest + library) into `builds/failed/`, where `Experiment.builds()`,
    and so `dlrm infer`, bench, profile and LoadGen, never look."""
    manifest_path = Path(manifest_path)
    folder = manifest_path.parent / FAILED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for path in (manifest_path.with_suffix(".so"), manifest_path):  # the manifest last: it names the build
        if path.exists():
            os.replace(path, folder / path.name)
    return folder


def measure_onnxruntime(experiment: Experiment, data, batch_size: int, repeats: int = 20) -> dict:
    """ONNX Runtime on the same normalised model and inputs: the yardstick for every build."""
    ort = OnnxRuntimeBackend(experiment.normalised_model, batch_size)
    result = {"experiment": experiment.name, "build": "normalised.onnx", "runtime": "onnxruntime",
              **measure(ort, data.dense, data.sparse, warmup=2, repeats=repeats)}
    experiment.save_measurement("onnxruntime", result)
    return result
