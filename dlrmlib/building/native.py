"""Run natively: the C++ runner `dlrm_infer` on an experiment's build (see native/README.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.building.verify import TOLERANCE
from dlrmlib.core.paths import REPO_ROOT
from dlrmlib.formats.weights import manifest_weights_dir, read_manifest

NATIVE_DIR = REPO_ROOT / "native"
BINARY_ENV = "DLRM_NATIVE_BIN"


def _sources_newer(binary: Path) -> bool:
    built = binary.stat().st_mtime
    return any(p.stat().st_mtime > built for p in [NATIVE_DIR / "CMakeLists.txt", *NATIVE_DIR.glob("src/*")])


def native_binary(build_dir: Path | None = None) -> Path:
    """`$DLRM_NATIVE_BIN`, else `native/build/dlrm_infer`, built (or rebuilt when its sources
    changed) with CMake against this Python's TVM wheels."""
    if os.environ.get(BINARY_ENV):
        binary = Path(os.environ[BINARY_ENV])
        if not binary.is_file():
            raise DlrmError(f"{BINARY_ENV} names {binary}, which does not exist")
        return binary
    build_dir = Path(build_dir or NATIVE_DIR / "build")
    binary = build_dir / "dlrm_infer"
    if binary.is_file() and not _sources_newer(binary):
        return binary
    for step in (["cmake", "-S", str(NATIVE_DIR), "-B", str(build_dir), f"-DPython_EXECUTABLE={sys.executable}",
                  "-DCMAKE_BUILD_TYPE=Release"],
                 ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 1)]):
        try:
            done = subprocess.run(step, capture_output=True, text=True)
        except FileNotFoundError:
            raise DlrmError("cmake not found: the native runner needs CMake >= 3.18 and a C++17 compiler") from None
        if done.returncode != 0:
            raise DlrmError(f"building the native runner failed ({' '.join(step[:2])}):\n{done.stdout[-2000:]}"
                            f"{done.stderr[-2000:]}")
    return binary


def run_native(manifest: Path, testdata: Path, result_json: Path, weights: Path | None = None,
               warmup: int = 5, iterations: int = 0, threads: int = 0, instances: int = 1,
               ids: str = "reject", outputs: Path | None = None, binary: Path | None = None) -> dict:
    """Run `dlrm_infer` and return its JSON result; its one-line error becomes a DlrmError."""
    manifest = Path(manifest)
    weights = weights or manifest_weights_dir(manifest, read_manifest(manifest))
    library = manifest.parent / read_manifest(manifest)["library"]["file"]
    command = [str(binary or native_binary()), str(library), str(manifest), str(weights), str(testdata),
               "--warmup", str(warmup), "--iterations", str(iterations), "--threads", str(threads),
               "--instances", str(instances), "--ids", ids, "--json", str(result_json)]
    if outputs:
        command += ["--outputs", str(outputs)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        message = done.stderr.strip().removeprefix("dlrm_infer: error: ") or f"exit status {done.returncode}"
        raise DlrmError(f"dlrm_infer failed: {message}")
    result = json.loads(Path(result_json).read_text())
    result["command"] = command
    result["stdout"] = done.stdout
    return result


def infer(experiment: Experiment, manifest: Path | None = None, log=print, **options) -> dict:
    """The native runner on the experiment's build (the latest by default), its result saved
    as the measurement `native_<tag>` in the experiment's common shape."""
    manifest = Path(manifest) if manifest else experiment.latest_build()
    tag = read_manifest(manifest)["build"]["tag"]
    experiment.measurements_dir.mkdir(parents=True, exist_ok=True)
    raw_path = experiment.measurements_dir / f"native_{tag}.raw.json"
    raw = run_native(manifest, experiment.testdata_dir, raw_path, **options)
    raw_path.unlink(missing_ok=True)
    result = {"experiment": experiment.name, "build": tag, "runtime": "native",
              "batch_size": raw["batch_size"], "samples_per_s": raw["throughput_samples_per_s"],
              "latency_ms_p50": raw["latency_ms"]["p50"], "latency_ms_p99": raw["latency_ms"]["p99"],
              "max_abs_error": raw["max_abs_err"], "auc": raw["auc"], "tolerance": TOLERANCE, "native": raw}
    error = raw["max_abs_err"]
    result["status"] = "ok" if error is not None and error <= TOLERANCE else "failed"  # None: NaN outputs
    experiment.save_measurement(f"native_{tag}", result)
    log(raw["stdout"].rstrip())
    if result["status"] == "failed":
        shown = "NaN" if error is None else f"{error:.2e}"
        raise DlrmError(f"dlrm_infer's outputs of build {tag} differ from the reference by {shown} (> {TOLERANCE:g}); "
                        f"recorded as failed in native_{tag}.json")
    return result


def infer_builds(experiment: Experiment, results: list, log=print, **options) -> list[dict]:
    """The native runner on each build (BuildResults or manifest paths), in order."""
    return [infer(experiment, getattr(r, "manifest", r), log=log, **options) for r in results]
