"""LoadGen: an experiment's build under MLPerf Inference's scenarios, as MLPerf measures DLRM.

MLPerf's LoadGen (`mlcommons-loadgen`, module `mlperf_loadgen`) issues query samples and times
the answers: SingleStream (one sample at a time; the 90th percentile latency counts), Server
(samples arrive at random at a target rate; the 99th percentile latency must stay under the
bound) and Offline (everything at once; throughput counts). A query sample is an aggregate of
100 to 700 user-item pairs (`dlrmlib.measuring.aggregation`). The library is built for a fixed batch B:
the harness packs the pairs of every waiting sample into batches of B, padding a batch only
when nothing else waits (so a lone sample of k pairs takes ceil(k / B) batches, and Offline
runs full batches). Accuracy mode scores the returned predictions (AUC against the labels and
the distance to the fp32 reference outputs) from LoadGen's own accuracy log.

Settings start from MLPerf's rules for DLRM (LoadGen's built-in `mlperf.conf`, model
`dlrm-v2`: 10-minute runs). Shorter runs (`min_duration_s`, `min_query_count`, ...) are marked
`research` in the results. No run here is a valid MLPerf result: model and data are synthetic.
"""
from __future__ import annotations

import collections
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from dlrmlib.backends import model_inputs
from dlrmlib.backends.factory import experiment_backend
from dlrmlib.building.verify import TOLERANCE
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import atomic_dir
from dlrmlib.core.machine import utc_now
from dlrmlib.core.metrics import accuracy
from dlrmlib.formats.loadgen_logs import parse_detail, parse_summary, read_accuracy_log
from dlrmlib.formats.testdata import TestData, read_test_data, read_test_meta
from dlrmlib.measuring.aggregation import Aggregation, aggregate, load_aggregation, save_aggregation

SCENARIOS = ("SingleStream", "Offline", "Server")
MODES = ("performance", "accuracy")
BACKENDS = ("tvm", "onnxruntime")
MLPERF_MODEL = "dlrm-v2"  # the name LoadGen's mlperf.conf gives DLRM's rules
SERVER_LOAD = 0.5  # default Server target: half the calibrated capacity
AGGREGATION_FILE = "aggregation.npz"
NOT_VALID = "not a valid MLPerf result: synthetic model and test data"
# Limits that bound LoadGen's memory whatever the user asks: it schedules every query of a run
# up front (target x duration of them) and keeps a record of each.
QPS_ABOVE = 10  # a target over 10x the calibrated capacity only grows the queue
QPS_BELOW = 1000  # one under 1/1000 of it waits minutes between queries
MAX_QUERIES = 2_000_000  # query samples in one run (LoadGen keeps ~200 bytes each, plus the answers)
MAX_QUERY_SAMPLES = 100_000
DAY = 86400.0


# -- the system under test ------------------------------------------------------------------

@dataclass
class _Sample:
    """A query sample in flight: its pairs, the scores so far, how many are done."""

    query_id: int
    rows: np.ndarray
    scores: np.ndarray
    done: int = 0


class DlrmSut:
    """LoadGen's system under test. LoadGen's threads only queue samples; one worker thread
    packs the pairs of every waiting sample into batches of the library's size, runs them and
    answers each sample as soon as its last pair is scored."""

    def __init__(self, backend, data: TestData, aggregation: Aggregation):
        import mlperf_loadgen as lg

        self._lg = lg
        self.backend = backend
        self.data = data
        self.aggregation = aggregation
        self.error: Exception | None = None
        self.stats = collections.Counter()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: collections.deque[_Sample] = collections.deque()
        self._thread = threading.Thread(target=self._work, name="dlrm-sut", daemon=True)
        self._thread.start()
        self.handle = lg.ConstructSUT(self.issue_queries, self.flush_queries)

    # LoadGen's callbacks ------------------------------------------------------------------
    def issue_queries(self, query_samples) -> None:
        self._queue.put([(q.id, q.index) for q in query_samples])

    def flush_queries(self) -> None:
        """Nothing is held back waiting for more samples, so there is nothing to flush."""

    # the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            if not self._take(block=not self._pending):  # wait only when there is nothing to run
                while self._pending:  # the stop signal: answer what is left, then leave
                    self._run_batch()
                return
            if self._pending:
                self._run_batch()

    def _take(self, block: bool) -> bool:
        """Move queued samples into the pending list; False on the stop signal."""
        while True:
            try:
                item = self._queue.get(block=block)
            except queue.Empty:
                return True
            if item is None:
                return False
            for query_id, index in item:
                rows = self.aggregation.pairs(index)
                self._pending.append(_Sample(query_id, rows, np.empty(len(rows), np.float32)))
            block = False

    def _next_batch(self) -> tuple[np.ndarray, list[tuple[_Sample, int, int]]]:
        """Up to B pairs from the front of the pending samples, and where each part belongs."""
        room, parts = self.backend.batch_size, []
        for sample in self._pending:
            n = min(len(sample.rows) - sample.done, room)
            if n <= 0:
                break
            parts.append((sample, sample.done, n))
            room -= n
        return np.concatenate([s.rows[start:start + n] for s, start, n in parts]), parts

    def _run_batch(self) -> None:
        rows, parts = self._next_batch()
        try:
            scores = None if self.error else self._predict(rows)
        except Exception as e:  # noqa: BLE001 - reported after the run
            self.error = e
        if self.error is not None:  # answer anyway, or LoadGen waits for ever
            self._answer(list(self._pending), empty=True)
            self._pending.clear()
            return
        at, finished = 0, []
        for sample, start, n in parts:
            sample.scores[start:start + n] = scores[at:at + n]
            sample.done += n
            at += n
            if sample.done == len(sample.rows):
                finished.append(sample)
        for _ in finished:  # batches fill from the front, so the finished samples lead the queue
            self._pending.popleft()
        self._answer(finished)

    def _predict(self, rows: np.ndarray) -> np.ndarray:
        """Scores for up to B pairs; a short batch is padded (the padding is counted)."""
        inputs, n = model_inputs(self.data.dense[rows], self.data.sparse[rows], 0, self.backend.batch_size)
        scores = np.asarray(self.backend.predict(inputs), dtype=np.float32).ravel()[:n]
        self.stats.update(batches=1, pairs=n, padded_pairs=self.backend.batch_size - n)
        return scores

    def _answer(self, samples: list[_Sample], empty: bool = False) -> None:
        if not samples:
            return
        lg = self._lg
        self.stats.update(samples=len(samples))
        responses = [lg.QuerySampleResponse(s.query_id, 0 if empty else s.scores.ctypes.data,
                                            0 if empty else s.scores.nbytes) for s in samples]
        lg.QuerySamplesComplete(responses)  # copies what it logs before returning

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._lg.DestroySUT(self.handle)


def make_qsl(aggregation: Aggregation):
    """LoadGen's query sample library: every sample's pairs are already in memory (the test
    data's rows), so loading and unloading have nothing to do."""
    import mlperf_loadgen as lg

    return lg.ConstructQSL(len(aggregation), len(aggregation), lambda _: None, lambda _: None)


# -- settings ----------------------------------------------------------------------------------

def calibrate(backend, data: TestData, aggregation: Aggregation, seconds: float = 0.5,
              min_batches: int = 2) -> float:
    """Pairs per second on full batches, after a warm-up batch, timed for at least `seconds`:
    where the target QPS and expected latency start when the user gives none."""
    size = backend.batch_size
    rows = np.resize(aggregation.rows, size * 8).reshape(8, size)
    inputs = [model_inputs(data.dense[r], data.sparse[r], 0, size)[0] for r in rows]
    backend.predict(inputs[0])
    started, done = time.perf_counter(), 0
    while done < min_batches or time.perf_counter() - started < seconds:
        backend.predict(inputs[done % len(inputs)])
        done += 1
    return size * done / (time.perf_counter() - started)


def mlperf_rules(scenario: str) -> dict:
    """MLPerf's rules for DLRM in a scenario, in the units of `research_overrides`."""
    import mlperf_loadgen as lg

    settings = lg.TestSettings()
    settings.FromConfig("", MLPERF_MODEL, scenario, 0)  # conf type 0: LoadGen's own mlperf.conf only
    return {"min_duration_s": settings.min_duration_ms / 1000, "min_query_count": settings.min_query_count,
            "max_duration_s": settings.max_duration_ms / 1000 or None,
            "server_latency_ms": settings.server_target_latency_ns / 1e6}


def research_overrides(scenario: str, min_duration_s=None, min_query_count=None, max_duration_s=None,
                       server_latency_ms=None) -> dict:
    """The settings given that depart from MLPerf's rules; any of them makes a run `research`."""
    given = {"min_duration_s": min_duration_s, "min_query_count": min_query_count,
             "max_duration_s": max_duration_s, "server_latency_ms": server_latency_ms}
    for key, value in given.items():
        if value is not None and not (0 < value < math.inf):
            raise DlrmError(f"{key} must be a positive finite number, got {value}")
    for key, value, high in (("min_duration_s", min_duration_s, DAY), ("max_duration_s", max_duration_s, DAY),
                             ("min_query_count", min_query_count, MAX_QUERIES)):
        if value is not None and value > high:
            raise DlrmError(f"{key} is too large: at most {high:g}, got {value:g}")
    rules = mlperf_rules(scenario)
    return {k: v for k, v in given.items() if v is not None and v != rules[k]}


def loadgen_settings(scenario: str, mode: str, query_samples: int, target_qps: float, expected_latency_s: float,
                  overrides: dict):
    """LoadGen's settings: MLPerf's rules for DLRM, the run's targets, then the overrides."""
    import mlperf_loadgen as lg

    settings = lg.TestSettings()
    settings.FromConfig("", MLPERF_MODEL, scenario, 0)
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly
    settings.performance_sample_count_override = query_samples  # all of them are in memory
    settings.server_target_qps = settings.offline_expected_qps = float(target_qps)
    settings.single_stream_expected_latency_ns = int(expected_latency_s * 1e9)
    if "min_duration_s" in overrides:
        settings.min_duration_ms = int(overrides["min_duration_s"] * 1000)
    if "max_duration_s" in overrides:
        settings.max_duration_ms = int(overrides["max_duration_s"] * 1000)
    if "min_query_count" in overrides:
        settings.min_query_count = int(overrides["min_query_count"])
    if "server_latency_ms" in overrides:
        settings.server_target_latency_ns = int(overrides["server_latency_ms"] * 1e6)
    return settings


def log_settings(folder: Path):
    import mlperf_loadgen as lg

    output = lg.LogOutputSettings()
    output.outdir = str(folder)
    output.copy_summary_to_stdout = False
    settings = lg.LogSettings()
    settings.log_output = output
    settings.enable_trace = False
    return settings


# -- running -----------------------------------------------------------------------------------

def run_key(scenario: str, backend: str) -> str:
    """The measurement's name: `loadgen_<scenario>`, plus the runtime for a peer."""
    return f"loadgen_{scenario}" if backend == "tvm" else f"loadgen_{scenario}_{backend}"


def output_dir(exp: Experiment, scenario: str, backend: str, mode: str) -> Path:
    """Where LoadGen's files of one run go: `loadgen/<scenario>/<runtime>-<mode>/`."""
    return exp.root / "loadgen" / scenario / f"{backend}-{mode}"


def run_test(sut: DlrmSut, aggregation: Aggregation, settings, folder: Path) -> None:
    """One LoadGen test; its files appear in `folder` only when it finished."""
    import mlperf_loadgen as lg

    qsl = make_qsl(aggregation)
    with atomic_dir(folder) as tmp:
        save_aggregation(tmp / AGGREGATION_FILE, aggregation)
        sut.stats.clear()
        lg.StartTestWithLogSettings(sut.handle, qsl, settings, log_settings(tmp))
        lg.DestroyQSL(qsl)
        if sut.error is not None:
            raise DlrmError(f"the backend failed during the LoadGen run: {sut.error}") from sut.error


def performance_result(folder: Path, stats: dict, scenario: str) -> dict:
    """LoadGen's verdict and figures; pairs/s = LoadGen's samples/s x the pairs per sample run."""
    detail, summary = parse_detail(folder), parse_summary(folder)
    qps_key = {"SingleStream": "result_qps_with_loadgen_overhead", "Offline": "result_samples_per_second",
               "Server": "result_completed_samples_per_sec"}[scenario]
    queries_per_s = float(detail.get(qps_key, float("nan")))
    pairs_per_sample = stats["pairs"] / max(stats["samples"], 1)
    latency = {p: detail.get(f"result_{p}_percentile_latency_ns") for p in ("50.00", "90.00", "99.00")}
    return {"result": summary.get("Result is", detail.get("result_validity")),
            "queries_per_s": queries_per_s, "pairs_per_s": queries_per_s * pairs_per_sample,
            "latency_ms": {f"p{p[:2]}": v / 1e6 for p, v in latency.items() if v is not None},
            "query_count": detail.get("result_query_count"), "pairs_per_sample": pairs_per_sample,
            "settings": {k.removeprefix("effective_"): v for k, v in detail.items() if k.startswith("effective_")},
            "summary": summary, "loadgen_version": detail.get("loadgen_version")}


def batching(stats: dict) -> dict:
    """What the SUT ran: batches, real pairs, and padding (pairs that were repeats)."""
    return {"batches": stats["batches"], "pairs_run": stats["pairs"], "padded_pairs": stats["padded_pairs"],
            "samples_answered": stats["samples"]}


def accuracy_result(folder: Path, data: TestData) -> dict:
    """AUC of the returned scores against the labels, and their distance to the reference
    outputs, read back from LoadGen's accuracy log and the sample-to-pairs map."""
    aggregation = load_aggregation(folder / AGGREGATION_FILE)
    scores = read_accuracy_log(folder)
    if len(scores) != len(aggregation):
        raise DlrmError(f"LoadGen's accuracy log in {folder} has {len(scores)} of {len(aggregation)} samples")
    for index, values in scores.items():
        if len(values) != len(aggregation.pairs(index)):
            raise DlrmError(f"sample {index} came back with {len(values)} scores for "
                            f"{len(aggregation.pairs(index))} pairs (an empty answer means the backend failed)")
    order = sorted(scores)
    outputs = np.concatenate([scores[i] for i in order])
    rows = np.concatenate([aggregation.pairs(i) for i in order])
    reference = data.reference[rows] if data.reference is not None else np.full(len(rows), np.nan, np.float32)
    result = accuracy(outputs, reference, data.labels[rows])
    return {"query_samples": len(order), "pairs": result.pop("samples"), **result}


def check_target(target_qps: float, capacity_qps: float, min_duration_s: float) -> None:
    """A target LoadGen can run in bounded memory and time: finite, positive, within a factor of
    what this machine was measured to serve, and at most MAX_QUERIES queries over the run."""
    if not (0 < target_qps < math.inf):
        raise DlrmError(f"target QPS must be a positive finite number, got {target_qps}")
    if not capacity_qps / QPS_BELOW <= target_qps <= capacity_qps * QPS_ABOVE:
        raise DlrmError(f"target QPS {target_qps:g} is out of range: this build was calibrated at "
                        f"{capacity_qps:.3g} query samples/s here, so a target from {capacity_qps / QPS_BELOW:.3g} "
                        f"to {capacity_qps * QPS_ABOVE:.3g} makes sense (above: only the queue grows; below: "
                        "minutes between queries)")
    if target_qps * min_duration_s > MAX_QUERIES:
        raise DlrmError(f"target QPS {target_qps:g} for {min_duration_s:g} s is {target_qps * min_duration_s:.3g} "
                        f"queries; LoadGen schedules and records each in memory: at most {MAX_QUERIES:,} per run "
                        "(shorten --min-duration or lower the target)")


def _targets(backend, data, aggregation, scenario, target_qps, min_duration_s, log) -> tuple[float, float, dict]:
    """Target QPS and expected latency: the user's (checked), else from a short calibration."""
    mean_pairs = float(aggregation.sizes().mean())
    pairs_per_s = calibrate(backend, data, aggregation)
    queries_per_s = pairs_per_s / mean_pairs
    chosen = target_qps or (queries_per_s * SERVER_LOAD if scenario == "Server" else queries_per_s)
    if scenario != "SingleStream":  # SingleStream ignores the target
        check_target(chosen, queries_per_s, min_duration_s)
    source = "given" if target_qps else "calibrated"
    log(f"[loadgen] calibration: {pairs_per_s:.0f} pairs/s = {queries_per_s:.2f} query samples/s of "
        f"{mean_pairs:.0f} pairs; target {chosen:.2f} samples/s ({source})")
    return chosen, 1.0 / queries_per_s, {"calibrated_pairs_per_s": pairs_per_s, "target_qps": chosen,
                                         "target_qps_source": source}


def _merge(exp: Experiment, name: str, record: dict) -> dict:
    """Keep the other mode's section of an earlier run of the same build and runtime."""
    old = exp.measurement(name)
    if old is not None:
        if (old.get("backend"), old.get("build")) == (record["backend"], record["build"]):
            for mode in MODES:
                record.setdefault(mode, old.get(mode))
    record = {k: v for k, v in record.items() if v is not None}
    performance, acc = record.get("performance") or {}, record.get("accuracy") or {}
    record.update(samples_per_s=performance.get("pairs_per_s"),
                  latency_ms_p50=performance.get("latency_ms", {}).get("p50"),
                  latency_ms_p99=performance.get("latency_ms", {}).get("p99"),
                  max_abs_error=acc.get("max_abs_error"), auc=acc.get("auc"))
    return record


def run_loadgen(exp: Experiment, scenario: str = "SingleStream", modes=("performance", "accuracy"),
                backend: str = "tvm", manifest: Path | None = None, query_samples: int = 64, seed: int = 0,
                target_qps: float | None = None, min_duration_s: float | None = None,
                min_query_count: int | None = None, max_duration_s: float | None = None,
                server_latency_ms: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Run LoadGen on the experiment in one scenario and the given modes; saves the result as
    the measurement `loadgen_<scenario>` (`loadgen_<scenario>_onnxruntime` for the peer) and
    LoadGen's files under `loadgen/<scenario>/`. Returns the measurement."""
    if scenario not in SCENARIOS:
        raise DlrmError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise DlrmError(f"modes must be among {MODES}, got {modes!r}")
    if target_qps is not None and not (0 < target_qps < math.inf):
        raise DlrmError(f"target QPS must be a positive finite number, got {target_qps}")
    if not 1 <= query_samples <= MAX_QUERY_SAMPLES:
        raise DlrmError(f"query samples must be from 1 to {MAX_QUERY_SAMPLES:,}, got {query_samples}")
    overrides = research_overrides(scenario, min_duration_s, min_query_count, max_duration_s, server_latency_ms)
    duration = overrides.get("min_duration_s", mlperf_rules(scenario)["min_duration_s"])
    runtime = experiment_backend(exp, backend, manifest)
    data = read_test_data(exp.testdata_dir, read_test_meta(exp.testdata_dir)["tables"])
    aggregation = aggregate(len(data), query_samples, seed)
    qps, latency_s, targets = _targets(runtime, data, aggregation, scenario, target_qps, duration, log)
    sut = DlrmSut(runtime, data, aggregation)
    record = {"experiment": exp.name, "harness": "loadgen", "scenario": scenario,
              "runtime": "python-vm" if backend == "tvm" else backend, "backend": runtime.name,
              "build": getattr(runtime, "tag", "normalised.onnx"), "batch_size": runtime.batch_size,
              "research": bool(overrides), "research_overrides": overrides, "valid_mlperf_result": False,
              "note": NOT_VALID + ("; research settings" if overrides else ""),
              "aggregation": aggregation.summary(), "targets": targets,
              "created": utc_now()}
    try:
        for mode in modes:
            folder = output_dir(exp, scenario, backend, mode)
            log(f"[loadgen] {scenario} {mode} on {runtime.name} ({len(aggregation)} query samples, "
                f"{'research' if overrides else 'MLPerf rules'}) -> {folder}")
            run_test(sut, aggregation, loadgen_settings(scenario, mode, len(aggregation), qps, latency_s, overrides),
                     folder)
            section = (performance_result(folder, sut.stats, scenario) if mode == "performance"
                       else accuracy_result(folder, data))
            record[mode] = {**section, **batching(sut.stats), "output_dir": str(folder.relative_to(exp.root))}
            log(_describe(mode, record[mode]))
    finally:
        sut.close()
    name = run_key(scenario, backend)
    error = (record.get("accuracy") or {}).get("max_abs_error")
    record["tolerance"] = TOLERANCE
    checked = error is not None and data.reference is not None
    record["status"] = ("failed" if not error <= TOLERANCE else "ok") if checked else "unchecked"
    record = _merge(exp, name, record)
    exp.save_measurement(name, record)
    if record["status"] == "failed":
        raise DlrmError(f"LoadGen's answers differ from the reference outputs by {error:.2e} (> {TOLERANCE:g}); "
                        f"recorded as failed in {name}.json")
    return record


def _describe(mode: str, section: dict) -> str:
    if mode == "accuracy":
        return (f"[loadgen] accuracy: AUC {section['auc']:.4f} (reference {section['reference_auc']:.4f}), "
                f"max |score - reference| {section['max_abs_error']:.2e} over {section['pairs']} pairs")
    latency = section["latency_ms"]
    return (f"[loadgen] {section['result']}: {section['queries_per_s']:.2f} query samples/s = "
            f"{section['pairs_per_s']:.0f} pairs/s; latency p50 {latency.get('p50', math.nan):.1f} ms, "
            f"p99 {latency.get('p99', math.nan):.1f} ms; {section['batches']} batches, "
            f"{section['padded_pairs']} padded pairs")


# -- for the report ----------------------------------------------------------------------------

TABLE_COLUMNS = ["scenario", "runtime", "build", "result", "research", "target_qps", "queries_per_s", "pairs_per_s",
                 "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "auc", "reference_auc", "max_abs_error",
                 "query_samples", "mean_pairs"]


def loadgen_table(exp: Experiment) -> pd.DataFrame:
    """Every LoadGen measurement of the experiment, one row each (latencies are per query
    sample, in ms; pairs/s counts user-item pairs, comparable with other runtimes' samples/s)."""
    rows = []
    for name, m in exp.measurements().items():
        if m.get("harness") != "loadgen":
            continue
        perf, acc = m.get("performance") or {}, m.get("accuracy") or {}
        latency = perf.get("latency_ms", {})
        rows.append({"measurement": name, "scenario": m["scenario"], "runtime": m["runtime"], "build": m["build"],
                     "result": perf.get("result"), "research": m.get("research"),
                     "target_qps": m.get("targets", {}).get("target_qps"), "queries_per_s": perf.get("queries_per_s"),
                     "pairs_per_s": perf.get("pairs_per_s"), "latency_ms_p50": latency.get("p50"),
                     "latency_ms_p90": latency.get("p90"), "latency_ms_p99": latency.get("p99"),
                     "auc": acc.get("auc"), "reference_auc": acc.get("reference_auc"),
                     "max_abs_error": acc.get("max_abs_error"),
                     "query_samples": m["aggregation"]["query_samples"], "mean_pairs": m["aggregation"]["mean_pairs"]})
    return pd.DataFrame(rows, columns=["measurement", *TABLE_COLUMNS]).set_index("measurement")
