"""`dlrm tune`, and `dlrm build --log/--prepack` (notebook 02_tune)."""
from __future__ import annotations

import argparse
import functools


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def cmd_tune(args) -> None:
    if args.schedule == "custom":
        from .kernel_tune import save_kernel_log, tune_kernels

        tune_kernels(args.experiment)
        if args.save_to:
            from pathlib import Path

            from .experiment import Experiment

            print(f"[tune-kernels] saved {save_kernel_log(Experiment.open(args.experiment), Path(args.save_to))}")
        return
    from .rpc import RpcMeasurement
    from .tune import tune

    rpc = RpcMeasurement.optional(args.rpc_tracker, args.rpc_key, args.rpc_servers)
    tune(args.experiment, trials=args.trials, max_trials_per_task=args.max_trials_per_task,
         num_threads=args.num_threads, prepack=args.prepack, seed=args.seed, rpc=rpc)


def cmd_build(args, plain) -> None:
    """From the experiment's tuning log when it has records (or from --log), else as before."""
    from .errors import DlrmError
    from .experiment import Experiment
    from .tune import build_best, count_records, tuning_log_dir

    tuned = args.log is not None or args.prepack
    if getattr(args, "schedule", "default") != "default":
        if args.prepack:
            raise DlrmError("--prepack applies to MetaSchedule builds (--schedule default); custom builds "
                            "always prepack")
        return plain(args)  # --log: a kernel log (dlrm tune --schedule custom)
    exp = Experiment.open(args.experiment)
    if not tuned and not count_records(tuning_log_dir(exp)):
        return plain(args)
    build_best(exp, log_dir=args.log, prepack=args.prepack, verify=not args.no_verify)


def add_subcommands(sub, add_experiment) -> None:
    """`tune`, and the tuning-log options of the existing `build` subcommand."""
    from .rpc import DEFAULT_KEY
    from .tune import DEFAULT_TRIALS

    p = sub.add_parser("tune", help="tune: MetaSchedule trials into the experiment's tuning log, resumable (02_tune)")
    add_experiment(p)
    p.add_argument("--trials", type=_positive, default=DEFAULT_TRIALS,
                   help="total trials the log should hold; a rerun tunes only the rest (default: %(default)s)")
    p.add_argument("--max-trials-per-task", type=_positive, help="cap on each kernel's trials (default: none)")
    p.add_argument("--num-threads", type=_positive,
                   help="build workers and search threads (default: every core; measurement always runs alone)")
    p.add_argument("--prepack", action="store_true",
                   help="tune the kernels of the weight-prepacked build (their own log, tune/prepack/)")
    p.add_argument("--seed", type=int, help="search seed (default: random)")
    p.add_argument("--schedule", default="default", choices=["default", "custom"],
                   help="custom: measure the knobs of the hand-written kernels into tune/custom/kernels.jsonl "
                        "instead of MetaSchedule trials (default: %(default)s)")
    p.add_argument("--save-to", metavar="DIR",
                   help="with --schedule custom: also copy the kernel log there, e.g. logs/<machine>/<preset>/b<batch>")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure candidates on the TVM RPC servers registered with this tracker")
    p.add_argument("--rpc-key", default=DEFAULT_KEY, help="the servers' device key (default: %(default)s)")
    p.add_argument("--rpc-servers", type=_positive, help="servers to use at once (default: all registered)")
    p.set_defaults(func=cmd_tune)

    build = sub.choices["build"]
    build.add_argument("--log", help="tuning log folder to build from (default: the experiment's tune/, "
                                     "used whenever it has records); with --schedule custom, a kernel log "
                                     "folder (kernels.jsonl, e.g. logs/<machine>/<preset>/b<batch>)")
    build.add_argument("--prepack", action="store_true",
                       help="weight prepacking: kernels take weights in the tuned layouts, transformed once "
                            "here into the weights folder (uses tune/prepack/)")
    build.set_defaults(func=functools.partial(cmd_build, plain=build.get_default("func")))
