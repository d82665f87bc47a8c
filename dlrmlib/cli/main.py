"""`dlrm`: the workflow's steps from a shell, one subcommand per step (as the notebooks).

Each command imports its step when it runs, not when the parser is made: the steps pull in
TVM, pandas and matplotlib (seconds), and `dlrm --help` should answer at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlrmlib.cli import analysis, loadgen, tune
from dlrmlib.cli.args import add_experiment, table_rows
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment


def cmd_prepare(args) -> None:
    from dlrmlib.prepare import prepare  # deferred (see the module's docstring)

    prepare(args.experiment, preset=args.preset, onnx_model=args.onnx_model, batch_size=args.batch_size,
            samples=args.samples, seed=args.seed, table_rows=args.table_rows, style=args.style,
            bags=args.bags, mlperf_data=args.mlperf_data, ids=args.ids)


def cmd_build(args) -> None:
    """One place decides what a build is: custom kernels, or the tuning log when it has records
    (or one is named), else untuned."""
    from dlrmlib.building import recipes  # deferred (see the module's docstring)
    from dlrmlib.building.build import build  # deferred, as above

    exp = Experiment.open(args.experiment)
    kernel_log = args.kernel_log or (args.log if args.schedule == "custom" else None)
    tuning_log = args.tuning_log or (args.log if args.schedule == "default" else None)
    if args.schedule == "custom":
        if args.prepack is not None or args.tuning_log:
            raise DlrmError("--[no-]prepack and --tuning-log apply to MetaSchedule builds (--schedule default); custom "
                            "builds always prepack and take --kernel-log")
        recipe = recipes.Custom(Path(kernel_log) if kernel_log else None, args.tag or "custom")
    else:
        if args.kernel_log:
            raise DlrmError("--kernel-log applies to --schedule custom")
        recipe = recipes.best_recipe(exp, Path(tuning_log) if tuning_log else None, args.prepack)
        if args.tag and isinstance(recipe, recipes.Untuned):
            recipe = recipes.Untuned(args.tag)
    build(exp, recipe, verify=not args.no_verify)


def cmd_infer(args) -> None:
    from dlrmlib.building.native import infer  # deferred (see the module's docstring)

    exp = Experiment.open(args.experiment)
    manifest = exp.manifest_path(args.build) if args.build else None
    infer(exp, manifest, warmup=args.warmup, iterations=args.iterations, threads=args.threads,
          instances=args.instances, ids=args.ids)


def cmd_demo(args) -> None:
    from dlrmlib.cli.notebooks import run_demo  # deferred (see the module's docstring)

    run_demo(args.experiment, preset=args.preset, batch_size=args.batch_size, samples=args.samples)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlrm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="setup: model, normalised model, weights folder, test data (01_setup)")
    add_experiment(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default="small", help="tiny | small | kaggle | terabyte (default: %(default)s)")
    source.add_argument("--onnx-model", help="your own DLRM ONNX model instead of a generated one")
    p.add_argument("--batch-size", type=int, default=128, help="batch size to build for (default: %(default)s)")
    p.add_argument("--samples", type=int, default=1024, help="test samples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weights and test data seed (default: %(default)s)")
    p.add_argument("--table-rows", type=table_rows, help="rows per table: one count, or 26 comma-separated")
    p.add_argument("--style", default="loop", choices=["loop", "aten"],
                   help="how the generated model writes embedding bags (default: %(default)s)")
    p.add_argument("--bags", default="one_per_bag", choices=["one_per_bag", "any"],
                   help="one_per_bag: fast path, offsets must be 0..B-1; any: full embedding_bag semantics")
    p.add_argument("--mlperf-data", help="MLPerf day-23 test data (.npz with X_int/X_cat/y, or a folder of .npy)")
    p.add_argument("--ids", default="reject", choices=["reject", "modulo"],
                   help="out-of-range ids in --mlperf-data: reject, or take them modulo the table size")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("build", help="build: library + manifest, checked against the reference (03_build)")
    add_experiment(p)
    p.add_argument("--no-verify", action="store_true", help="skip the check against the reference outputs")
    p.add_argument("--schedule", default="default", choices=["default", "custom"],
                   help="custom: hand-written packed-GEMM and interaction kernels (dlrmlib.schedules), "
                        "weights prepacked at build time (default: %(default)s)")
    p.add_argument("--tag", help="tag of an untuned or custom build (default: untuned, or custom); a build from a "
                                 "tuning log is tagged with the log's record count")
    p.add_argument("--tuning-log", metavar="DIR", help="MetaSchedule tuning log to build from (default: the "
                   "experiment's tune/prepack/, or tune/ with --no-prepack, whenever it has records)")
    p.add_argument("--prepack", action=argparse.BooleanOptionalAction, default=None,
                   help="weight prepacking (the default): kernels take weights in the tuned layouts, transformed "
                        "once here into the weights folder (log tune/prepack/); --no-prepack: the plain build, "
                        "per-batch transposes (log tune/). Default: as the log was tuned (tasks.json)")
    p.add_argument("--kernel-log", metavar="DIR", help="with --schedule custom: the kernel log whose knobs to "
                   "use (kernels.jsonl, e.g. logs/<machine>/<preset>/b<batch>; default: tune/custom/ if tuned)")
    p.add_argument("--log", help=argparse.SUPPRESS)  # before --tuning-log/--kernel-log: either, by --schedule
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("infer", help="run natively: dlrm_infer on the experiment's latest build")
    add_experiment(p)
    p.add_argument("--build", help="build tag (untuned, custom, or a tuning log's record count); default: the "
                                   "latest build")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches per instance (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=0,
                   help="measured passes over the test data; 0: enough for 100 batches (default)")
    p.add_argument("--threads", type=int, default=0, help="threads per instance; 0: cores / instances")
    p.add_argument("--instances", type=int, default=1,
                   help="runner instances sharing the mapped weights, each on its own cores (default: 1)")
    p.add_argument("--ids", default="reject", choices=["reject", "modulo"],
                   help="out-of-range ids: reject, or take them modulo the table size")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("demo", help="the whole workflow through the notebooks, ending with what it measured")
    add_experiment(p)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=1024)
    p.set_defaults(func=cmd_demo)

    tune.add_subcommands(sub)  # tune (02_tune)
    analysis.add_subcommands(sub)  # profile, bench, report (04_profile, 05_report)
    loadgen.add_subcommand(sub)  # MLPerf LoadGen scenarios
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except DlrmError as e:
        print(f"dlrm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlrm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
