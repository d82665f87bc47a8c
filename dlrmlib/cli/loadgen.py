"""`dlrm loadgen`: the experiment's build under MLPerf LoadGen (see dlrmlib.measuring.loadgen)."""
from __future__ import annotations

from dlrmlib.cli.args import add_experiment, integer, number, seed
from dlrmlib.core.experiment import Experiment
from dlrmlib.measuring.loadgen import (
    BACKENDS,
    DAY,
    MAX_QUERIES,
    MAX_QUERY_SAMPLES,
    MODES,
    SCENARIOS,
    loadgen_table,
    run_loadgen,
)


def cmd_loadgen(args) -> None:
    exp = Experiment.open(args.experiment)
    manifest = exp.manifest_path(args.build) if args.build else None
    modes = MODES if args.mode == "both" else (args.mode,)
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    for scenario in scenarios:
        run_loadgen(exp, scenario, modes=modes, backend=args.backend, manifest=manifest,
                    query_samples=args.query_samples, seed=args.seed, target_qps=args.target_qps,
                    min_duration_s=args.min_duration, min_query_count=args.min_queries,
                    max_duration_s=args.max_duration, server_latency_ms=args.server_latency_ms)
    print(loadgen_table(exp).to_string(float_format=lambda v: f"{v:.4g}"))


def add_subcommand(sub) -> None:
    """Register `loadgen` on the `dlrm` parser's subcommands."""
    p = sub.add_parser("loadgen", help="MLPerf LoadGen: SingleStream, Offline or Server on the latest build")
    add_experiment(p)
    p.add_argument("--scenario", default="SingleStream", choices=[*SCENARIOS, "all"],
                   help="(default: %(default)s)")
    p.add_argument("--mode", default="both", choices=["performance", "accuracy", "both"],
                   help="accuracy runs every query sample once and scores the answers (default: %(default)s)")
    p.add_argument("--backend", default="tvm", choices=BACKENDS,
                   help="tvm: the build in the Relax VM; onnxruntime: the normalised model, for comparison "
                        "(default: %(default)s)")
    p.add_argument("--build", help="build tag (default: the latest build)")
    p.add_argument("--query-samples", type=integer(1, MAX_QUERY_SAMPLES, " (each holds 100-700 pairs in memory)"),
                   default=64,
                   help="query samples in the library, each 100-700 user-item pairs as in MLPerf "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the pairs drawn from the test data (default: 0)")
    p.add_argument("--target-qps", type=number(0, 1e7, " (checked against the calibrated capacity too)"),
                   help="Server/Offline target in query samples/s (default: calibrated on this machine)")
    research = p.add_argument_group("research settings (shorter than MLPerf's rules; marks the run `research`)")
    research.add_argument("--min-duration", type=number(0, DAY, " (a day)"), default=10.0,
                          help="seconds (default: %(default)s); MLPerf's rule is 600: pass 600 to follow it")
    research.add_argument("--min-queries", type=integer(1, MAX_QUERIES, " (LoadGen keeps every query in memory)"),
                          default=16,
                          help="minimum query count, for Offline samples (default: %(default)s; MLPerf: 100, "
                               "Offline 24576)")
    research.add_argument("--max-duration", type=number(0, DAY, " (a day)"), help="seconds; stop a run after this long")
    research.add_argument("--server-latency-ms", type=number(0, 1e6),
                          help="Server latency bound (MLPerf: 60 ms at p99)")
    p.set_defaults(func=cmd_loadgen)
