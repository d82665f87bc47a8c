"""Two hand-written kernels alone, each against its former variant, interleaved in one process:
the gather + dot interaction + concatenation kernel (rows of the triangle per pass) and the
int8 builds' per-row u8 quantisation (independent min/max chains per row).

Tables of the small preset's shape (26 x 100,000 rows of 128 floats, random values, 1.3 GB),
ids drawn uniformly (every row a random DRAM/L3 read) or all zero (the rows cache-resident: the
arithmetic alone). Every repetition times each variant for `--calls` calls, in rotating order.

    python benchmarks/bench_kernels.py --batch 128 --repeats 15
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rows", default="1,2", help="row-blocking variants to compare (first = baseline)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--table-rows", type=int, default=100_000)
    parser.add_argument("--widths", default="13,256,479,1024", help="quantised row widths (the small preset's int8 layers)")
    args = parser.parse_args(argv)
    interaction(args)
    quantisation(args)
    return 0


def interaction(args) -> None:

    import tvm

    from dlrmlib.core.machine import cpu_description
    from dlrmlib.core.target import host_target
    from dlrmlib.core.timing import interleaved
    from dlrmlib.schedules.interaction import InteractionShape, interaction_func

    tables_n, dim, batch = 26, 128, args.batch
    shape = InteractionShape(batch, dim, (args.table_rows,) * tables_n, id_rows=tuple(range(tables_n)))
    rng = np.random.default_rng(0)
    tables = [tvm.runtime.tensor(rng.random((args.table_rows, dim), dtype=np.float32)) for _ in range(tables_n)]
    x = tvm.runtime.tensor(rng.random((batch, dim), dtype=np.float32))
    ids = {"random ids": [tvm.runtime.tensor(rng.integers(0, args.table_rows, (tables_n, batch))) for _ in range(16)],
           "ids all 0": [tvm.runtime.tensor(np.zeros((tables_n, batch), dtype=np.int64))]}
    target = tvm.target.Target(host_target())
    variants = [int(r) for r in args.rows.split(",")]
    kernels = {r: tvm.compile(tvm.IRModule({shape.name: interaction_func(shape, rows=r)}), target=target).jit()[shape.name]
               for r in variants}
    outs = {r: tvm.runtime.empty((batch, shape.width), "float32", tvm.cpu()) for r in variants}

    def timer(rows: int, id_list: list):
        def run() -> float:
            start = time.perf_counter()
            for k in range(args.calls):
                kernels[rows](x, id_list[k % len(id_list)], *tables, outs[rows])
            return (time.perf_counter() - start) / args.calls
        return run

    for r in variants:  # every variant computes the same numbers
        timer(r, ids["random ids"])()
    base = outs[variants[0]].numpy()
    worst = max(float(np.abs(outs[r].numpy() - base).max() / np.abs(base).max()) for r in variants)
    measures = {(r, name): timer(r, id_list) for name, id_list in ids.items() for r in variants}
    runs = interleaved({f"{r}|{name}": m for (r, name), m in measures.items()}, args.repeats, pause_s=0.01)

    print(f"{cpu_description()}, {os.cpu_count()} cores, TVM threads {os.environ.get('TVM_NUM_THREADS', 'default')}, "
          f"load average {os.getloadavg()[0]:.1f}; batch {batch}, {args.repeats} interleaved repetitions of "
          f"{args.calls} calls; largest difference between variants {worst:.1e} (relative to the largest output)")
    for name in ids:
        baseline = runs[f"{variants[0]}|{name}"]
        for r in variants:
            times = runs[f"{r}|{name}"]
            ratio = statistics.median(b / t for b, t in zip(baseline, times))
            print(f"  rows={r} {name:<11} median {statistics.median(times) * 1e3:.4f} ms  "
                  f"min {min(times) * 1e3:.4f} ms  baseline/this (median of paired ratios) {ratio:.2f}x")


def quantisation(args) -> None:
    """quantize_rows_func with one min/max chain (former) and with MINMAX_CHAINS, [batch, K] rows."""
    import tvm

    from dlrmlib.core.target import host_target
    from dlrmlib.core.timing import interleaved
    from dlrmlib.schedules.reduced import MINMAX_CHAINS, padded_k, quantize_rows_func

    target, rng, m = tvm.target.Target(host_target()), np.random.default_rng(0), args.batch
    measures, outputs = {}, {}
    for k in [int(w) for w in args.widths.split(",")]:
        kp = padded_k(k, 64)
        x = tvm.runtime.tensor(rng.standard_normal((m, k), dtype=np.float32))
        for chains in (1, MINMAX_CHAINS):
            fn = tvm.compile(tvm.IRModule({"q": quantize_rows_func(m, k, kp, True, chains=chains).with_attr(
                "global_symbol", "q")}), target=target).jit()["q"]
            out = [tvm.runtime.empty((m, kp), "uint8", tvm.cpu()), tvm.runtime.empty((m,), "float32", tvm.cpu()),
                   tvm.runtime.empty((m,), "int32", tvm.cpu())]
            fn(x, *out)
            outputs[(k, chains)] = [o.numpy() for o in out]

            def run(fn=fn, x=x, out=out) -> float:
                start = time.perf_counter()
                for _ in range(args.calls * 5):
                    fn(x, *out)
                return (time.perf_counter() - start) / (args.calls * 5)
            measures[(k, chains)] = run
    runs = interleaved({f"{k}|{c}": f for (k, c), f in measures.items()}, args.repeats, pause_s=0.01)
    print(f"per-row u8 quantisation of [{m}, K], load average {os.getloadavg()[0]:.1f}:")
    for k in [int(w) for w in args.widths.split(",")]:
        same = all((a == b).all() for a, b in zip(outputs[(k, 1)], outputs[(k, MINMAX_CHAINS)]))
        old, new = runs[f"{k}|1"], runs[f"{k}|{MINMAX_CHAINS}"]
        ratio = statistics.median(o / n for o, n in zip(old, new))
        print(f"  K={k:<5} 1 chain {statistics.median(old) * 1e6:7.2f} us  {MINMAX_CHAINS} chains "
              f"{statistics.median(new) * 1e6:7.2f} us  former/new {ratio:.2f}x  outputs identical: {same}")


if __name__ == "__main__":
    sys.exit(main())
