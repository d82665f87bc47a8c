"""The issue-8 goal table: TVM with the hand-written kernels against every peer, per batch size.

For each batch size: one experiment `perf-<preset>-b<B>` (prepared and built with
`schedule="custom"` if missing, and from the MetaSchedule log shipped for this machine kind,
preset and batch size when there is one: the "tvm-tuned (shipped log)" row), then repetitions in which every runtime runs the same batches
once, in a rotating order, with a large numpy sgemm timed in the same loop as the machine's
fp32 peak. The machine may be shared: every figure is a median over repetitions and every
comparison a ratio within the same run.

Two ways to use the cores, two tables:
- one request at a time on every core ("latency" mode; batch 1 is the latency goal);
- parallel requests (`--streams`, default one per core), each on one thread: every peer as that
  many sessions driven from as many Python threads, TVM as the native runner's instances
  (`dlrm_infer --instances S --threads 1`). No barrier between cores, so this is the
  throughput a server gets.

Reduced precision (`--precisions fp32,int8,bf16`): TVM builds `custom_int8` / `custom_bf16` beside
`custom`, the peers at their best precision (OpenVINO bf16 and int8 through NNCF, ONNX Runtime
int8 quantize_dynamic and quantize_static, PyTorch bf16 autocast) beside their fp32 runs; every
row has its precision and its AUC over the scored test samples (after the calibration slice the
static peers calibrate on) against the fp32 reference's, and TVM's fastest build is compared
with the fastest peer that passes the same 99.9 % gate. The machine's peak per precision (fp32
sgemm, int8 GEMM through PyTorch/oneDNN, bf16 where the CPU has bf16 arithmetic) is timed after
every round, and each row's share of the peak is of its own precision's.

    python benchmarks/bench_perf.py --preset small --batches 1,128,256,2048
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

PEERS = ("onnxruntime", "openvino", "pytorch-eager")
REDUCED_PEERS = ("onnxruntime-int8", "onnxruntime-int8-static", "openvino-bf16", "openvino-int8", "pytorch-eager-bf16")
WORK_S = 0.2  # timed work per runtime per repetition
GATE = 0.999  # AUC ratio a row must reach to count as a peer (MLPerf's high-accuracy target)


REPO_LOGS = Path(__file__).resolve().parent.parent / "logs"


def shipped_kernel_log(logs: Path | None, preset: str, batch: int) -> Path | None:
    """logs/<this machine>/<preset>/b<batch>/, when the repository ships a kernel log for it."""
    from dlrmlib.core.target import machine_kind
    from dlrmlib.schedules.knobs import LOG_FILE

    folder = Path(logs) / machine_kind() / preset / f"b{batch}" if logs else None
    return folder if folder and (folder / LOG_FILE).is_file() else None


TUNED_NAME = "tvm-tuned (shipped log)"  # the row of the MetaSchedule build from a shipped tuning log


def shipped_tuned_build(exp, logs: Path | None, preset: str, batch: int, log):
    """The MetaSchedule build from the tuning log shipped for this machine kind, preset and
    batch (logs/<kind>/<preset>/b<batch>/tuned-fp32/), built once per log; None when none ships.
    So the figures rebuild without tuning; a log shipped for another machine kind is never
    looked up (the folder is this machine's kind)."""
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import FromLog
    from dlrmlib.core.errors import DlrmError
    from dlrmlib.core.target import machine_kind
    from dlrmlib.formats.shipped_log import SHIPPED_FILE, check_shipped, find_shipped

    folder = find_shipped(logs, machine_kind(), preset, batch)
    if folder is None:
        return None
    shipped = check_shipped(folder)
    tag = FromLog.tag_for(0, bool(shipped.get("prepack", True)), shipped)
    manifest = exp.manifest_path(tag)
    if not manifest.exists() or manifest.stat().st_mtime < (folder / SHIPPED_FILE).stat().st_mtime:  # shipped anew
        try:
            build(exp, FromLog(folder), log=log)
        except DlrmError as e:  # e.g. tuned for another model: said, and left out
            log(f"[perf] batch {batch}: no build from the shipped tuning log {folder}: {e}")
            return None
    log(f"[perf] batch {batch}: tuned build {tag} from {folder} ({shipped['trials']} trials on "
        f"{shipped.get('cpu', '?')}, {shipped.get('exported', '?')})")
    return manifest


def ensure_experiment(name: str, preset: str, batch: int, tag: str, log, source=None, kernel_log=None,
                      precisions: tuple[str, ...] = ("fp32",)):
    """The experiment for one batch size with a custom-schedule build from `kernel_log` (or
    the default knobs), made once and remade when the log's choices changed; `source` (an
    earlier experiment's model) avoids generating the same weights again."""
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom
    from dlrmlib.core.errors import DlrmError
    from dlrmlib.core.experiment import Experiment
    from dlrmlib.formats.weights import read_manifest
    from dlrmlib.prepare import prepare
    from dlrmlib.schedules.knobs import kernel_configs

    try:
        exp = Experiment.open(name)
    except DlrmError:
        prepare(name, preset=None if source else preset, onnx_model=source, batch_size=batch,
                samples=max(1024, 2 * batch), log=log)
        exp = Experiment.open(name)
    knobs = kernel_configs(kernel_log, log) if kernel_log else {}
    for precision in precisions:
        manifest = exp.manifest_path(precision_tag(tag, precision))
        if not manifest.exists() or read_manifest(manifest)["build"].get("kernel_knobs") != knobs:
            try:
                # int8_vnni / int8_avx2: lesser kernels on a stronger host; int8_u8s8: AVX2's 7-bit-activation kernels
                name, _, isa = precision.partition("_")
                isa_name = {"vnni": "avx512_vnni", "avx2": "avx2", "u8s8": "avx2", "storage": "storage"}.get(isa)
                build(exp, Custom(kernel_log, precision_tag(tag, precision), name, isa_name,
                                  **({"operands": "u8s8"} if isa == "u8s8" else {})), log=log)
            except DlrmError as e:  # e.g. refused by the accuracy gate: said, and left out
                log(f"[perf] batch {batch}: no {precision} build: {e}")
    log(f"[perf] batch {batch}: kernels {'from ' + str(kernel_log) if kernel_log else 'with default knobs'}")
    return exp


def precision_of(runtime: str) -> str:
    """A parallel row's precision from its name (`onnxruntime-int8 x2`; the native TVM rows run fp32)."""
    return next((p for p in ("int8", "bf16") if f"-{p}" in runtime), "fp32")


def precision_tag(tag: str, precision: str) -> str:
    return tag if precision == "fp32" else f"{tag}_{precision}"


def auc_ratios(exp, backends: list) -> dict:
    """name -> (AUC over the scored test samples, after the calibration slice / the fp32
    reference's, largest score difference)."""
    from dlrmlib.backends import predict_all
    from dlrmlib.core.metrics import accuracy
    from dlrmlib.formats.testdata import read_test_data

    data, found = read_test_data(exp.testdata_dir).scored(), {}
    for b in backends:
        figures = accuracy(predict_all(b, data.dense, data.sparse), data.reference, data.labels)
        found[b.name] = (figures["auc"] / figures["reference_auc"], figures["max_abs_error"])
    return found


def make_peers(exp, batch: int, names: list[str], threads: int, log) -> list:
    """The peers that load here; one that does not is reported and skipped."""
    from dlrmlib.backends.factory import CALIBRATED, TorchModule, calibration_batches, make_backend
    from dlrmlib.formats.testdata import read_test_data

    torch_module, peers = TorchModule(exp), []
    calibration = (calibration_batches(read_test_data(exp.testdata_dir), batch) if set(names) & set(CALIBRATED)
                   else None)
    for name in names:
        try:
            peers.append(make_backend(name, model_path=exp.normalised_model, batch_size=batch, threads=threads,
                                      torch_module=torch_module, calibration=calibration))
        except Exception as e:  # noqa: BLE001 - a missing peer is a note, not a failure
            log(f"[perf] {name} unavailable at batch {batch}: {type(e).__name__}: {str(e)[:120]}")
    return peers


def input_batches(exp, batch: int, count: int = 4) -> list[dict]:
    from dlrmlib.backends import model_inputs
    from dlrmlib.formats.testdata import read_test_data

    data = read_test_data(exp.testdata_dir)
    starts = [(k * batch) % max(1, len(data.dense) - batch + 1) for k in range(count)]
    return [model_inputs(data.dense, data.sparse, s, batch)[0] for s in starts]


def seconds_per_batch(backend, batches: list[dict]) -> float:
    """Median seconds per batch over about WORK_S of back-to-back calls."""
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < WORK_S or len(times) < 3:
        inputs = batches[len(times) % len(batches)]
        t0 = time.perf_counter()
        backend.predict(inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peaks_now(n: int = 2048) -> dict[str, float]:
    """This machine's practical peak per precision now (G ops/s; dlrmlib.core.machine.precision_peaks)."""
    from dlrmlib.core.machine import precision_peaks

    return {precision: p["gops"] for precision, p in precision_peaks(n, repeats=3).items()}


def measure(backends: list, batches: list[dict], repeats: int, log) -> tuple[dict, list[dict]]:
    """Per runtime: seconds per batch, one per repetition; and the peaks per repetition."""
    for b in backends:  # warm-up, and every output must agree with ONNX Runtime's
        b.predict(batches[0])
    reference = backends[0].predict(batches[0])
    for b in backends[1:]:
        error = float(np.abs(b.predict(batches[0]).reshape(-1) - reference.reshape(-1)).max())
        log(f"[perf] {b.name}: max |output - {backends[0].name}| = {error:.2e}")
    return interleaved_with_peaks({b.name: (lambda b=b: seconds_per_batch(b, batches)) for b in backends},
                                  repeats)


def interleaved_with_peaks(measures: dict, repeats: int) -> tuple[dict, list[dict]]:
    """dlrmlib's interleaved rounds, timing the peaks per precision after each: name -> one
    value per repetition, and the peaks (precision -> G ops/s) per repetition."""
    from dlrmlib.core.timing import interleaved  # after main() has set TVM_NUM_THREADS

    peaks: list[dict] = []
    runs = interleaved(measures, repeats, after_round=lambda: peaks.append(peaks_now()))
    return runs, peaks


def native_samples_per_s(exp, tag: str, streams: int, passes: int) -> float:
    """The native runner with `streams` single-thread instances, `passes` over the test data:
    its own throughput figure."""
    import tempfile

    from dlrmlib.building.native import run_native

    with tempfile.TemporaryDirectory() as tmp:
        result = run_native(exp.manifest_path(tag), exp.testdata_dir, Path(tmp) / "native.json",
                            threads=1, instances=streams, iterations=passes)
    return float(result["throughput_samples_per_s"])


def parallel_sessions(exp, batch: int, name: str, streams: int, log) -> list:
    """`streams` sessions of one peer, one thread each; OpenVINO as one model with that many
    THROUGHPUT streams and one infer request per stream (its documented way to serve)."""
    if name != "openvino":
        return make_peers(exp, batch, [name] * streams, 1, log)
    from dlrmlib.backends.factory import make_backend

    first = make_backend("openvino", model_path=exp.normalised_model, batch_size=batch, threads=streams,
                         streams=streams)
    return [first] + [first.another_request() for _ in range(streams - 1)]


def measure_parallel(exp, batch: int, names: list[str], tag: str, streams: int, repeats: int,
                     samples_per_s_guess: float, log) -> tuple[dict, list[dict]]:
    """Samples/s per runtime with `streams` requests in flight, one per repetition (rotating
    order), and the peaks per repetition."""
    from dlrmlib.formats.testdata import read_test_data
    from dlrmlib.measuring.bench import parallel_samples_per_s

    sessions = {}
    for name in names:
        group = parallel_sessions(exp, batch, name, streams, log)
        if len(group) == streams:
            sessions[f"{name} x{streams}"] = group
    batches = input_batches(exp, batch)
    for group in sessions.values():  # warm-up
        parallel_samples_per_s(group, batches, 0.05)
    tvm_name = f"tvm-{tag} native x{streams}"
    # seconds per batch, as in the one-request table
    measures = {name: (lambda g=group: batch / parallel_samples_per_s(g, batches, 2 * WORK_S))
                for name, group in sessions.items()}
    samples = len(read_test_data(exp.testdata_dir).dense)  # enough passes for about 2 * WORK_S
    passes = max(1, math.ceil(2 * WORK_S * samples_per_s_guess / samples))
    measures[tvm_name] = lambda: batch / native_samples_per_s(exp, tag, streams, passes)
    return interleaved_with_peaks(measures, repeats)


def rows_for_batch(batch: int, runs: dict, peaks: list[dict], flops: float, tvm_name: str,
                   accuracy: dict | None = None, precisions: dict | None = None) -> list[dict]:
    """One row per runtime; the best peer is the fastest non-TVM runtime whose AUC ratio passes
    the gate (every peer when the accuracy was not measured); `fraction_of_peak` is of the peak
    of the row's own precision (median over the rounds)."""
    peak = {p: statistics.median(round_[p] for round_ in peaks) for p in peaks[0]}
    medians = {name: statistics.median(t) for name, t in runs.items()}
    accuracy, precisions = accuracy or {}, precisions or {}
    passing = [n for n in medians if not n.startswith("tvm") and accuracy.get(n, (1.0,))[0] >= GATE]
    best_peer = min(passing or [n for n in medians if not n.startswith("tvm")], key=medians.get)
    rows = []
    for name, sec in medians.items():
        ratio, diff = accuracy.get(name, (None, None))
        precision = precisions.get(name, "fp32")
        own_peak = peak.get(precision, peak["fp32"])
        rows.append({"batch": batch, "runtime": name, "precision": precision, "auc_ratio": ratio,
                     "max_abs_diff_vs_reference": diff, "ms_per_batch": sec * 1e3, "samples_per_s": batch / sec,
                     "gflops": batch * flops / sec / 1e9, "fraction_of_peak": batch * flops / sec / 1e9 / own_peak,
                     "peak_gops": own_peak, "ratio_to_best_peer": medians[best_peer] / sec, "best_peer": best_peer,
                     "spread_ms": [min(runs[name]) * 1e3, max(runs[name]) * 1e3], "repeats": len(runs[name]),
                     "sgemm_peak_gflops": peak["fp32"], "peaks_gops": peak})
    return rows


def print_table(rows: list[dict]) -> None:
    """The rows; `% peak`: of the peak of the row's own precision (`peak`, G ops/s, same run)."""
    print(f"{'batch':>5}  {'runtime':<30} {'prec':<5} {'AUC ratio':>9} {'ms/batch':>9} {'samples/s':>10} "
          f"{'GFLOP/s':>8} {'% peak':>7} {'peak':>6} {'x best peer':>11}")
    for r in rows:
        auc = f"{r['auc_ratio']:.4f}" if r.get("auc_ratio") is not None else "-"
        print(f"{r['batch']:>5}  {r['runtime']:<30} {r.get('precision', 'fp32'):<5} {auc:>9} {r['ms_per_batch']:>9.3f} "
              f"{r['samples_per_s']:>10.0f} {r['gflops']:>8.1f} {100 * r['fraction_of_peak']:>6.1f}% "
              f"{r.get('peak_gops', r['sgemm_peak_gflops']):>6.0f} {r['ratio_to_best_peer']:>10.2f}x")
    if rows and rows[0].get("peaks_gops"):
        print("   peaks (median of the rounds, G ops/s): " +
              ", ".join(f"{p} {v:.0f}" for p, v in rows[0]["peaks_gops"].items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batches", default="1,128,256,2048")
    p.add_argument("--peers", default=",".join(PEERS + REDUCED_PEERS))
    p.add_argument("--precisions", default="fp32",
                   help="TVM builds to compare: fp32 (tag), int8 / bf16 (tag_int8, tag_bf16), int8_vnni / bf16_storage "
                        "(the AVX-512 kernels where the host also has AMX), int8_avx2 / int8_u8s8 (the AVX2 int8 "
                        "kernels, int16 or u8 x s8 operands, on any AVX2 host), comma-separated")
    p.add_argument("--repeats", type=int, default=11, help="interleaved repetitions; medians are reported")
    p.add_argument("--threads", type=int, default=0, help="threads per runtime (0: every usable core)")
    p.add_argument("--tag", default="custom", help="TVM build tag to compare (built if missing)")
    p.add_argument("--streams", type=int, default=0,
                   help="requests in flight in the parallel table, one thread each (0: one per usable core; 1: no table)")
    p.add_argument("--kernel-logs", default=str(REPO_LOGS),
                   help="where shipped kernel logs live (<dir>/<machine>/<preset>/b<batch>); '' for default knobs")
    p.add_argument("--tuning-logs", default=str(REPO_LOGS),
                   help="where shipped MetaSchedule logs live (<dir>/<machine>/<preset>/b<batch>/tuned-fp32): a "
                        "'TVM tuned (shipped log)' row where one ships; '' for none")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--figure", type=Path, help="also save the chart (perf_vs_peers.png) into this folder")
    p.add_argument("--replot", type=Path, metavar="JSON", help="only draw the chart again from an earlier run's --json")
    args = p.parse_args(argv)

    cores = os.sched_getaffinity(0)
    threads = args.threads or len(cores)
    streams = args.streams or len(cores)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    os.environ["TVM_NUM_THREADS"] = str(threads)  # TVM sizes its pool once, at start: before any import

    from dlrmlib.backends.factory import make_backend
    from dlrmlib.formats.presets import PRESETS

    if args.replot:  # the chart again from an earlier run's --json rows, nothing measured
        print(f"chart: {chart(json.loads(args.replot.read_text()), args.figure or Path('.'))}")
        return 0
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    machine = machine_caption()  # the load average at the start
    flops = PRESETS[args.preset].flops_per_sample()
    rows, source = [], None
    for batch in [int(b) for b in args.batches.split(",")]:
        kernel_log = shipped_kernel_log(Path(args.kernel_logs) if args.kernel_logs else None, args.preset, batch)
        exp = ensure_experiment(f"perf-{args.preset}-b{batch}", args.preset, batch, args.tag, log, source, kernel_log,
                                precisions)
        source = source or exp.source_model
        tvm_backends = [make_backend("tvm", manifest=exp.manifest_path(precision_tag(args.tag, p)))
                        for p in precisions if exp.manifest_path(precision_tag(args.tag, p)).exists()]
        tvm_backend = tvm_backends[0]
        tuned = shipped_tuned_build(exp, Path(args.tuning_logs) if args.tuning_logs else None, args.preset, batch,
                                    log) if "fp32" in precisions else None
        if tuned is not None:
            tvm_backends.append(make_backend("tvm", manifest=tuned))
            tvm_backends[-1].name = TUNED_NAME
        backends = make_peers(exp, batch, args.peers.split(","), threads, log) + tvm_backends
        accuracy = auc_ratios(exp, backends)
        runs, peaks = measure(backends, input_batches(exp, batch), args.repeats, log)
        latency_rows = rows_for_batch(batch, runs, peaks, flops, tvm_backend.name, accuracy,
                                      {b.name: getattr(b, "precision", "fp32") for b in backends})
        rows += [{**r, "mode": "latency", "streams": 1} for r in latency_rows]
        print_table(latency_rows)
        del backends, tvm_backend, tvm_backends
        if streams > 1:
            guess = next(r["samples_per_s"] for r in latency_rows if r["runtime"].startswith("tvm"))
            runs, peaks = measure_parallel(exp, batch, args.peers.split(","), args.tag, streams, args.repeats,
                                           guess, log)
            parallel_rows = rows_for_batch(batch, runs, peaks, flops, f"tvm-{args.tag} native x{streams}",
                                           precisions={n: precision_of(n) for n in runs})
            rows += [{**r, "mode": "parallel", "streams": streams} for r in parallel_rows]
            print_table(parallel_rows)
    for mode in ("latency", "parallel"):
        if any(r["mode"] == mode for r in rows):
            print(f"\n{mode}:")
            print_table([r for r in rows if r["mode"] == mode])
    rows = [{**r, "machine": machine, "preset": args.preset, "threads": threads} for r in rows]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.figure:
        print(f"chart: {chart(rows, args.figure)}")
    return 0


def machine_caption() -> str:
    """The machine kind, CPU, flags, load average now and versions: the chart's caption."""
    from dlrmlib.core.machine import caption, provenance
    from dlrmlib.core.target import machine_kind

    return f"{machine_kind()}: {caption(provenance())}"


def chart(rows: list[dict], folder: Path) -> Path:
    """perf_vs_peers.png from a run's rows, captioned with the machine as it was at the run's start."""
    from dlrmlib.reporting.plots import perf_vs_peers, save

    first = rows[0]
    built = sorted({r["precision"] for r in rows if r["runtime"].startswith("tvm")})
    text = (f"{first.get('machine', '')}; {first.get('preset', '?')} preset, TVM builds {'/'.join(built)}, "
            f"{first.get('threads', '?')} threads per runtime, medians of {first['repeats']} interleaved rounds")
    return save(perf_vs_peers(rows, text), folder, "perf_vs_peers")


if __name__ == "__main__":
    sys.exit(main())
