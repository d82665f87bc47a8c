"""Per-operator profiles: every kernel a runtime calls, timed, given its DLRM bucket and its
FLOPs and bytes, for every TVM build of an experiment and for ONNX Runtime on the same model.

TVM 0.27's Relax VM has no `profile()`; `vm.set_instrument(fn)` calls `fn` before and after
every VM call instruction (kernels and VM builtins) with the function and its arguments.
Timing between the two callbacks would include the callback's conversion of every argument
to a Python object (microseconds: as long as a small kernel), so the recorder times each call
itself, from the "before" callback: a kernel (a compiled TIR function, destination-passing:
it returns nothing) is run there and the VM told to skip it (`SKIP_RUN`); a known side-effect
free builtin (allocation from the pool, shape checks) is run there once for timing and again
by the VM for its result. What the FFI call from Python costs with those very arguments is
measured right after by calling a no-op function (`testing.nop`) with them, and subtracted.
Anything else is timed between the callbacks, uncorrected.

ONNX Runtime profiles itself (`SessionOptions.enable_profiling`): its JSON trace has one
`Node` event per kernel per run.

The check that makes a profile trustworthy: per-kernel times must add up to the end-to-end
time of uninstrumented runs (interleaved with the profiled ones) within a stated margin.
"""
from __future__ import annotations

import gc
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from dlrmlib.backends import batch_inputs
from dlrmlib.backends.onnxruntime import OnnxRuntimeBackend
from dlrmlib.backends.tvm import TvmBackend
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.machine import ALLOWED_CPUS, machine_peaks, provenance, tvm_pool_threads
from dlrmlib.core.metrics import spread
from dlrmlib.formats.normalise import embedding_tables, load_graph
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.weights import read_manifest
from dlrmlib.measuring.cost_model import (
    BUCKETS,
    EMBEDDING,
    INPUT_BUCKETS,
    OTHER,
    TensorInfo,
    classify,
    kernel_cost,
    param_bucket,
)

MARGIN = 0.10  # per-kernel times must add up to end-to-end within this fraction
MIN_SECONDS = 3.0  # profile each build/runtime at least this long (more rounds for fast ones)
MAX_ROUNDS = 300
PROFILE_MEASUREMENT = "profile"
_ORT_DTYPES = {"float": "float32", "double": "float64", "float16": "float16", "int64": "int64",
               "int32": "int32", "bool": "bool", "int8": "int8", "uint8": "uint8"}


# -- statistics ------------------------------------------------------------------------------


def rounds(repeats: int, min_seconds: float, most: int = MAX_ROUNDS):
    """Round numbers: at least `repeats`, and more until `min_seconds` have passed (a fast
    build gets enough runs for stable medians on a noisy machine), at most `most`."""
    if repeats < 1:
        raise DlrmError(f"repeats must be at least 1, got {repeats}")
    started = time.perf_counter()
    r = 0
    while r < repeats or (time.perf_counter() - started < min_seconds and r < most):
        yield r
        r += 1


def _kernel_record(index: int, name: str, bucket: str, kind: str, times_ms, inputs: list[TensorInfo],
                   outputs: list[TensorInfo], op: str | None = None, tables: frozenset[int] = frozenset()) -> dict:
    """One kernel's row: timing spread, cost, and the rates a roofline plots."""
    flops, nbytes = kernel_cost(op or name, inputs, outputs, tables) if kind == "kernel" else (0, 0)
    stats = spread(times_ms)
    seconds = stats["median"] / 1e3
    return {"index": index, "name": name, "op": op or name, "kind": kind, "bucket": bucket,
            "ms": stats["median"], "ms_p10": stats["p10"], "ms_p90": stats["p90"], "runs": stats["n"],
            "flops": flops, "bytes": nbytes,
            "intensity": flops / nbytes if nbytes else None,
            "gflops_per_s": flops / seconds / 1e9 if seconds > 0 and flops else None,
            "gbytes_per_s": nbytes / seconds / 1e9 if seconds > 0 and nbytes else None,
            "inputs": [[list(t.shape), t.dtype] for t in inputs],
            "outputs": [[list(t.shape), t.dtype] for t in outputs]}


def _summarise(runtime: str, build: str, batch_size: int, threads: int | None, kernels: list[dict],
               per_run_ms: np.ndarray, end_to_end_ms: list[float], margin: float, extra: dict) -> dict:
    """The check (kernels add up to end-to-end) and the per-bucket times of one profile. The
    kernels' total and the buckets are medians over runs of per-run sums, like the end-to-end
    time they are compared with (interleaved runs: a busy neighbour disturbs both alike); a
    kernel's own time is its median."""
    e2e = spread(end_to_end_ms)
    buckets_of = np.array([k["bucket"] for k in kernels])
    per_run_total = spread(per_run_ms.sum(axis=1))
    total = per_run_total["median"]
    buckets = {b: float(np.median(per_run_ms[:, buckets_of == b].sum(axis=1))) for b in BUCKETS}
    coverage = total / e2e["median"] if e2e["median"] else float("nan")
    return {"runtime": runtime, "build": build, "label": runtime if runtime != "tvm" else f"tvm-{build}",
            "batch_size": batch_size, "threads": threads, "end_to_end_ms": e2e,
            "kernels_sum_ms": total, "kernels_per_run_ms": per_run_total,
            "kernel_medians_sum_ms": float(sum(k["ms"] for k in kernels)),
            "unattributed_ms": e2e["median"] - total, "coverage": coverage,
            "margin": margin, "within_margin": bool(abs(1.0 - coverage) <= margin),
            "buckets_ms": buckets, "kernels": kernels, **extra}


# -- TVM: the Relax VM's instrument hook --------------------------------------------------------

@dataclass
class _Call:
    name: str
    depth: int
    ns: int = 0
    args: list = field(default_factory=list)
    timed_here: bool = False  # run and timed by the recorder itself
    overhead_ns: int = 0  # what the FFI call with the same arguments costs


_SKIP_RUN = 1  # tvm.runtime.vm.VMInstrumentReturnKind.SKIP_RUN, without importing TVM here


# Builtins without side effects that matter: running one twice (once to time it) is harmless.
_PURE_BUILTINS = {"vm.builtin.alloc_storage", "vm.builtin.alloc_tensor", "vm.builtin.check_tensor_info",
                  "vm.builtin.match_shape", "vm.builtin.null_value", "vm.builtin.reshape",
                  "vm.builtin.make_tuple", "vm.builtin.make_shape"}


class CallRecorder:
    """A `vm.set_instrument` callback that times every top-level VM call itself (see the module
    docstring); on the first run it also keeps each call's tensor arguments (shape, dtype,
    address) to attribute kernels afterwards."""

    def __init__(self, nop=None):
        self.runs: list[list[_Call]] = []
        self._stack: list[tuple[_Call, int | None]] = []
        self._keep_args = True
        self._nop = nop  # a no-op FFI function: what calling with these arguments costs

    def start_run(self) -> None:
        self.runs.append([])
        self._keep_args = len(self.runs) == 1

    def __call__(self, func, name, before_run, ret_value, *args):
        if not before_run:
            end = time.perf_counter_ns()
            call, start = self._stack.pop()
            if start is not None:
                call.ns = end - start
            return 0
        call = _Call(str(name), len(self._stack))
        self.runs[-1].append(call)
        if self._keep_args:
            call.args = [_tensor_arg(a) for a in args]
        # A compiled kernel is a plain FFI Function returning nothing; a VM closure (another
        # Relax function) returns a value and is left to the VM.
        kernel = type(func).__name__ == "Function" and not call.name.startswith("vm.builtin")
        if call.depth or not (kernel or call.name in _PURE_BUILTINS):
            self._stack.append((call, time.perf_counter_ns()))  # last: the VM runs it next
            return 0
        start = time.perf_counter_ns()
        func(*args)
        call.ns = time.perf_counter_ns() - start
        call.timed_here = True
        if self._nop is not None:
            start = time.perf_counter_ns()
            self._nop(*args)
            call.overhead_ns = time.perf_counter_ns() - start
        if kernel:
            return _SKIP_RUN
        self._stack.append((call, None))  # the VM runs the builtin again, for its result
        return 0


def _tensor_arg(value):
    """(TensorInfo, address) of a tensor argument, None for anything else."""
    if hasattr(value, "shape") and hasattr(value, "data_ptr") and hasattr(value, "dtype"):
        return TensorInfo(tuple(int(s) for s in value.shape), str(value.dtype)), value.data_ptr()
    return None


def _attribute_tvm(calls: list[_Call], param_names: dict[int, str], input_names: dict[int, str],
                   num_vectors: int, tables: list[int]) -> list[tuple[str, str, list, list, frozenset]]:
    """(kind, bucket, inputs, outputs, positions of embedding tables among the inputs) per
    top-level call. Kernels use destination passing: the last tensor argument is the output;
    its address then maps to the kernel's bucket."""
    produced: dict[int, str] = {}
    out = []
    for call in calls:
        tensors = [a for a in call.args if a is not None]
        if call.name.startswith("vm.builtin") or not tensors:
            out.append(("builtin", OTHER, [t for t, _ in tensors], [], frozenset()))
            continue
        *ins, (result, result_ptr) = tensors
        params = [param_names[p] for _, p in ins if p in param_names]
        inputs = [input_names[p] for _, p in ins if p in input_names]
        producers = [produced[p] for _, p in ins if p in produced]
        bucket = classify(call.name, params, inputs, producers, [t for t, _ in ins] + [result],
                          num_vectors, tables)
        produced[result_ptr] = bucket
        table_inputs = frozenset(i for i, (t, p) in enumerate(ins) if p in param_names
                                 and param_bucket(param_names[p], t.shape, tables) == EMBEDDING)
        out.append(("kernel", bucket, [t for t, _ in ins], [result], table_inputs))
    return out


def _call_times_ms(top: list[list[_Call]]) -> tuple[np.ndarray, float]:
    """Runs x calls array of times less the FFI call overhead, and that overhead's median (µs)."""
    raw = np.array([[c.ns for c in calls] for calls in top], dtype=np.float64)
    overhead = np.array([[c.overhead_ns for c in calls] for calls in top], dtype=np.float64)
    return np.maximum(raw - overhead, 0) / 1e6, float(np.median(overhead)) / 1e3


def profile_tvm(manifest_path: str | Path, data, repeats: int = 10, warmup: int = 2,
                margin: float = MARGIN, threads: int | None = None, min_seconds: float = MIN_SECONDS) -> dict:
    """Every call of one TVM build's `main`, over at least `repeats` instrumented runs (and
    `min_seconds`) interleaved with as many uninstrumented ones (the end-to-end time the
    kernels must add up to)."""
    import tvm


    backend = TvmBackend(manifest_path)
    if threads and threads != tvm_pool_threads():
        raise DlrmError(f"TVM's thread pool runs {tvm_pool_threads()} threads in this process; profile with "
                        f"TVM_NUM_THREADS={threads} set before Python starts for {threads}")
    batches = _tvm_batches(backend, data)
    run = lambda args: backend.main(*args, *backend.params)  # noqa: E731 - the timed call
    for i in range(warmup):
        run(batches[i % len(batches)])
    recorder, e2e = CallRecorder(tvm.get_global_func("testing.nop", allow_missing=True)), []
    for r in rounds(repeats, min_seconds):
        args = batches[r % len(batches)]
        start = time.perf_counter()
        run(args)
        e2e.append((time.perf_counter() - start) * 1e3)
        backend.vm.set_instrument(recorder)
        recorder.start_run()
        try:
            run(args)
        finally:
            backend.vm.set_instrument(None)
    top = [[c for c in run_calls if c.depth == 0] for run_calls in recorder.runs]
    if len({tuple(c.name for c in calls) for calls in top}) != 1:
        raise DlrmError(f"{backend.name}: the VM called different kernels in different runs; "
                        "a static-shape build should not")
    per_run, overhead_us = _call_times_ms(top)
    param_names = {t.data_ptr(): spec["name"] for t, spec in zip(backend.params, backend.manifest["params"])}
    input_names = {t.data_ptr(): spec["name"] for t, spec in zip(batches[0], backend.input_specs)}
    tables = backend.manifest["embedding"]["tables"]
    attributed = _attribute_tvm(top[0], param_names, input_names, len(tables) + 1, tables)
    kernels = [_kernel_record(i, c.name, bucket, kind, per_run[:, i], ins, outs, tables=table_inputs)
               for i, (c, (kind, bucket, ins, outs, table_inputs)) in enumerate(zip(top[0], attributed))]
    threads = tvm_pool_threads()
    return _summarise("tvm", backend.tag, backend.batch_size, threads, kernels, per_run, e2e, margin, {
        "version": backend.version, "manifest": Path(manifest_path).name,
        "trials": backend.manifest["build"].get("trials", 0),
        "call_overhead_us": overhead_us, "calls_per_run": len(top[0]),
        "timing": "end to end: one call of the library's main on prepared inputs; each VM call: "
                  "run and timed from the instrument's before-callback, less the cost of an FFI "
                  "no-op call with the same arguments"})


def _tvm_batches(backend, data) -> list[list]:
    """The test data as the library's input tensors, batch by batch (checked once)."""
    import tvm

    batches = []
    for inputs in batch_inputs(data.dense, data.sparse, backend.batch_size):
        backend.check(inputs)
        batches.append([tvm.runtime.tensor(inputs[s["name"]]) for s in backend.input_specs])
    return batches


# -- ONNX Runtime: its own profiler ------------------------------------------------------------

def _ort_tensors(shapes: list[dict]) -> list[TensorInfo]:
    return [TensorInfo(tuple(int(d) for d in shape), _ORT_DTYPES.get(dtype, "float32"))
            for entry in shapes for dtype, shape in entry.items()]


def onnx_node_buckets(model: onnx.ModelProto, tables: list[int]) -> dict[str, tuple[str, list]]:
    """Each node of the ONNX graph: its bucket (same rules as for TVM kernels, by tensor
    names) and the shapes of the weights it reads."""
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    produced: dict[str, str] = {}
    result = {}
    num_vectors = len(tables) + 1
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        params = [i for i in node.input if i in weights]
        bucket = classify(node.op_type, params, [i for i in node.input if i in INPUT_BUCKETS],
                          [produced[i] for i in node.input if i in produced], [], num_vectors, tables)
        for o in node.output:
            produced[o] = bucket
        result[node.name] = (bucket, [weights[p] for p in params])
    return result


def _ort_node_name(event_name: str, known: dict) -> str | None:
    """The ONNX node an ORT kernel event ran: ORT prefixes fused nodes with "fused " and
    appends "/<Fusion>" to rewritten ones."""
    name = event_name.removesuffix("_kernel_time").removeprefix("fused ")
    while name not in known and "/" in name:
        name = name.rsplit("/", 1)[0]
    return name if name in known else None


def parse_ort_trace(events: list[dict], skip_runs: int) -> tuple[list[str], dict[str, dict], np.ndarray, list]:
    """Node events of each `model_run` after the first `skip_runs`: the node names in execution
    order, each node's first event (for shapes and op type), a runs x nodes array of µs, and
    each run's own duration (µs) by ONNX Runtime's clock."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip_runs:]
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    if not runs:
        raise DlrmError("the ONNX Runtime trace has no model_run events")
    order, first, per_run = [], {}, []
    for run in runs:
        durations: dict[str, float] = {}
        for e in nodes:
            if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]:
                durations[e["name"]] = durations.get(e["name"], 0.0) + e["dur"]
                if e["name"] not in first:
                    first[e["name"]] = e
                    order.append(e["name"])
        per_run.append(durations)
    return (order, first, np.array([[d.get(n, 0.0) for n in order] for d in per_run], dtype=np.float64),
            [run["dur"] for run in runs])


def profile_onnxruntime(model_path: str | Path, data, batch_size: int, repeats: int = 10, warmup: int = 2,
                        threads: int | None = None, margin: float = MARGIN, min_seconds: float = MIN_SECONDS) -> dict:
    """ONNX Runtime's own per-node profile of the model, with the end-to-end time of an
    unprofiled session on the same inputs, runs interleaved."""
    import onnxruntime as ort

    model_path = Path(model_path)
    threads = threads or len(ALLOWED_CPUS)
    plain = OnnxRuntimeBackend(model_path, batch_size, threads).session
    batches = batch_inputs(data.dense, data.sparse, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        profiled = OnnxRuntimeBackend(model_path, batch_size, threads, profile_prefix=str(Path(tmp) / "ort")).session
        for i in range(warmup):
            profiled.run(None, batches[i % len(batches)])
            plain.run(None, batches[i % len(batches)])
        e2e = []
        for r in rounds(repeats, min_seconds):
            inputs = batches[r % len(batches)]
            start = time.perf_counter()
            plain.run(None, inputs)
            e2e.append((time.perf_counter() - start) * 1e3)
            profiled.run(None, inputs)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    order, first, per_run_us, run_us = parse_ort_trace(events, skip_runs=warmup)
    model = load_graph(model_path)
    tables = embedding_tables(model)
    graph = onnx_node_buckets(model, tables)
    kernels = []
    for i, name in enumerate(order):
        args = first[name]["args"]
        ins, outs = _ort_tensors(args.get("input_type_shape", [])), _ort_tensors(args.get("output_type_shape", []))
        op = args.get("op_name", name)
        node = _ort_node_name(name, graph)
        if node:
            bucket, weight_shapes = graph[node]
            present = {t.shape for t in ins}
            ins = ins + [TensorInfo(tuple(s), "float32") for s in weight_shapes if tuple(s) not in present]
        else:
            bucket = classify(op, [], [], [], ins + outs, len(tables) + 1, tables)
        kernels.append(_kernel_record(i, name.removesuffix("_kernel_time"), bucket, "kernel", per_run_us[:, i] / 1e3,
                                      ins, outs, op=op))
    return _summarise("onnxruntime", "normalised.onnx", batch_size, threads,
                      kernels, per_run_us / 1e3, e2e, margin, {
                          "version": ort.__version__,
                          "profiled_session_run_ms": spread(np.asarray(run_us) / 1e3),
                          "timing": "session.run of an unprofiled session; per node: ONNX Runtime's own "
                                    "profiler (Node events of each model_run)"})


# -- the experiment --------------------------------------------------------------------------

def profile(experiment: Experiment | str, repeats: int = 10, warmup: int = 2, margin: float = MARGIN,
            builds: list[str] | None = None, onnxruntime: bool = True, quick_peaks: bool = False,
            min_seconds: float = MIN_SECONDS, log: Callable[[str], None] = print) -> dict:
    """Profile every build of the experiment (or the `builds` tags) and ONNX Runtime at the
    experiment's batch size; measure the machine's peaks for the roofline; save it all as
    the measurement `profile`."""
    exp = Experiment.of(experiment)
    data = read_test_data(exp.testdata_dir)
    manifests = _select_builds(exp, builds)
    call = (f"dlrmlib.measuring.profile.profile({exp.name!r}, repeats={repeats}, warmup={warmup}, margin={margin}, "
            f"builds={builds!r}, onnxruntime={onnxruntime}, min_seconds={min_seconds})")
    result = {"experiment": exp.name, "kind": "profile", **provenance(call), "runs": []}
    for manifest in manifests:
        log(f"[profile] {manifest.stem}: at least {repeats} instrumented + as many plain runs, {min_seconds:g} s")
        run = profile_tvm(manifest, data, repeats, warmup, margin, min_seconds=min_seconds)
        result["runs"].append(run)
        log(_check_line(run))
        gc.collect()  # the build's weights copy
    if onnxruntime:
        log(f"[profile] onnxruntime: at least {repeats} profiled + as many plain runs, {min_seconds:g} s")
        run = profile_onnxruntime(exp.normalised_model, data, exp.batch_size, repeats, warmup,
                                  margin=margin, min_seconds=min_seconds)
        result["runs"].append(run)
        log(_check_line(run))
    log("[profile] measuring the machine's peaks (sgemm, memcpy)")
    result["peaks"] = machine_peaks(quick=quick_peaks)
    path = exp.save_measurement(PROFILE_MEASUREMENT, result)
    log(f"[profile] saved {path}")
    return result


def _select_builds(exp: Experiment, tags: list[str] | None) -> list[Path]:
    """The named builds, or every build at the experiment's batch size (one chart compares them)."""
    manifests = [m for m in exp.builds() if read_manifest(m)["batch_size"] == exp.batch_size]
    if tags is not None:
        wanted = [exp.manifest_path(t) for t in tags]
        missing = [p.name for p in wanted if not p.is_file()]
        if missing:
            raise DlrmError(f"experiment {exp.name!r} has no build {', '.join(missing)}; "
                            f"it has {', '.join(p.name for p in manifests) or 'none'}")
        return wanted
    if not manifests:
        raise DlrmError(f"experiment {exp.name!r} has no build to profile; run `dlrm build --experiment {exp.name}`")
    return manifests


def _check_line(run: dict) -> str:
    e2e = run["end_to_end_ms"]["median"]
    verdict = "ok" if run["within_margin"] else f"OUTSIDE the {run['margin']:.0%} margin"
    return (f"[profile] {run['label']}: kernels add up to {run['kernels_sum_ms']:.3f} ms of "
            f"{e2e:.3f} ms end to end ({run['coverage']:.1%}, {verdict})")


# -- tables for the notebook -------------------------------------------------------------------

def check_table(result: dict):
    """One row per runtime/build: kernels' sum against end-to-end, and whether it is in margin."""
    import pandas as pd

    rows = [{"runtime": r["label"], "batch size": r["batch_size"], "threads": r["threads"],
             "end-to-end ms (median)": r["end_to_end_ms"]["median"],
             "p10-p90 ms": f"{r['end_to_end_ms']['p10']:.3f}-{r['end_to_end_ms']['p90']:.3f}",
             "runs": r["end_to_end_ms"]["n"], "kernels ms": r["kernels_sum_ms"],
             "profiled run ms (runtime's clock)": (r.get("profiled_session_run_ms") or {}).get("median"),
             "kernels / end-to-end": r["coverage"], "margin": r["margin"], "within margin": r["within_margin"],
             "kernel calls": sum(k["kind"] == "kernel" for k in r["kernels"])} for r in result["runs"]]
    return pd.DataFrame(rows).set_index("runtime").round(3)


def bucket_table(result: dict):
    """Milliseconds per bucket (rows) for each runtime/build (columns), with the kernels' total
    per run and the end-to-end time (all medians over runs)."""
    import pandas as pd

    table = pd.DataFrame({r["label"]: r["buckets_ms"] for r in result["runs"]}).reindex(list(BUCKETS))
    table.loc["kernels per run"] = [r["kernels_sum_ms"] for r in result["runs"]]
    table.loc["end to end"] = [r["end_to_end_ms"]["median"] for r in result["runs"]]
    return table.round(3)


def kernel_table(result: dict, label: str | None = None, top: int | None = None):
    """Every kernel (one row per call) of one runtime/build, or all: time, bucket, cost, rates."""
    import pandas as pd

    rows = []
    for r in result["runs"]:
        if label and r["label"] != label:
            continue
        for k in r["kernels"]:
            if k["kind"] != "kernel":
                continue
            rows.append({"runtime": r["label"],
                         "kernel": k["name"] if k["op"] == k["name"] else f"{k['name']} ({k['op']})",
                         "bucket": k["bucket"], "ms": k["ms"],
                         "% of end to end": 100 * k["ms"] / r["end_to_end_ms"]["median"],
                         "MFLOP": k["flops"] / 1e6, "MB": k["bytes"] / 1e6,
                         "FLOP/byte": k["intensity"], "GFLOP/s": k["gflops_per_s"], "GB/s": k["gbytes_per_s"],
                         "shapes": " ".join("x".join(map(str, s)) for s, _ in k["inputs"] + k["outputs"])})
    table = pd.DataFrame(rows)
    if top and not table.empty:
        table = table.sort_values("ms", ascending=False).groupby("runtime", sort=False).head(top)
    return table.reset_index(drop=True).round(3)
