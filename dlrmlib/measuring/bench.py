"""Peers side by side: the same model, weights and inputs on ONNX Runtime, OpenVINO, PyTorch
(eager and `torch.compile`) and every TVM build of the experiment, over a batch-size sweep
and a thread sweep.

Runs are interleaved: each repetition runs every runtime once (in a rotating order), so a
noisy neighbour slows all of them alike and the ratios hold. Between two runs the benchmark
pauses (`pause_s`, untimed): every runtime's worker threads spin for a while after a run,
and on a small machine the next runtime's threads would otherwise fight them for the cores. Outputs are checked against
ONNX Runtime's on the same batch. A TVM library is built for one batch size: TVM rows exist
only where a build exists, and the table says so instead of inventing a number.
"""
from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from dlrmlib.backends import batch_inputs, predict_all
from dlrmlib.backends.factory import (
    CALIBRATED,
    DEFAULT_RUNTIMES,
    REFERENCE,
    RUNTIMES,
    TorchModule,
    calibration_batches,
    make_backend,
)
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import write_json
from dlrmlib.core.machine import ALLOWED_CPUS, precision_peaks, provenance, tvm_pool_threads
from dlrmlib.core.metrics import accuracy, spread
from dlrmlib.core.timing import PAUSE_S, interleaved, seconds_of
from dlrmlib.formats.normalise import load_graph, normalise_model
from dlrmlib.formats.presets import PRESETS
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.weights import read_manifest

BENCH_MEASUREMENT = "bench"
DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 1024)
AGREEMENT = 1e-4  # max |output - ONNX Runtime's| for two runtimes to agree (scores in [0, 1])
AUC_BUDGET_S = 20.0  # a runtime whose pass over the test data would take longer gets no AUC ratio


@dataclass(frozen=True)
class Config:
    """One point of a sweep: every runtime runs at this batch size and thread count."""

    batch_size: int
    threads: int
    sweeps: tuple[str, ...]  # "batch", "threads" or both


def default_threads() -> list[int]:
    """1, 2, 4, ... up to the usable cores, and the usable cores themselves."""
    cores = len(ALLOWED_CPUS)
    counts = {cores}
    n = 1
    while n < cores:
        counts.add(n)
        n *= 2
    return sorted(counts)


def sweep_configs(batch_sizes: list[int], threads: list[int], experiment_batch: int) -> list[Config]:
    """The batch sweep at the most threads, the thread sweep at the experiment's batch size;
    their shared point runs once."""
    if not batch_sizes or not threads or min(batch_sizes) < 1 or min(threads) < 1:
        raise DlrmError(f"batch sizes and thread counts must be positive, got {batch_sizes} and {threads}")
    top = max(threads)
    points: dict[tuple[int, int], set[str]] = {}
    for b in sorted(set(batch_sizes)):
        points.setdefault((b, top), set()).add("batch")
    for t in sorted(set(threads)):
        points.setdefault((experiment_batch, t), set()).add("threads")
    return [Config(b, t, tuple(sorted(s))) for (b, t), s in sorted(points.items())]


# -- making the runtimes -------------------------------------------------------------------------

@contextlib.contextmanager
def normalised_for_batch(exp: Experiment, batch_size: int) -> Iterator[Path]:
    """The normalised model for `batch_size`: the experiment's own, or a temporary copy made in
    memory and written beside it (so its external data still resolves), removed afterwards."""
    if batch_size == exp.batch_size:
        yield exp.normalised_model
        return
    model = normalise_model(load_graph(exp.source_model), batch_size, exp.params["bags"],
                            indices_per_bag=exp.ids_per_bag)
    fd, name = tempfile.mkstemp(prefix=".bench-", suffix=".onnx", dir=exp.model_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _make_backends(exp: Experiment, runtimes: list[str], config: Config, builds: dict[Path, dict],
                   torch_module: TorchModule, log, data=None) -> tuple[list, list[dict]]:
    """The runtimes for one configuration (`builds`: each TVM manifest's path and content), and a
    note for each one that could not run there; the CALIBRATED peers calibrate on `data`'s
    calibration slice."""
    backends, notes = [], []
    peers = [r for r in runtimes if r != "tvm"]
    calibration = (calibration_batches(data, config.batch_size) if data is not None and set(peers) & set(CALIBRATED)
                   else None)
    if peers:
        with normalised_for_batch(exp, config.batch_size) as model_path:
            for runtime in peers:
                try:
                    backends.append(make_backend(runtime, model_path=model_path, batch_size=config.batch_size,
                                                 threads=config.threads, torch_module=torch_module,
                                                 calibration=calibration))
                except Exception as e:  # a peer that fails is reported, not fatal
                    notes.append(_note(runtime, config, f"failed to load: {_short(e)}"))
                    log(f"[bench] {runtime} at batch {config.batch_size}: {_short(e)}")
    if "tvm" in runtimes:

        pool = tvm_pool_threads()
        for manifest, facts in builds.items():
            if config.threads != pool:  # TVM sizes its pool once, at start (dlrmlib/__init__.py)
                notes.append(_note(f"tvm-{facts['build']['tag']}", config, f"not measured: TVM's thread pool "
                                   f"has {pool} threads for the whole process; run with TVM_NUM_THREADS="
                                   f"{config.threads} for this row"))
                continue
            if facts["batch_size"] != config.batch_size:
                notes.append(_note(f"tvm-{facts['build']['tag']}", config, f"no build for batch "
                                   f"{config.batch_size} (built for {facts['batch_size']})"))
                continue
            backends.append(make_backend("tvm", manifest=manifest))
    return backends, notes


def _note(runtime: str, config: Config, status: str) -> dict:
    return {"runtime": runtime, "batch_size": config.batch_size, "threads": config.threads,
            "sweeps": list(config.sweeps), "status": status, "samples_per_s": None}


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


# -- running them ------------------------------------------------------------------------------

def _warm_up(backend, batch: dict, warmup: int) -> tuple[np.ndarray, float]:
    """The first output (for the cross-check) and how long the first call took (torch.compile
    compiles there)."""
    start = time.perf_counter()
    out = np.asarray(backend.predict(batch)).reshape(-1)
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        backend.predict(batch)
    return out, first


def _cycling(backend, batches: list[dict]):
    """A call that predicts the next batch of `batches` each time (round-robin)."""
    state = {"i": 0}

    def call():
        backend.predict(batches[state["i"] % len(batches)])
        state["i"] += 1
    return call


def run_config(backends: list, batches: list[dict], repeats: int, warmup: int, log,
               pause_s: float = 0.0) -> list[dict]:
    """Warm every runtime up, cross-check outputs, then `repeats` rounds in which each runs
    once, with an untimed pause before each run."""
    names = [b.name for b in backends]
    outputs, firsts, failed = {}, {}, {}
    for b in backends:
        try:
            outputs[b.name], firsts[b.name] = _warm_up(b, batches[0], warmup)
        except Exception as e:  # e.g. torch.compile without a working compiler
            failed[b.name] = f"failed to run: {_short(e)}"
            log(f"[bench] {b.name}: {failed[b.name]}")
    live = [b for b in backends if b.name not in failed]
    calls = {b.name: _cycling(b, batches) for b in live}
    seconds = interleaved({name: (lambda call=call: seconds_of(call)) for name, call in calls.items()},
                          repeats, pause_s)
    reference = outputs.get(REFERENCE)
    rows = []
    for name in names:
        backend = next(b for b in backends if b.name == name)
        row = {"runtime": name, "version": backend.version, "batch_size": backend.batch_size,
               "precision": getattr(backend, "precision", "fp32")}
        if name in failed:
            rows.append({**row, "status": failed[name], "samples_per_s": None})
            continue
        latency = spread(np.asarray(seconds[name]) * 1e3)
        diff = float(np.abs(outputs[name] - reference).max()) if reference is not None else None
        rows.append({**row, "status": "ok", "latency_ms": latency,
                     "samples_per_s": backend.batch_size / (latency["median"] / 1e3),
                     "first_call_s": firsts[name], "max_abs_diff_vs_onnxruntime": diff,
                     "agrees": None if diff is None or row["precision"] != "fp32" else diff <= AGREEMENT})
    ort = next((r for r in rows if r["runtime"] == REFERENCE and r["status"] == "ok"), None)
    for row in rows:
        row["ratio_to_onnxruntime"] = (row["samples_per_s"] / ort["samples_per_s"]
                                       if ort and row.get("samples_per_s") else None)
    return rows


def parallel_samples_per_s(sessions: list, batches: list[dict], seconds: float) -> float:
    """Throughput with len(sessions) requests in flight: one Python thread per session (separate
    sessions of one runtime, each on its own thread(s); every runtime here releases the GIL
    while it computes), each running batches back to back for `seconds`. Samples over the wall
    time until the last one finished. Each session runs once on this thread first: OpenVINO's
    first `infer` calls, racing in two threads, deadlocked in pybind11's one-time numpy set-up
    (seen on Zen 4 and Emerald Rapids), and a hung test spends CI's whole budget."""
    for session in sessions:
        session.predict(batches[0])
    done = [0] * len(sessions)
    start = time.perf_counter()
    deadline = start + seconds

    def serve(k: int) -> None:
        while time.perf_counter() < deadline:
            sessions[k].predict(batches[done[k] % len(batches)])
            done[k] += 1

    workers = [threading.Thread(target=serve, args=(k,), daemon=True) for k in range(len(sessions))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return sum(n * sessions[k].batch_size for k, n in enumerate(done)) / elapsed


def _batches(data, batch_size: int, limit: int = 8) -> list[dict]:
    return batch_inputs(data.dense, data.sparse, batch_size, limit)


def bench(experiment: Experiment | str, batch_sizes: list[int] | None = None, threads: list[int] | None = None,
          runtimes: list[str] | tuple[str, ...] | None = None, repeats: int = 15, warmup: int = 3,
          pause_s: float = PAUSE_S, json_path: str | Path | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Every runtime (default: DEFAULT_RUNTIMES) at every configuration of the sweeps; saved as
    the measurement `bench` (and to `json_path`). Default sweeps: batch sizes 1..1024 plus the
    experiment's and its builds', threads 1, 2, 4, ... up to the usable cores."""
    exp = Experiment.of(experiment)
    runtimes = list(runtimes or DEFAULT_RUNTIMES)
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise DlrmError(f"unknown runtime(s) {unknown}; choose from {', '.join(RUNTIMES)}")
    if REFERENCE not in runtimes:
        raise DlrmError("the benchmark needs onnxruntime: ratios and output checks are against it")
    if repeats < 1 or warmup < 1:
        raise DlrmError(f"repeats and warmup must be at least 1, got {repeats} and {warmup}")

    builds = {m: read_manifest(m) for m in exp.builds()} if "tvm" in runtimes else {}
    build_batches = sorted({facts["batch_size"] for facts in builds.values()})
    batch_sizes = list(batch_sizes or sorted({*DEFAULT_BATCH_SIZES, exp.batch_size, *build_batches}))
    threads = list(threads or default_threads())
    configs = sweep_configs(batch_sizes, threads, exp.batch_size)
    data = read_test_data(exp.testdata_dir)
    call = (f"dlrmlib.measuring.bench.bench({exp.name!r}, batch_sizes={batch_sizes}, threads={threads}, "
            f"runtimes={list(runtimes)}, repeats={repeats}, warmup={warmup}, pause_s={pause_s})")
    result = {"experiment": exp.name, "kind": "bench", **provenance(call), "repeats": repeats, "warmup": warmup,
              "pause_s": pause_s,
              "runtimes": list(runtimes), "batch_sizes": batch_sizes, "threads": threads,
              "tvm_builds": {facts["build"]["tag"]: facts["batch_size"] for facts in builds.values()},
              "agreement_tolerance": AGREEMENT, "rows": []}
    torch_module = TorchModule(exp)
    result["peaks"], flops = _peaks(exp, log)
    for config in configs:
        log(f"[bench] batch {config.batch_size}, {config.threads} thread(s) ({' + '.join(config.sweeps)} sweep)")
        backends, notes = _make_backends(exp, list(runtimes), config, builds, torch_module, log, data)
        rows = (run_config(backends, _batches(data, config.batch_size), repeats, warmup, log, pause_s)
                if backends else [])
        _add_auc_ratios(rows, backends, data)
        for row in rows:
            row.update(threads=config.threads, sweeps=list(config.sweeps))
            if flops and row.get("samples_per_s"):  # the share of the peak of the row's own precision
                peak = result["peaks"].get(row["precision"], result["peaks"]["fp32"])["gops"]
                row["fraction_of_peak"] = row["samples_per_s"] * flops / 1e9 / peak
        result["rows"] += rows + notes
        _log_rows(rows, log)
        del backends
        gc.collect()
    wrong = [r for r in result["rows"] if r.get("agrees") is False]
    result["status"] = "failed" if wrong else "ok"
    path = exp.save_measurement(BENCH_MEASUREMENT, result)
    log(f"[bench] saved {path}")
    if json_path:
        write_json(json_path, result)
        log(f"[bench] and {json_path}")
    if wrong:
        worst = max(wrong, key=lambda r: r["max_abs_diff_vs_onnxruntime"])
        raise DlrmError(f"{len(wrong)} run(s) differ from ONNX Runtime's outputs by more than {AGREEMENT:g} (worst: "
                        f"{worst['runtime']} at batch {worst['batch_size']}, "
                        f"{worst['max_abs_diff_vs_onnxruntime']:.2e}); recorded as failed in {path}")
    return result


def _peaks(exp: Experiment, log) -> tuple[dict, int | None]:
    """The machine's peak per precision now (dlrmlib.core.machine.precision_peaks), and the
    model's FLOPs per sample when it is a preset's (a model of your own: no share of the peak)."""
    peaks = precision_peaks()
    log("[bench] peaks now: " + ", ".join(f"{p} {v['gops']:.0f} G ops/s ({v['how']})" for p, v in peaks.items()))
    preset = exp.params.get("preset")
    return peaks, PRESETS[preset].flops_per_sample() if preset in PRESETS else None


def _add_auc_ratios(rows: list[dict], backends: list, data) -> None:
    """Each row's AUC over the test data's scored samples (after the calibration slice, which a
    statically quantised peer calibrated on) against the fp32 reference's (reference.npy), and
    the largest score difference: a reduced-precision row is only comparable with its accuracy."""
    data = data.scored()
    for row, backend in zip(rows, backends):
        batches = -(-len(data.dense) // backend.batch_size)
        # by the measured median, not the first call (a runtime's first call may compile, or meet a busy machine)
        if row.get("status") != "ok" or data.reference is None or \
                row["latency_ms"]["median"] / 1e3 * batches > AUC_BUDGET_S:
            row.update(auc_ratio=None, max_abs_diff_vs_reference=None)
            continue
        figures = accuracy(predict_all(backend, data.dense, data.sparse), data.reference, data.labels)
        row.update(auc_ratio=figures["auc"] / figures["reference_auc"],
                   max_abs_diff_vs_reference=figures["max_abs_error"])


def _log_rows(rows: list[dict], log) -> None:
    for row in rows:
        if row.get("status") != "ok":
            continue
        ratio = row["ratio_to_onnxruntime"]
        ratio_text = f"{ratio:.3f}x onnxruntime" if ratio else "onnxruntime did not run"
        flag = "" if row["agrees"] in (True, None) else f"  OUTPUTS DIFFER by {row['max_abs_diff_vs_onnxruntime']:.1e}"
        auc = f", AUC {row['auc_ratio']:.4f}x fp32's" if row.get("auc_ratio") else ""
        log(f"[bench]   {row['runtime']:>18} ({row['precision']}): {row['samples_per_s']:>10.0f} samples/s "
            f"({ratio_text}{auc}){flag}")


def load_bench(exp: Experiment) -> dict:
    return exp.measurement(BENCH_MEASUREMENT, f"run `dlrm bench --experiment {exp.name}` or notebook 04_profile")


def bench_table(result: dict, sweep: str | None = None):
    """One row per runtime and configuration: samples/s, ratio to ONNX Runtime, latency median
    and spread, runs, output agreement; rows that could not run say why."""
    import pandas as pd

    rows = []
    for r in result["rows"]:
        if sweep and sweep not in r.get("sweeps", []):
            continue
        lat = r.get("latency_ms") or {}
        rows.append({"runtime": r["runtime"], "precision": r.get("precision", "fp32"), "auc ratio": r.get("auc_ratio"),
                     "batch size": r["batch_size"], "threads": r["threads"],
                     "samples/s": r.get("samples_per_s"), "ratio to onnxruntime": r.get("ratio_to_onnxruntime"),
                     "% of its precision's peak": 100 * r["fraction_of_peak"] if r.get("fraction_of_peak") else None,
                     "latency ms (median)": lat.get("median"), "p10": lat.get("p10"), "p90": lat.get("p90"),
                     "runs": lat.get("n"), "first call s": r.get("first_call_s"),
                     "max |diff| vs onnxruntime": r.get("max_abs_diff_vs_onnxruntime"),
                     "status": r.get("status")})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(["threads", "batch size", "runtime"]).reset_index(drop=True).round(
        {"samples/s": 1, "ratio to onnxruntime": 4, "% of its precision's peak": 1, "latency ms (median)": 3, "p10": 3, "p90": 3, "first call s": 2})
