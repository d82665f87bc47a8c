"""Benchmark of tuning: how fast it tunes, and what the tuned library is worth.

Tunes the `small` DLRM (26 x 100k tables) at batch 128 from an empty log with a fixed trial
budget (weights prepacked, the default; `--no-prepack`: the plain build), then prints trials
per minute and the tuned library's samples/s against the untuned library, the custom-kernel
build (the knobs of the kernel log shipped for this machine, if any) and ONNX Runtime, all
measured in this process, interleaved in rounds (the median of the rounds is reported, so that
a noisy neighbour hits all alike), and the trial at which the tuning curve's estimate first
reaches ONNX Runtime's and the custom build's measured latency.

    python benchmarks/bench_tune.py [--trials 512] [--no-prepack] [--experiment bench-tune]

Its experiment's tuning log (of the chosen layout) is cleared first, so the rate is the rate
from scratch. Results also land in the experiment's measurements/bench_tune.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from dlrmlib.backends import measure
from dlrmlib.backends.onnxruntime import OnnxRuntimeBackend
from dlrmlib.backends.openvino import OpenVinoBackend
from dlrmlib.backends.tvm import TvmBackend
from dlrmlib.building.build import build
from dlrmlib.building.recipes import Custom, FromLog
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.target import cpu_description, host_target, machine_kind
from dlrmlib.core.timing import interleaved
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.tuning_log import crossing, tuning_curve
from dlrmlib.prepare import prepare
from dlrmlib.schedules.knobs import LOG_FILE
from dlrmlib.tuning.metaschedule import clear_log, tune

REPO_LOGS = Path(__file__).resolve().parent.parent / "logs"
BATCH = 128
ROUNDS = 7
SECONDS_PER_ROUND = 2.0  # per backend: 3 batches of the untuned library, hundreds of the others


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="bench-tune", help="experiment to use (its tuning log is removed)")
    p.add_argument("--trials", type=int, default=512, help="trial budget (default: %(default)s)")
    p.add_argument("--prepack", action=argparse.BooleanOptionalAction, default=True,
                   help="tune and build with weight prepacking (default: %(default)s)")
    p.add_argument("--samples", type=int, default=2048, help="test samples (default: %(default)s)")
    return p.parse_args()


def prepared(name: str, samples: int) -> Experiment:
    """The small DLRM at batch 128 (the generated model is reused when it is already there)."""
    return prepare(name, preset="small", batch_size=BATCH, samples=samples, log=lambda _: None)


def steady_rate(folder) -> float:
    """Trials per minute between the first and the last measured batch (start-up excluded)."""
    curve = tuning_curve(folder)
    first, last = curve.iloc[1], curve.iloc[-1]
    return 60.0 * (last["trial"] - first["trial"]) / (last["t"] - first["t"]) if last["t"] > first["t"] else 0.0


def batches_per_round(backend, data) -> int:
    """About SECONDS_PER_ROUND of batches, at least 3."""
    rate = measure(backend, data.dense, data.sparse, warmup=1, repeats=2)["samples_per_s"]
    return max(3, min(500, int(SECONDS_PER_ROUND * rate / BATCH)))


def interleaved_rates(backends: dict, data) -> dict[str, float]:
    """Median samples/s of each backend over dlrmlib's interleaved rounds."""
    repeats = {name: batches_per_round(backend, data) for name, backend in backends.items()}
    rates = interleaved({name: (lambda name=name, backend=backend: measure(
        backend, data.dense, data.sparse, warmup=1, repeats=repeats[name])["samples_per_s"])
        for name, backend in backends.items()}, ROUNDS)
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    args = parse_args()
    exp = prepared(args.experiment, args.samples)
    clear_log(exp, args.prepack)
    untuned = build(exp, log=lambda _: None)
    started = time.perf_counter()
    result = tune(exp, trials=args.trials, prepack=args.prepack)
    tuned = build(exp, FromLog(prepack=args.prepack))
    custom = build(exp, Custom(shipped_kernel_log()), log=lambda _: None)
    data = read_test_data(exp.testdata_dir)
    rates = interleaved_rates({"onnxruntime": OnnxRuntimeBackend(exp.normalised_model, BATCH),
                               "openvino": OpenVinoBackend(exp.normalised_model, BATCH),  # f32
                               "tvm untuned": TvmBackend(untuned.manifest),
                               "tvm custom kernels": TvmBackend(custom.manifest),
                               f"tvm tuned ({tuned.tag})": TvmBackend(tuned.manifest)}, data)
    target = host_target()
    curve = tuning_curve(result.log_dir)
    crossings = {name: crossing(curve, BATCH / rates[name]) for name in ("onnxruntime", "tvm custom kernels")}
    report = {
        "machine": f"{cpu_description()} ({target['mcpu']}), {os.cpu_count()} cores",
        "model": f"small DLRM (26 x 100k-row tables), batch {BATCH}",
        "trials": result.new_trials, "tuning_seconds": round(result.seconds, 1),
        "trials_per_minute": round(result.trials_per_minute, 1),
        "trials_per_minute_steady": round(steady_rate(result.log_dir), 1),
        "estimated_latency_ms": round(result.estimated_latency_s * 1e3, 3) if result.estimated_latency_s else None,
        "samples_per_s": {k: round(v) for k, v in rates.items()},
        "tuned_over_untuned": round(rates[f"tvm tuned ({tuned.tag})"] / rates["tvm untuned"], 2),
        "tuned_over_onnxruntime": round(rates[f"tvm tuned ({tuned.tag})"] / rates["onnxruntime"], 3),
        "tuned_over_custom": round(rates[f"tvm tuned ({tuned.tag})"] / rates["tvm custom kernels"], 3),
        "custom_over_onnxruntime": round(rates["tvm custom kernels"] / rates["onnxruntime"], 3),
        "tuned_over_openvino": round(rates[f"tvm tuned ({tuned.tag})"] / rates["openvino"], 3),
        "load_average": os.getloadavg(),
        "curve_reaches": crossings,
        "untuned_over_onnxruntime": round(rates["tvm untuned"] / rates["onnxruntime"], 4),
        "max_abs_error": tuned.verification["max_abs_error"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    exp.save_measurement("bench_tune" + ("_prepack" if args.prepack else ""), report)
    print(f"\n{report['machine']}; {report['model']}; prepack: {args.prepack}")
    print(f"tuning: {report['trials']} trials in {report['tuning_seconds']} s = {report['trials_per_minute']} "
          f"trials/min ({report['trials_per_minute_steady']} after start-up)")
    for name, value in report["samples_per_s"].items():
        print(f"  {name:28s} {value:>10,} samples/s")
    print(f"tuned / untuned: {report['tuned_over_untuned']}x; tuned / ONNX Runtime: "
          f"{report['tuned_over_onnxruntime']}x; tuned / custom kernels: {report['tuned_over_custom']}x; "
          f"tuned / OpenVINO f32: {report['tuned_over_openvino']}x; "
          f"custom / ONNX Runtime: {report['custom_over_onnxruntime']}x; untuned / ONNX Runtime: "
          f"{report['untuned_over_onnxruntime']}x; max |tuned - reference| = {report['max_abs_error']:.2e}")
    for name, met in crossings.items():
        print(f"the curve's estimate reaches {name}'s measured latency: "
              + (f"at trial {met['trial']} ({met['t']:.0f} s)" if met else f"not within {result.trials} trials"))
    print(f"(ratios from one interleaved run in this process; load average {report['load_average'][0]:.1f} at the end: "
          "on a shared machine only the ratios mean anything)")


def shipped_kernel_log() -> Path | None:
    """logs/<this machine>/small/b128/, when the repository ships a kernel log for it."""
    folder = REPO_LOGS / machine_kind() / "small" / f"b{BATCH}"
    return folder if (folder / LOG_FILE).is_file() else None


if __name__ == "__main__":
    main()
