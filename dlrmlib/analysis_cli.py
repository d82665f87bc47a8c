"""The `dlrm profile`, `dlrm bench` and `dlrm report` subcommands (notebooks 04 and 05)."""
from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def cmd_profile(args) -> None:
    from .profile import profile

    profile(args.experiment, repeats=args.repeats, min_seconds=args.min_seconds, builds=args.builds)


def cmd_bench(args) -> None:
    from .bench import bench

    bench(args.experiment, batch_sizes=args.batch_sizes, threads=args.threads, runtimes=args.runtimes,
          repeats=args.repeats, json_path=args.json)


def cmd_report(args) -> None:
    from .report import run_report

    run_report(args.experiment, compare=args.compare)


def add_subcommands(sub, add_experiment) -> None:
    """Register the three subcommands on the `dlrm` parser's subparsers."""
    from .bench import RUNTIMES

    p = sub.add_parser("profile", help="per-operator profile of every build and ONNX Runtime (04_profile)")
    add_experiment(p)
    p.add_argument("--repeats", type=int, default=10, help="profiled runs per build/runtime (default: %(default)s)")
    p.add_argument("--min-seconds", type=float, default=3.0,
                   help="and profile each build/runtime at least this long (default: %(default)s)")
    p.add_argument("--builds", type=_names, help="build tags to profile, comma-separated (default: every build)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("bench", help="peers side by side over batch sizes and threads, interleaved (04_profile)")
    add_experiment(p)
    p.add_argument("--batch-sizes", type=_ints, help="comma-separated (default: 1,8,64,256,1024 + the builds')")
    p.add_argument("--threads", type=_ints, help="comma-separated (default: 1,2,4,... up to the usable cores)")
    p.add_argument("--runtimes", type=_names, default=list(RUNTIMES),
                   help=f"comma-separated, from {','.join(RUNTIMES)} (default: all; tvm = every build)")
    p.add_argument("--repeats", type=int, default=15,
                   help="interleaved rounds per configuration (default: %(default)s)")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="charts and notebooks/report.html of the experiment (05_report)")
    add_experiment(p)
    p.add_argument("--compare", type=_names, help="experiments to compare, comma-separated (default: all with a bench)")
    p.set_defaults(func=cmd_report)
