"""`dlrm tune --schedule custom`: measure every knob setting of every hand-written kernel the
model uses, on this machine, into the experiment's kernel log (dlrmlib.schedules.knobs). With
`precision="int8"` (`--precision int8`), the kernels an int8 build makes: the int8 GEMMs of the
instruction set this host builds with (dlrmlib.schedules.int8_tiles), and the shared ones.

Each kernel is compiled alone for each candidate and timed on data of its real shapes: the
dense layers on random activations and weights, the interaction on the experiment's own
embedding tables (memory-mapped, never copied) and test-data ids, rotating over several id
batches so that the rows come from memory as they do in a run. Records are appended one by one
under the experiment's tuning lock; a rerun measures only what the log does not hold yet.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dlrmlib.backends import batch_inputs
from dlrmlib.backends.tvm import weight_tensor
from dlrmlib.building.recipes import Custom
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.machine import utc_now
from dlrmlib.core.target import cpu_description, host_target
from dlrmlib.formats.model import INDICES_INPUT
from dlrmlib.formats.normalise import load_graph
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.weights import extract_weights, map_weights
from dlrmlib.frontend.relax import NUM_INPUTS, import_relax
from dlrmlib.schedules import custom_module
from dlrmlib.schedules.amx import MATTR
from dlrmlib.schedules.avx2_int8 import DEFAULT_OPERANDS
from dlrmlib.schedules.dense import PANEL, DenseConfig, DenseShape, dense_func, pack_func, pack_name, row_block
from dlrmlib.schedules.int8_tiles import Int8Config, int8_candidates, int8_gemm_func, int8_kernel_name, is_default_int8
from dlrmlib.schedules.interaction import PREFETCH_LOCALITY, PREFETCH_SAMPLES, interaction_func
from dlrmlib.schedules.knobs import (
    LOG_FILE,
    append_record,
    config_key,
    current,
    dense_candidates,
    interaction_candidates,
    is_measured_time,
    kernel_log_dir,
    knobs_version,
    read_log,
)
from dlrmlib.schedules.rewrite import vector_lanes
from dlrmlib.tuning.lock import tuning_lock

MIN_SECONDS = 0.5  # timed work per candidate and pass
PASSES = 2  # every candidate is measured once per pass, passes apart: a burst of load hits one, not both
REPEATS = 5  # rounds; the fastest counts (another process's burst only ever slows a round down)


@dataclass(frozen=True)
class Kernel:
    """One hand-written kernel of the model: its name (as in the library), kind and shape; an
    interaction kernel also knows which weights are its tables, an int8 one its instruction set
    and operands."""

    name: str
    kind: str  # "dense", "narrow", "interaction" or "int8"
    shape: object
    table_params: tuple[int, ...] = ()
    isa: str | None = None
    operands: str | None = None


PRECISIONS = ("fp32", "int8")
# The kernels whose knobs only this tuner measures: a MetaSchedule run times the Dense layers' knobs
# itself, as the first trials of the hand-written design space (dlrmlib.tuning.written.seed_candidates)
MS_UNTUNED = ("interaction", "int8")


def int8_target(target: dict, operands: str = DEFAULT_OPERANDS) -> tuple[dict, str]:
    """(target, instruction set) of this host's int8 build: as `dlrm build --precision int8`
    chooses it (a clear error where the CPU has no int8 kernels)."""
    isa = Custom(precision="int8", operands=operands).precision_facts(target)["isa"]
    return ({**target, "mattr": MATTR} if isa == "amx_int8" else target), isa


def model_kernels(experiment: Experiment, precision: str = "fp32", operands: str = DEFAULT_OPERANDS) -> list[Kernel]:
    """The kernels `dlrm build --schedule custom [--precision int8]` makes for this experiment's
    model, in order."""
    if precision not in PRECISIONS:
        raise DlrmError(f"the knob tuner measures {' or '.join(PRECISIONS)} kernels, not {precision!r}")
    mod = import_relax(load_graph(experiment.normalised_model))
    params = list(mod["main"].params)
    seen: dict = {}
    target, isa = int8_target(host_target(), operands) if precision == "int8" else (host_target(), None)
    custom_module(mod, target, NUM_INPUTS, seen=seen, precision=precision, amx=isa == "amx_int8",
                  avx2=operands if isa == "avx2" else None)
    kernels = []
    for name, (kind, shape, tables) in seen.items():
        if kind == "int8":  # `tables` is the layer's instruction set here
            ops = operands if tables == "avx2" else None
            kernels.append(Kernel(int8_kernel_name(shape, tables, ops), kind, shape, (), tables, ops))
            continue
        index = tuple(next(i - NUM_INPUTS for i, p in enumerate(params) if p.same_as(t)) for t in tables or ())
        kernels.append(Kernel(name, kind, shape, index))
    return kernels


def candidates(kernel: Kernel, vector_lanes: int) -> list[dict]:

    if kernel.kind == "dense":
        return dense_candidates(kernel.shape, vector_lanes)
    if kernel.kind == "interaction":
        return interaction_candidates(kernel.shape.id_rows is not None)
    if kernel.kind == "int8":
        return int8_candidates(kernel.shape, kernel.isa, kernel.operands)
    return []  # the narrow last layer has no knobs


def knob_precisions(precision: str = "fp32", measure: bool = True) -> tuple[str, ...]:
    """The knob precisions a tuning run measures (`tune(kernel_precisions=...)`) for `dlrm tune
    --precision` / 02_tune's `kernel_precision`: fp32's (the interaction), and int8's tiles too
    for int8; none when the knob step is turned off."""
    if precision not in PRECISIONS:
        raise DlrmError(f"the knob step measures {' or '.join(PRECISIONS)} kernels, not {precision!r}")
    return () if not measure else ("fp32", "int8") if precision == "int8" else ("fp32",)


# -- measuring one candidate -------------------------------------------------------------------

def _compile(func, name: str, target):
    import tvm

    return tvm.compile(tvm.IRModule({name: func}), target=target)[name]


def _seconds_per_call(call: Callable[[int], None], min_seconds: float = MIN_SECONDS) -> float:
    """The fastest of REPEATS rounds of at least min_seconds / REPEATS each, per call; call(k)
    is the k-th call."""
    call(0)
    rounds, k = [], 1
    for _ in range(REPEATS):
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < min_seconds / REPEATS or n < 2:
            call(k)
            k, n = k + 1, n + 1
        rounds.append((time.perf_counter() - start) / n)
    return min(rounds)


def _dense_timer(kernel: Kernel, config: dict, target, lanes: int):
    import tvm


    shape, cfg = kernel.shape, DenseConfig(**config)
    rng = np.random.default_rng(0)
    weights = tvm.runtime.tensor(rng.standard_normal((shape.n, shape.k), dtype=np.float32))
    packed = tvm.runtime.empty((shape.n // cfg.bn, shape.k, cfg.bn), "float32", tvm.cpu())
    _compile(pack_func(shape.n, shape.k, cfg.bn), pack_name(shape.n, shape.k, cfg.bn), target)(weights, packed)
    fn = _compile(dense_func(shape, lanes, cfg), shape.name, target)
    args = [tvm.runtime.tensor(rng.standard_normal((shape.m, shape.k), dtype=np.float32)), packed,
            tvm.runtime.tensor(rng.standard_normal(shape.n, dtype=np.float32)),
            tvm.runtime.empty((shape.m, shape.n), "float32", tvm.cpu())]
    return lambda k: fn(*args)


def _random_args(func, rng) -> list:
    """Tensors of the kernel's own parameter shapes and types: small integers (operands in range
    of the int8 kernels' quantised values), normal floats."""
    import tvm

    args = []
    for p in func.params:
        shape, dtype = tuple(int(d) for d in p.ty.shape), str(p.ty.dtype)
        if dtype.startswith("uint"):
            values = rng.integers(0, 256, shape)
        elif dtype.startswith("int"):
            values = rng.integers(-127, 128, shape)
        else:
            values = rng.standard_normal(shape)
        args.append(tvm.runtime.tensor(values.astype(dtype)))
    return args


def _int8_timer(kernel: Kernel, config: dict, target):
    """The int8 GEMM alone on random operands of its shapes (its weights as the build packs them:
    the knobs change only the loop blocking, not the layout)."""
    func = int8_gemm_func(kernel.shape, kernel.isa, kernel.operands, Int8Config(**config)).with_attr(
        "global_symbol", kernel.name)
    fn = _compile(func, kernel.name, target)
    args = _random_args(func, np.random.default_rng(0))
    return lambda k: fn(*args)


def compile_interactions(pairs: list, target) -> dict:
    """(kernel name, config key) -> the compiled interaction of those knobs, for every
    (kernel, config) in `pairs` that is an interaction: one module, compiled once (the candidates
    differ in a few prefetch instructions; one at a time, compiling took most of the step)."""
    import tvm

    funcs = {(k.name, config_key(c)): interaction_func(k.shape, c["prefetch"], c["locality"])
             for k, c in pairs if k.kind == "interaction"}
    if not funcs:
        return {}
    names = {key: f"{key[0]}_candidate{i}" for i, key in enumerate(funcs)}
    lib = tvm.compile(tvm.IRModule({names[key]: f.with_attr("global_symbol", names[key])
                                    for key, f in funcs.items()}), target=target)
    return {key: lib[name] for key, name in names.items()}


def _interaction_timer(kernel: Kernel, config: dict, tables: list, id_batches: list, compiled: dict):
    import tvm


    shape = kernel.shape
    fn = compiled[(kernel.name, config_key(config))]
    rng = np.random.default_rng(0)
    x = tvm.runtime.tensor(rng.standard_normal((shape.batch, shape.dim), dtype=np.float32))
    out = tvm.runtime.empty((shape.batch, shape.width), "float32", tvm.cpu())
    return lambda k: fn(x, id_batches[k % len(id_batches)], *tables, out)


class _InteractionData:
    """The experiment's tables (mapped once) and a few batches of its test-data ids."""

    def __init__(self, experiment: Experiment, batch: int):
        self.experiment, self.batch = experiment, batch
        self._weights = None
        self._ids = None

    def tables(self, kernel: Kernel) -> list:
        import tvm


        if self._weights is None:
            folder, params, _ = extract_weights(self.experiment)
            self._weights = map_weights(folder, params)
        return [weight_tensor(self._weights[i], tvm.cpu()) for i in kernel.table_params]

    def ids(self, count: int = 8) -> list:
        import tvm


        if self._ids is None:
            data = read_test_data(self.experiment.testdata_dir)
            self._ids = [tvm.runtime.tensor(inputs[INDICES_INPUT])
                         for inputs in batch_inputs(data.dense, data.sparse, self.batch, count)]
        return self._ids


def measure(kernel: Kernel, config: dict, target, lanes: int, data: _InteractionData,
            compiled: dict, min_seconds: float = MIN_SECONDS) -> float:
    """Seconds per call of one kernel with one knob setting (`compiled`: the interactions,
    compiled beforehand by `compile_interactions`)."""
    if kernel.kind == "dense":
        return _seconds_per_call(_dense_timer(kernel, config, target, lanes), min_seconds)
    if kernel.kind == "interaction":
        timer = _interaction_timer(kernel, config, data.tables(kernel), data.ids(), compiled)
        return _seconds_per_call(timer, min_seconds)
    if kernel.kind == "int8":
        return _seconds_per_call(_int8_timer(kernel, config, target), min_seconds)
    raise DlrmError(f"kernel {kernel.name} ({kernel.kind}) has no knobs to measure")


# -- the tuning run ----------------------------------------------------------------------------

def tune_kernels(experiment: Experiment | str, log_dir: Path | None = None, log=print,
                 progress: bool = True, min_seconds: float = MIN_SECONDS, passes: int = PASSES,
                 precision: str = "fp32", operands: str = DEFAULT_OPERANDS) -> Path:
    """`dlrm tune --schedule custom`: `measure_knobs` of every kernel under the experiment's
    tuning lock, into `log_dir` (by default the experiment's tune/custom/); returns the log folder."""
    exp = Experiment.of(experiment)
    folder = Path(log_dir) if log_dir else kernel_log_dir(exp)
    with tuning_lock(exp):
        measure_knobs(exp, folder, log, progress, min_seconds, passes, precision, operands)
    return folder


def measure_knobs(exp: Experiment, folder: Path, log=print, progress: bool = True, min_seconds: float = MIN_SECONDS,
                  passes: int = PASSES, precision: str = "fp32", operands: str = DEFAULT_OPERANDS,
                  kinds: tuple[str, ...] | None = None) -> int:
    """Measure every candidate of the kernels a `precision` build makes (fp32, or int8 for this
    host's instruction set and these AVX2 operands) `passes` times, minus what `folder`'s
    kernels.jsonl already holds, appending a record per measurement; `kinds`: only kernels of
    these kinds (`MS_UNTUNED`: those MetaSchedule's runner cannot time as they run). The caller
    holds the tuning lock. Returns the number of measurements made."""
    from collections import Counter

    import tvm
    from tqdm.auto import tqdm

    target, isa = int8_target(host_target(), operands) if precision == "int8" else (host_target(), None)
    tvm_target = tvm.target.Target(target)
    lanes = vector_lanes(tvm_target)
    done = Counter((r["kernel"], config_key(r["config"])) for r in current(read_log(folder)))
    kernels = [k for k in model_kernels(exp, precision, operands) if kinds is None or k.kind in kinds]
    every = [(k, c) for k in kernels for c in candidates(k, lanes)]
    todo = [(k, c) for p in range(passes) for k, c in every if done[(k.name, config_key(c))] <= p]
    log(f"[tune-kernels] {precision}{f' ({isa})' if isa else ''}: {len(kernels)} kernels, {len(every)} "
        f"candidates x {passes} passes: {len(todo)} measurements to make ({sum(done.values())} already in {folder})")
    data = _InteractionData(exp, exp.batch_size)
    compiled = compile_interactions(list({(k.name, config_key(c)): (k, c) for k, c in todo}.values()), tvm_target)
    for kernel, config in tqdm(todo, desc="kernel candidates", unit="measurement", disable=not progress):
        try:
            seconds, error = measure(kernel, config, tvm_target, lanes, data, compiled, min_seconds), None
        except Exception as e:  # a candidate that does not compile is recorded, not fatal
            seconds, error = None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        int8 = {"isa": kernel.isa, "operands": kernel.operands} if kernel.kind == "int8" else {}
        append_record(folder, {
            "kernel": kernel.name, "kind": kernel.kind, "precision": "int8" if int8 else "fp32", **int8,
            "shape": asdict(kernel.shape), "config": config, "knobs_version": knobs_version(kernel.name),
            "seconds": seconds, "error": error, "mcpu": target["mcpu"], "vector_lanes": lanes,
            "cpu": cpu_description(), "time": utc_now()})
    return len(todo)


def save_kernel_log(experiment: Experiment, dest: Path) -> Path:
    """Copy the experiment's kernel log to `dest` (e.g. logs/<machine>/<preset>/b<batch>/)."""

    source = kernel_log_dir(experiment) / LOG_FILE
    if not source.is_file():
        raise DlrmError(f"{experiment.name} has no kernel log to save; run `dlrm tune --schedule custom` first")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest / LOG_FILE)
    return dest / LOG_FILE


def _is_default(record: dict) -> bool:
    """Whether a record measured the knobs a build uses without a log."""

    config = record["config"]
    if record.get("kind") == "int8":
        return is_default_int8(DenseShape(**record["shape"]), record["isa"], record.get("operands"), config)
    if record.get("kind") == "interaction":
        return config.get("prefetch") == PREFETCH_SAMPLES and config.get("locality") == PREFETCH_LOCALITY
    shape = DenseShape(**record["shape"])
    lanes = record.get("vector_lanes", 16)  # the shipped logs were measured with AVX-512
    return (config.get("bn") == PANEL and config.get("mr") == row_block(shape.m, lanes)
            and config.get("parallel") in (None, shape.parallel))


def knob_table(log_dir: Path):
    """Per kernel: measurements made, the fastest knobs and their time, the default knobs' time
    (the fastest of each candidate's measurements counts)."""
    import pandas as pd


    rows: dict[str, dict] = {}
    for r in current(read_log(log_dir)):
        if not is_measured_time(r.get("seconds")):  # failed, or a damaged line
            continue
        row = rows.setdefault(r["kernel"], {"kernel": r["kernel"], "measurements": 0, "best_us": float("inf"),
                                            "default_us": float("inf"), "best knobs": None})
        row["measurements"] += 1
        if r["seconds"] * 1e6 < row["best_us"]:
            row["best_us"], row["best knobs"] = r["seconds"] * 1e6, r["config"]
        if _is_default(r):
            row["default_us"] = min(row["default_us"], r["seconds"] * 1e6)
    table = pd.DataFrame(list(rows.values()))
    if not table.empty:
        table["default / best"] = table["default_us"] / table["best_us"]
    return table
