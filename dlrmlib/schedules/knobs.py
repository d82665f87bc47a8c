"""The hand-written kernels' knobs and their tuning log.

Each kernel has a few knobs (dense: panel width, rows per register tile, one thread or all;
interaction: how many samples ahead to prefetch embedding rows, and into which cache level). `dlrm tune --schedule custom`
measures every candidate of every kernel the model uses on this machine and appends one JSON
line per measurement to `kernels.jsonl`; a build picks, per kernel, the fastest candidate in
the log. The log is the record: a killed run resumes by skipping what it already holds, and
logs shipped under `logs/<machine>/<preset>/b<batch>/` rebuild the same kernels elsewhere.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import append_jsonl, read_jsonl
from dlrmlib.core.target import host_target
from dlrmlib.formats.tuning_log import KNOBS_FILE, RECORDS_FILE, split_records, task_names, workload_lines
from dlrmlib.schedules.dense import PANEL, SERIAL_MACS, DenseConfig, DenseShape, row_block, tallest_rows
from dlrmlib.schedules.int8_tiles import KNOBS as INT8_KNOBS
from dlrmlib.schedules.int8_tiles import is_int8_kernel
from dlrmlib.schedules.space import dense_shape, knobs_of_trace

LOG_FILE = KNOBS_FILE
KNOBS_VERSION = 2  # bumped when a knob's meaning or a kernel's code path changes: older records no longer count
INT8_KNOBS_VERSION = 1  # the int8 GEMMs' (dlrmlib.schedules.int8_tiles), counted apart: a change to one never
# retires the other's records, and logs from before the int8 knobs read as they did
PANELS = (PANEL, 2 * PANEL)
NARROW_PANEL = 16  # two AVX2 vectors: with 6 rows, 12 accumulators (AVX2 has 16 registers)
MAX_ACCUMULATORS = {16: 28, 8: 14}  # vector registers left for accumulators (AVX-512, AVX2)
PREFETCH_DISTANCES = (0, 2, 4, 8)
PREFETCH_LOCALITIES = (1, 2, 3)
BOTH_THREADINGS_BELOW = 16 * SERIAL_MACS  # layers smaller than this also try one thread
INTERACTION_KNOBS = {"prefetch", "locality"}


def dense_candidates(shape: DenseShape, vector_lanes: int) -> list[dict]:
    """Panel widths that divide N (on AVX2 also 16: two vectors), row blocks that keep the
    accumulators in registers: those that divide M, and the tallest whose accumulators, one
    panel and a broadcast fit the registers even where it does not divide M (the last
    tile is cut short; on Zen 3, 6 x 16 ran 1.12-1.2x 2 x 32, the largest dividing tile, for a
    128 x 1024 x 1024 layer, measured while other jobs ran); one thread as well as all of
    them for small layers."""
    limit = MAX_ACCUMULATORS.get(vector_lanes, 14)
    found = []
    for bn in (NARROW_PANEL, *PANELS) if vector_lanes == 8 else PANELS:
        if not shape.packable(bn):
            continue
        vectors = bn // vector_lanes
        rows = {mr for mr in range(1, min(shape.m, 16) + 1) if shape.m % mr == 0 and mr * vectors <= limit}
        rows = sorted(r for r in rows if r * vectors >= min(8, shape.m * vectors)) or [row_block(shape.m, vector_lanes)]
        tallest = tallest_rows(shape.m, bn, vector_lanes)
        rows += [tallest] if tallest not in rows and tallest * vectors >= min(8, shape.m * vectors) else []
        threads = (None,) if shape.m * shape.k * shape.n >= BOTH_THREADINGS_BELOW else (True, False)
        found += [asdict(DenseConfig(bn, mr, parallel)) for mr in rows for parallel in threads]
    return found


def interaction_candidates(stacked_ids: bool) -> list[dict]:
    """Prefetch distance (samples ahead) and cache level; without stacked ids, no prefetch."""
    if not stacked_ids:
        return [{"prefetch": 0, "locality": 3}]
    return [{"prefetch": 0, "locality": 3}] + [{"prefetch": d, "locality": l} for d in PREFETCH_DISTANCES if d
                                               for l in PREFETCH_LOCALITIES]


def config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def read_log(folder: Path) -> list[dict]:
    """Every complete record of a folder's kernels.jsonl (a torn last line, from a kill, is skipped)."""

    return [r for r in read_jsonl(Path(folder) / LOG_FILE)
            if isinstance(r, dict) and {"kernel", "config", "seconds"} <= r.keys()]


def append_record(folder: Path, record: dict) -> None:
    """One measurement, appended as one line and flushed to disk before the next starts."""

    append_jsonl(Path(folder) / LOG_FILE, [record], durable=True)


def knobs_version(kernel: str) -> int:
    """The knobs version a record of this kernel is written with (int8 GEMMs have their own)."""
    return INT8_KNOBS_VERSION if is_int8_kernel(kernel) else KNOBS_VERSION


def current(records: list[dict]) -> list[dict]:
    """The records measured with this version of the kernels' knobs."""
    return [r for r in records if r.get("knobs_version") == knobs_version(str(r.get("kernel", "")))]


def check_knobs(record: dict, where: str = "kernel log line") -> None:
    """A clear error for a line whose knobs this version cannot build (a hand-edited or foreign
    log), instead of a TypeError deep inside a build."""
    config, name = record["config"], record["kernel"]
    interaction, int8 = name.startswith("interaction"), is_int8_kernel(name)
    known = INTERACTION_KNOBS if interaction else set(INT8_KNOBS) if int8 else {f.name for f in fields(DenseConfig)}
    ok = isinstance(config, dict) and set(config) <= known and all(
        v is None or (isinstance(v, int) and v >= 0) for v in config.values())
    if ok and interaction:
        ok = config.get("locality", 0) <= 3
    elif ok and int8:
        ok = config.get("parallel") in (None, True, False)  # mr / nb: checked against the layer by the kernel
    elif ok:
        ok = config.get("bn", PANEL) % 8 == 0 and config.get("bn", PANEL) > 0
    if not ok:
        raise DlrmError(f"{where} for {name} has knobs {config!r} this version cannot build "
                        f"(known: {sorted(known)}, non-negative integers; panel widths multiples of 8; "
                        f"parallel true, false or null)")


def is_measured_time(seconds) -> bool:
    """A time a measurement can have taken: a positive, finite number of seconds."""
    return isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 < seconds < float("inf")


def best_configs(records: list[dict]) -> dict[str, dict]:
    """Per kernel name, the knobs of its fastest measurement (of this knobs version)."""
    best: dict[str, dict] = {}
    for r in current(records):
        if not is_measured_time(r.get("seconds")):  # failed, or a damaged time: never the fastest
            continue
        check_knobs(r)
        if r["kernel"] not in best or r["seconds"] < best[r["kernel"]]["seconds"]:
            best[r["kernel"]] = r
    return {name: r["config"] for name, r in sorted(best.items())}

CUSTOM_LOG = "custom"  # tune/custom/: the kernel log, beside MetaSchedule's database


def kernel_log_dir(experiment: Experiment) -> Path:
    return experiment.tune_dir / CUSTOM_LOG


def default_kernel_log(experiment: Experiment) -> Path | None:
    """The experiment's own kernel log, when `dlrm tune --schedule custom` has written one."""

    folder = kernel_log_dir(experiment)
    return folder if (folder / LOG_FILE).is_file() else None


def kernel_configs(log_dir: Path, log=print, required: bool = True) -> dict[str, dict]:
    """The fastest knobs per kernel in a kernel log folder: a clear error when it holds none,
    or, not `required` (a tuning log whose run measured none), {}."""

    everything = read_log(log_dir)
    if not required and not current(everything):
        return {}
    if not everything:
        raise DlrmError(f"{log_dir} holds no kernel log ({LOG_FILE}); run `dlrm tune --schedule custom` first, "
                        f"or point --log at a folder that has one")
    records = current(everything)
    if not records:
        raise DlrmError(f"the kernel log in {log_dir} was measured with older kernels (knobs version "
                        f"{sorted({str(r.get('knobs_version')) for r in everything})}, now {KNOBS_VERSION}); "
                        f"run `dlrm tune --schedule custom` again: it keeps the old lines and adds new ones")
    mcpus = {r.get("mcpu") for r in records}
    here = host_target()["mcpu"]
    if here not in mcpus:
        log(f"[build] note: the kernel log was measured on {', '.join(sorted(map(str, mcpus)))}, this CPU is "
            f"{here}: its choices are valid here but may not be the fastest")
    return best_configs(records)


def tuning_log_knobs(folder: Path) -> dict[str, dict]:
    """Per Dense layer (kernel name), the knobs of its fastest record of the hand-written
    design space in a MetaSchedule tuning log (`tuning_log_knob_records`)."""
    return {name: knobs for name, (_, knobs) in tuning_log_knob_records(folder).items()}


def tuning_log_knob_records(folder: Path) -> dict[str, tuple[float, dict]]:
    """Per Dense layer (kernel name), the knobs of the fastest record in a MetaSchedule tuning
    log whose schedule is the hand-written design space with knobs the custom build has: with
    weights prepacked, MetaSchedule's RewriteLayout lays the weights out in the same panels
    [N/bn, K, bn] as the custom build, so such a record is the custom build's kernel timed by the
    tuner. Every knob candidate is a Dense kernel's first trial when the experiment has no kernel
    log (dlrmlib.tuning.written.seed_candidates): the tuning log then holds the knob tuner's
    measurements, and this is their view: kernel name -> (seconds, knobs)."""
    from tvm.s_tir.meta_schedule.database import Workload

    folder = Path(folder)
    if not (folder / RECORDS_FILE).is_file():
        return {}
    workloads = workload_lines(folder)
    records, _ = split_records(folder, len(workloads))
    names = task_names(folder, workloads)
    layers: dict[int, DenseShape | None] = {}
    best: dict[str, tuple[float, dict]] = {}
    for line, (index, latency) in records:
        try:
            knobs = knobs_of_trace(json.loads(line)[1][0]) if latency is not None else None
        except (TypeError, ValueError, IndexError, KeyError):  # a trace not as MetaSchedule writes them
            knobs = None
        if knobs is None:
            continue
        if index not in layers:
            try:
                shape = dense_shape(Workload.from_json(json.loads(workloads[index])).mod)
            except Exception:  # a workload TVM cannot read back (damaged): its records say no knobs
                shape = None
            named = names.get(index)  # ReLU or not: the task's name says (fused_matmul_add_relu)
            layers[index] = DenseShape(*shape, relu="relu" in named) if shape and named else None
        layer = layers[index]
        if layer is not None and (layer.name not in best or latency < best[layer.name][0]):
            best[layer.name] = (latency, knobs)
    return dict(sorted(best.items()))
