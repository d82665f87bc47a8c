"""`dlrm tune` (notebook 02_tune): MetaSchedule trials, or the hand-written kernels' knobs."""
from __future__ import annotations

import argparse
from pathlib import Path

from dlrmlib.cli.args import add_experiment, integer, seed, threads
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.formats.shipped_log import DEFAULT_KEEP
from dlrmlib.tuning import DEFAULT_TRIALS, MAX_TRIALS, MAX_TRIALS_WHY, ROOF_MARGIN
from dlrmlib.tuning.rpc import DEFAULT_KEY, RpcMeasurement


def cmd_tune(args) -> None:
    if args.keep is not None and not args.ship:
        raise DlrmError("--keep applies to --ship (records kept per kernel in the shipped log)")
    if args.schedule == "custom":
        if args.ship:
            raise DlrmError("--ship exports a MetaSchedule log; the kernel log ships with --schedule custom "
                            "--save-to DIR")
        from dlrmlib.tuning.kernels import save_kernel_log, tune_kernels  # deferred: imports TVM

        tune_kernels(args.experiment, precision=args.precision)
        if args.save_to:
            print(f"[tune-kernels] saved {save_kernel_log(Experiment.open(args.experiment), Path(args.save_to))}")
        return
    from dlrmlib.tuning.kernels import knob_precisions  # deferred: imports TVM
    from dlrmlib.tuning.metaschedule import tune  # deferred: imports TVM

    if args.save_to and not args.ship:
        raise DlrmError("--save-to applies to --schedule custom (the kernel log) or --ship (the tuning log)")
    if args.ship and args.trials is None:  # the log as it stands: nothing tuned
        return _ship(args)
    rpc = RpcMeasurement.optional(args.rpc_tracker, args.rpc_key, args.rpc_servers)
    trials = DEFAULT_TRIALS if args.trials is None else args.trials
    tune(args.experiment, trials=trials, max_trials_per_task=args.max_trials_per_task,
         num_threads=args.num_threads, prepack=args.prepack, seed=args.seed, rpc=rpc, roof_margin=args.roof_margin,
         space=args.space, kernel_precisions=knob_precisions(args.precision))
    if args.ship:
        _ship(args)


def _ship(args) -> None:
    from dlrmlib.tuning.ship import ship_log  # deferred: imports TVM

    ship_log(args.experiment, Path(args.save_to) if args.save_to else None,
             keep=DEFAULT_KEEP if args.keep is None else args.keep, prepack=args.prepack)


def add_subcommands(sub) -> None:
    p = sub.add_parser("tune", help="tune: MetaSchedule trials into the experiment's tuning log, resumable (02_tune)")
    add_experiment(p)
    trials = integer(1, MAX_TRIALS, MAX_TRIALS_WHY)
    p.add_argument("--trials", type=trials,
                   help=f"total trials the log should hold; a rerun tunes only the rest (default: {DEFAULT_TRIALS}; "
                        "with --ship: none, the log is shipped as it stands)")
    p.add_argument("--max-trials-per-task", type=trials, help="cap on each kernel's trials (default: none)")
    p.add_argument("--num-threads", type=threads,
                   help="build workers and search threads (default: every core; measurement always runs alone)")
    p.add_argument("--prepack", action=argparse.BooleanOptionalAction, default=None,
                   help="weight layout of the build tuned for: prepacked (the default; log tune/prepack/) or, with "
                        "--no-prepack, plain (per-batch weight transposes; log tune/), for the study. Default: "
                        "prepacked, unless the experiment's only log is an older plain one, which goes on")
    p.add_argument("--seed", type=seed, help="search seed (default: random)")
    p.add_argument("--space", default="union", choices=["union", "default", "hand-written"],
                   help="design space of the Dense kernels: the hand-written packed GEMM (dlrmlib.schedules.space, "
                        "its knobs as MetaSchedule decisions) with MetaSchedule's default rules, or either alone "
                        "(default: %(default)s)")
    p.add_argument("--roof-margin", type=float, default=ROOF_MARGIN, metavar="FRACTION",
                   help="a kernel whose best trial is within this fraction of its compute roof (FLOPs at this "
                        "machine's sgemm peak) gets no more trials (default: %(default)s)")
    p.add_argument("--schedule", default="default", choices=["default", "custom"],
                   help="custom: measure the knobs of the hand-written kernels into tune/custom/kernels.jsonl "
                        "instead of MetaSchedule trials (default: %(default)s)")
    p.add_argument("--ship", action="store_true",
                   help="export the tuning log (after tuning, if --trials is given) as a shipped log: the best --keep "
                        "records per kernel, tasks, the duel, provenance, under logs/<machine kind>/<preset>/"
                        "b<batch>/tuned-fp32/ (or --save-to DIR); `dlrm build --tuning-log DIR` builds from it")
    p.add_argument("--keep", type=integer(1, 1000), metavar="K",
                   help=f"with --ship: records kept per kernel (default: {DEFAULT_KEEP})")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                   help="int8: also measure the int8 GEMMs' tiles of `dlrm build --precision int8` for this CPU's "
                        "instruction set, into the tuning log (with --schedule custom: into the kernel log) beside "
                        "the interaction's knobs; MetaSchedule tunes the fp32 model (default: %(default)s)")
    p.add_argument("--save-to", metavar="DIR",
                   help="with --schedule custom: also copy the kernel log there, e.g. "
                        "logs/<machine>/<preset>/b<batch>; with --ship: the shipped log's folder instead of logs/...")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure candidates on the TVM RPC servers registered with this tracker")
    p.add_argument("--rpc-key", default=DEFAULT_KEY, help="the servers' device key (default: %(default)s)")
    p.add_argument("--rpc-servers", type=threads, help="servers to use at once (default: all registered)")
    p.set_defaults(func=cmd_tune)
