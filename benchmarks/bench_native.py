"""Native runner against the Python VM on the same library, and its memory against the weights.

    python benchmarks/bench_native.py --experiment default [--threads N] [--instances 1,2]

Prints samples/s of dlrm_infer and of the Relax VM from Python (same library, same threads,
same inputs, measured in this run), their ratio, and dlrm_infer's peak resident memory
against the size of the weights folder: mapping the weights must not add a second copy.
"""
from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--build", help="build tag (default: the latest build)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--instances", default="1,2", help="comma-separated instance counts for dlrm_infer")
    parser.add_argument("--repeats", type=int, default=30, help="timed Python VM batches")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's thread pool starts

    from dlrmlib.backends import measure
    from dlrmlib.backends.tvm import TvmBackend
    from dlrmlib.building.native import infer
    from dlrmlib.core.experiment import Experiment
    from dlrmlib.core.target import cpu_description
    from dlrmlib.formats.testdata import read_test_data

    exp = Experiment.open(args.experiment)
    manifest = exp.manifest_path(args.build) if args.build else exp.latest_build()
    backend = TvmBackend(manifest)
    data = read_test_data(exp.testdata_dir)
    python_vm = measure(backend, data.dense, data.sparse, warmup=3, repeats=args.repeats)
    weights_bytes = sum(p.stat().st_size for p in backend.manifest_path.parent.joinpath(
        backend.manifest["weights"]["dir"]).glob("p*.bin"))
    del backend  # its weights copy would not count against dlrm_infer, but frees memory for it

    print(f"{cpu_description()}, {os.cpu_count()} cores; experiment {exp.name}, build {manifest.stem}, "
          f"batch {python_vm['batch_size']}, {args.threads} threads")
    print(f"{'runtime':<28}{'samples/s':>12}{'p50 ms':>10}{'vs Python VM':>14}{'peak RSS / weights':>20}")
    print(f"{'python-vm':<28}{python_vm['samples_per_s']:>12.0f}{python_vm['latency_ms_p50']:>10.3f}{1.0:>14.2f}"
          f"{'':>20}")
    for instances in [int(n) for n in args.instances.split(",")]:
        threads = max(1, args.threads // instances)
        result = infer(exp, manifest, threads=threads, instances=instances, log=lambda _: None)["native"]
        rss = result["peak_rss_kb"] * 1024 / weights_bytes
        label = f"dlrm_infer x{instances} ({threads} thr each)"
        print(f"{label:<28}{result['throughput_samples_per_s']:>12.0f}{result['latency_ms']['p50']:>10.3f}"
              f"{result['throughput_samples_per_s'] / python_vm['samples_per_s']:>14.2f}{rss:>20.2f}")
    print(f"weights folder: {weights_bytes / 2**20:.1f} MiB; peak RSS / weights near 1 means one (mapped) copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
