"""The int8 GEMMs' tuned tile knobs against today's rules: tune, build both, time them interleaved.

For each batch size: the experiment `perf-<preset>-b<B>` (bench_perf's, prepared if missing) and
a kernel log in its tune/custom/, seeded with the log shipped for this machine, if any (its fp32
and interaction records), then `dlrm tune --schedule custom --precision int8` (timed: what a user
pays). Two int8 builds: one from that log (tuned tiles), one from the same log without its int8
records (the default rules, the same interaction knobs). Then rounds in which both run the same
batches back to back, alternately first (medians, their ratio), and the CPU and load average.
`--save-logs DIR` writes each log's int8 records, beside the shipped ones, to
DIR/<machine>/<preset>/b<B>/kernels.jsonl.

    python benchmarks/bench_int8_knobs.py --preset small --batches 128,2048 --repeats 7
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO_LOGS = Path(__file__).resolve().parent.parent / "logs"


def log_lines(folder: Path) -> list[str]:
    path = folder / "kernels.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def is_int8_line(line: str) -> bool:
    from dlrmlib.schedules.int8_tiles import is_int8_kernel

    return is_int8_kernel(json.loads(line).get("kernel", ""))


def experiment_for(preset: str, batch: int, source, log):
    """bench_perf's experiment for this batch size, prepared if missing (the same samples)."""
    from dlrmlib.core.errors import DlrmError
    from dlrmlib.core.experiment import Experiment
    from dlrmlib.prepare import prepare

    name = f"perf-{preset}-b{batch}"
    try:
        return Experiment.open(name)
    except DlrmError:
        prepare(name, preset=None if source else preset, onnx_model=source, batch_size=batch,
                samples=max(1024, 2 * batch), log=log)
        return Experiment.open(name)


def tune_int8(exp, shipped: Path | None, log) -> tuple[Path, float, int]:
    """The experiment's kernel log (seeded with the shipped one) with the int8 records added:
    (folder, seconds the int8 run took, measurements it made)."""
    from dlrmlib.schedules.knobs import kernel_log_dir
    from dlrmlib.tuning.kernels import tune_kernels

    folder = kernel_log_dir(exp)
    if shipped is not None and not log_lines(folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "kernels.jsonl").write_text("\n".join(log_lines(shipped)) + "\n")
    before = len(log_lines(folder))
    start = time.perf_counter()
    tune_kernels(exp, log=log, progress=False, precision="int8")
    return folder, time.perf_counter() - start, len(log_lines(folder)) - before


def without_int8(folder: Path) -> Path:
    """The same log minus its int8 records: a build from it uses the default rules."""
    rules = folder.parent / "custom_without_int8"
    rules.mkdir(parents=True, exist_ok=True)
    (rules / "kernels.jsonl").write_text("".join(f"{line}\n" for line in log_lines(folder) if not is_int8_line(line)))
    return rules


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batches", default="128,2048")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds; medians are reported")
    p.add_argument("--save-logs", type=Path, metavar="DIR", help="write the logs with their int8 records here")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))  # before TVM is imported

    from bench_perf import input_batches, machine_caption, seconds_per_batch, shipped_kernel_log

    from dlrmlib.backends.tvm import TvmBackend
    from dlrmlib.building.build import build
    from dlrmlib.building.recipes import Custom
    from dlrmlib.core.target import machine_kind
    from dlrmlib.core.timing import interleaved
    from dlrmlib.formats.weights import read_manifest

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    print(f"machine at the start: {machine_caption()}")
    source, results = None, []
    for batch in [int(b) for b in args.batches.split(",")]:
        exp = experiment_for(args.preset, batch, source, log)
        source = source or exp.source_model
        shipped = shipped_kernel_log(REPO_LOGS, args.preset, batch)
        folder, seconds, measurements = tune_int8(exp, shipped, log)
        print(f"batch {batch}: `tune --schedule custom --precision int8` {seconds:.0f} s, {measurements} measurements "
              f"(log seeded from {shipped or 'nothing'})")
        tuned = build(exp, Custom(folder, "custom_int8_tuned", "int8"), log=log)
        rules = build(exp, Custom(without_int8(folder), "custom_int8_rules", "int8"), log=log)
        for name, result in (("tuned", tuned), ("rules", rules)):
            tiles = read_manifest(result.manifest)["precision"]["quantization"]["tiles"]
            print(f"  {name}: " + ", ".join(f"{layer} {t['mr']}x{t['nb']}{'' if t['parallel'] else ' 1 thread'}"
                                            for layer, t in tiles.items()))
        backends = {"tuned": TvmBackend(tuned.manifest), "rules": TvmBackend(rules.manifest)}
        batches = input_batches(exp, batch)
        outputs = [b.predict(batches[0]) for b in backends.values()]
        assert (outputs[0] == outputs[1]).all(), "the tiles changed the outputs"
        runs = interleaved({n: (lambda b=b: seconds_per_batch(b, batches)) for n, b in backends.items()}, args.repeats)
        median = {n: statistics.median(v) for n, v in runs.items()}
        load = os.getloadavg()
        results.append((batch, median, load))
        print(f"batch {batch}: tuned {batch / median['tuned']:,.0f} samples/s, rules {batch / median['rules']:,.0f}; "
              f"tuned / rules {median['rules'] / median['tuned']:.3f}x (medians of {args.repeats} interleaved rounds; "
              f"spread tuned {min(runs['tuned']) * 1e3:.2f}-{max(runs['tuned']) * 1e3:.2f} ms, rules "
              f"{min(runs['rules']) * 1e3:.2f}-{max(runs['rules']) * 1e3:.2f} ms); load average now "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        if args.save_logs:
            dest = args.save_logs / machine_kind() / args.preset / f"b{batch}"
            dest.mkdir(parents=True, exist_ok=True)
            kept = log_lines(shipped) if shipped else []
            added = [line for line in log_lines(folder) if is_int8_line(line)]
            (dest / "kernels.jsonl").write_text("".join(f"{line}\n" for line in kept + added))
            print(f"  saved {dest / 'kernels.jsonl'}: {len(kept)} shipped records + {len(added)} int8 records")
    print(f"machine at the end: {machine_caption()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
