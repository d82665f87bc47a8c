"""The accuracy gate of a reduced-precision build (MLPerf's high-accuracy target for DLRM: the
AUC must reach 99.9 % of the fp32 reference's).

The reference is ONNX Runtime's fp32 output on the same test samples (`reference.npy`); both
AUCs are taken against the labels on the samples not used for calibration (the dynamic int8
and bf16 builds calibrate on nothing, so on all of them)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.weights import read_manifest, write_manifest

MIN_AUC_RATIO = 0.999


def gate_figures(verification: dict, min_auc_ratio: float, calibration_samples: int = 0) -> dict:
    """The gate's figures from a build's verification (dlrmlib.building.verify)."""
    ratio = verification["auc"] / verification["reference_auc"]
    return {"auc": verification["auc"], "reference_auc": verification["reference_auc"], "auc_ratio": ratio,
            "max_abs_diff": verification["max_abs_error"], "mean_abs_diff": verification["mean_abs_error"],
            "samples": verification["samples"], "calibration_samples": calibration_samples,
            "min_auc_ratio": min_auc_ratio, "passed": bool(ratio >= min_auc_ratio)}


def describe(figures: dict) -> str:
    return (f"AUC {figures['auc']:.5f} = {figures['auc_ratio']:.5f} x the fp32 reference's "
            f"{figures['reference_auc']:.5f} (gate {figures['min_auc_ratio']:g}), largest score difference "
            f"{figures['max_abs_diff']:.2e} over {figures['samples']} samples")


def apply_gate(manifest_path: Path, library: Path, verification: dict, min_auc_ratio: float,
               log: Callable[[str], None] = print) -> dict:
    """Record the figures in the manifest's `precision.accuracy`; a build below the gate is
    refused: its manifest and library are removed (the weights folder, keyed by its content,
    may serve a later build) and the error carries the figures."""
    manifest = read_manifest(manifest_path)
    precision = manifest["precision"]
    figures = gate_figures(verification, min_auc_ratio, precision["quantization"]["calibration_samples"])
    log(f"[gate] {precision['name']} build {manifest['build']['tag']}: {describe(figures)}: "
        f"{'passed' if figures['passed'] else 'REFUSED'}")
    if not figures["passed"]:
        manifest_path.unlink(missing_ok=True)
        library.unlink(missing_ok=True)
        raise DlrmError(f"the {precision['name']} build is refused by the accuracy gate: {describe(figures)}; "
                        f"lower it deliberately with --min-auc-ratio")
    precision["accuracy"] = figures
    manifest.pop("format", None), manifest.pop("format_version", None)
    write_manifest(manifest_path, manifest)
    return figures
