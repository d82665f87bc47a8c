"""`dlrm tune` (notebook 02_tune): MetaSchedule trials, or the hand-written kernels' knobs."""
from __future__ import annotations

from pathlib import Path

from dlrmlib.cli.args import add_experiment, integer, seed, threads
from dlrmlib.core.experiment import Experiment
from dlrmlib.tuning import DEFAULT_TRIALS, MAX_TRIALS, MAX_TRIALS_WHY
from dlrmlib.tuning.rpc import DEFAULT_KEY, RpcMeasurement


def cmd_tune(args) -> None:
    if args.schedule == "custom":
        from dlrmlib.tuning.kernels import save_kernel_log, tune_kernels  # deferred: imports TVM

        tune_kernels(args.experiment)
        if args.save_to:
            print(f"[tune-kernels] saved {save_kernel_log(Experiment.open(args.experiment), Path(args.save_to))}")
        return
    from dlrmlib.tuning.metaschedule import tune  # deferred: imports TVM

    rpc = RpcMeasurement.optional(args.rpc_tracker, args.rpc_key, args.rpc_servers)
    tune(args.experiment, trials=args.trials, max_trials_per_task=args.max_trials_per_task,
         num_threads=args.num_threads, prepack=args.prepack, seed=args.seed, rpc=rpc)


def add_subcommands(sub) -> None:
    p = sub.add_parser("tune", help="tune: MetaSchedule trials into the experiment's tuning log, resumable (02_tune)")
    add_experiment(p)
    trials = integer(1, MAX_TRIALS, MAX_TRIALS_WHY)
    p.add_argument("--trials", type=trials, default=DEFAULT_TRIALS,
                   help="total trials the log should hold; a rerun tunes only the rest (default: %(default)s)")
    p.add_argument("--max-trials-per-task", type=trials, help="cap on each kernel's trials (default: none)")
    p.add_argument("--num-threads", type=threads,
                   help="build workers and search threads (default: every core; measurement always runs alone)")
    p.add_argument("--prepack", action="store_true",
                   help="tune the kernels of the weight-prepacked build (their own log, tune/prepack/)")
    p.add_argument("--seed", type=seed, help="search seed (default: random)")
    p.add_argument("--schedule", default="default", choices=["default", "custom"],
                   help="custom: measure the knobs of the hand-written kernels into tune/custom/kernels.jsonl "
                        "instead of MetaSchedule trials (default: %(default)s)")
    p.add_argument("--save-to", metavar="DIR",
                   help="with --schedule custom: also copy the kernel log there, e.g. logs/<machine>/<preset>/b<batch>")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure candidates on the TVM RPC servers registered with this tracker")
    p.add_argument("--rpc-key", default=DEFAULT_KEY, help="the servers' device key (default: %(default)s)")
    p.add_argument("--rpc-servers", type=threads, help="servers to use at once (default: all registered)")
    p.set_defaults(func=cmd_tune)
