"""The accuracy gate of a reduced-precision build (MLPerf's high-accuracy target for DLRM: the
AUC must reach 99.9 % of the fp32 reference's).

The reference is ONNX Runtime's fp32 output on the same test samples (`reference.npy`); both
AUCs are taken against the labels on the samples after the test data's calibration slice
(dlrmlib.formats.testdata.calibration_samples), whether or not the build calibrated on it, so
that every build and peer is scored on the same samples."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.weights import read_manifest, write_manifest

MIN_AUC_RATIO = 0.999


def gate_figures(verification: dict, min_auc_ratio: float) -> dict:
    """The gate's figures from a build's verification (dlrmlib.building.verify): over the scored
    samples; `calibration_samples` is the slice left out."""
    scored = verification["scored"]
    ratio = scored["auc"] / scored["reference_auc"]
    return {"auc": scored["auc"], "reference_auc": scored["reference_auc"], "auc_ratio": ratio,
            "max_abs_diff": scored["max_abs_error"], "mean_abs_diff": scored["mean_abs_error"],
            "samples": scored["samples"], "calibration_samples": scored["calibration_samples"],
            "min_auc_ratio": min_auc_ratio, "passed": bool(ratio >= min_auc_ratio)}


def describe(figures: dict) -> str:
    return (f"AUC {figures['auc']:.5f} = {figures['auc_ratio']:.5f} x the fp32 reference's "
            f"{figures['reference_auc']:.5f} (gate {figures['min_auc_ratio']:g}), largest score difference "
            f"{figures['max_abs_diff']:.2e} over {figures['samples']} samples (after the {figures['calibration_samples']}-sample "
            f"calibration slice)")


def apply_gate(manifest_path: Path, library: Path, verification: dict, min_auc_ratio: float,
               log: Callable[[str], None] = print) -> dict:
    """Record the figures in the manifest's `precision.accuracy`; a build below the gate is
    refused: its manifest and library are removed (the weights folder, keyed by its content,
    may serve a later build) and the error carries the figures."""
    manifest = read_manifest(manifest_path)
    precision = manifest["precision"]
    figures = gate_figures(verification, min_auc_ratio)
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
