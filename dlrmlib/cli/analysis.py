"""The `dlrm profile`, `dlrm bench` and `dlrm report` subcommands (notebooks 04 and 05)."""
from __future__ import annotations

from dlrmlib.cli.args import add_experiment, integer, ints, names, number, thread_counts
from dlrmlib.measuring.bench import RUNTIMES


def cmd_profile(args) -> None:
    from dlrmlib.measuring.profile import profile  # deferred: the steps import TVM, pandas, matplotlib

    profile(args.experiment, repeats=args.repeats, min_seconds=args.min_seconds, builds=args.builds)


def cmd_bench(args) -> None:
    from dlrmlib.measuring.bench import bench  # deferred, as above

    bench(args.experiment, batch_sizes=args.batch_sizes, threads=args.threads, runtimes=args.runtimes,
          repeats=args.repeats, json_path=args.json)


def cmd_report(args) -> None:
    from dlrmlib.cli.notebooks import run_report  # deferred, as above

    run_report(args.experiment, compare=args.compare)


def add_subcommands(sub) -> None:
    """Register the three subcommands on the `dlrm` parser's subparsers."""
    p = sub.add_parser("profile", help="per-operator profile of every build and ONNX Runtime (04_profile)")
    add_experiment(p)
    p.add_argument("--repeats", type=integer(1, 10**5), default=10,
                   help="profiled runs per build/runtime (default: %(default)s)")
    p.add_argument("--min-seconds", type=number(0, 86400, " (a day)", low_open=False), default=3.0,
                   help="and profile each build/runtime at least this long (default: %(default)s)")
    p.add_argument("--builds", type=names, help="build tags to profile, comma-separated (default: every build)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("bench", help="peers side by side over batch sizes and threads, interleaved (04_profile)")
    add_experiment(p)
    p.add_argument("--batch-sizes", type=ints, help="comma-separated (default: 1,8,64,256,1024 + the builds')")
    p.add_argument("--threads", type=thread_counts, help="comma-separated (default: 1,2,4,... up to the usable cores)")
    p.add_argument("--runtimes", type=names, default=list(RUNTIMES),
                   help=f"comma-separated, from {','.join(RUNTIMES)} (default: all; tvm = every build)")
    p.add_argument("--repeats", type=integer(1, 10**4), default=15,
                   help="interleaved rounds per configuration (default: %(default)s)")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="charts and notebooks/report.html of the experiment (05_report)")
    add_experiment(p)
    p.add_argument("--compare", type=names, help="experiments to compare, comma-separated (default: all with a bench)")
    p.set_defaults(func=cmd_report)
