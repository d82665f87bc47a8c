"""`dlrm`: the workflow's steps from a shell, one subcommand per step (as the notebooks).

Each command imports its step when it runs, not when the parser is made: the steps pull in
TVM, pandas and matplotlib (seconds), and `dlrm --help` should answer at once.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from dlrmlib.cli import analysis, loadgen, tune
from dlrmlib.cli.args import (
    THREADS_MAX,
    add_experiment,
    batch_size,
    ids_per_bag,
    integer,
    samples,
    seed,
    table_rows,
    threads,
)
from dlrmlib.core.errors import _OS_ADVICE, MEMORY_ADVICE, DlrmError, describe_os_error
from dlrmlib.core.experiment import Experiment


_OS_ADVICE_ENOSPC, _OS_ADVICE_EROFS = _OS_ADVICE[errno.ENOSPC], _OS_ADVICE[errno.EROFS]
CHILD_ENV = "DLRM_IN_CHILD"  # set in the child process a build runs in


def in_child(args) -> int | None:
    """Run this command again in a child process, unless this is that child: TVM's compiler
    aborts the process on std::bad_alloc (exit 134, no message), which only a parent can report.
    Returns the child's exit status (None in the child itself)."""
    if os.environ.get(CHILD_ENV):
        return None
    code = "import sys; from dlrmlib.cli.main import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *args.argv], env={**os.environ, CHILD_ENV: "1"})
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise DlrmError(f"the {args.command} process died of {name} with no error of its own; "
                        + ("out of memory is the usual cause: free memory or raise the limit (`ulimit -v`), or use "
                           "a smaller preset or batch size" if name in ("SIGABRT", "SIGKILL", "SIGSEGV")
                           else "see the lines above"))
    return done.returncode  # a failing child has printed its error


def cmd_prepare(args) -> None:
    from dlrmlib.prepare import prepare  # deferred (see the module's docstring)

    prepare(args.experiment, preset=args.preset, onnx_model=args.onnx_model, batch_size=args.batch_size,
            samples=args.samples, seed=args.seed, table_rows=args.table_rows, style=args.style,
            bags=args.bags, mlperf_data=args.mlperf_data, ids=args.ids, ids_per_bag=args.ids_per_bag)


def cmd_build(args) -> int | None:
    """One place decides what a build is: custom kernels, or the tuning log when it has records
    (or one is named), else untuned."""
    code = in_child(args)
    if code is not None:
        return code
    from dlrmlib.building import recipes  # deferred (see the module's docstring)
    from dlrmlib.building.build import build  # deferred, as above

    exp = Experiment.open(args.experiment)
    other_batch = args.batch_size not in (None, exp.batch_size)
    suffix = f"_b{args.batch_size}" if other_batch else ""  # as build_custom_batches tags them
    schedule = args.schedule or ("custom" if args.precision != "fp32" else "default")
    kernel_log = args.kernel_log or (args.log if schedule == "custom" else None)
    tuning_log = args.tuning_log or (args.log if schedule == "default" else None)
    if args.precision != "fp32" and schedule != "custom":
        raise DlrmError(f"--precision {args.precision} uses the hand-written kernels: drop --schedule default")
    if schedule == "custom":
        if args.prepack is not None or args.tuning_log:
            raise DlrmError("--[no-]prepack and --tuning-log apply to MetaSchedule builds (--schedule default); custom "
                            "builds always prepack and take --kernel-log")
        if args.calibration and args.precision != "int8":
            raise DlrmError("--calibration applies to --precision int8 (its activations' scales)")
        static = "_static" if args.calibration == "static" else ""
        default_tag = ("custom" if args.precision == "fp32" else f"custom_{args.precision}{static}") + suffix
        recipe = recipes.Custom(Path(kernel_log) if kernel_log else None, args.tag or default_tag, args.precision,
                                calibration=args.calibration or "dynamic")
    else:
        if args.kernel_log:
            raise DlrmError("--kernel-log applies to --schedule custom")
        recipe = recipes.best_recipe(exp, Path(tuning_log) if tuning_log else None, args.prepack, args.other_machine)
        if isinstance(recipe, recipes.Untuned) and not other_batch:
            _mention_shipped(exp)
        if other_batch and not isinstance(recipe, recipes.Untuned):
            raise DlrmError(f"--batch-size {args.batch_size}: a tuning log holds schedules for the batch size it was "
                            f"tuned at ({exp.batch_size} here); build --schedule custom at another batch size, or "
                            f"prepare an experiment with --batch-size {args.batch_size} and tune it")
        if isinstance(recipe, recipes.Untuned) and (args.tag or suffix):
            recipe = recipes.Untuned(args.tag or f"untuned{suffix}")
    build(exp, recipe, verify=not args.no_verify, min_auc_ratio=args.min_auc_ratio, batch_size=args.batch_size)


def _mention_shipped(exp: Experiment) -> None:
    """An untuned build where the repository ships a tuning log for this machine kind, preset
    and batch size says so: it is used only when named (the experiment's own builds stay its own)."""
    from dlrmlib.core.paths import LOGS_DIR  # deferred, as above
    from dlrmlib.core.target import machine_kind  # deferred, as above
    from dlrmlib.formats.shipped_log import find_shipped  # deferred, as above

    preset = None if exp.params.get("onnx_model") else exp.params.get("preset")
    shipped = find_shipped(LOGS_DIR, machine_kind(), preset, exp.batch_size) if preset else None
    if shipped:
        print(f"[build] note: a tuning log ships for this machine kind, preset and batch size; build from it with "
              f"`dlrm build --experiment {exp.name} --tuning-log {shipped}`")


def cmd_infer(args) -> None:
    from dlrmlib.building.native import infer  # deferred (see the module's docstring)

    exp = Experiment.open(args.experiment)
    manifest = exp.manifest_path(args.build) if args.build else None
    infer(exp, manifest, warmup=args.warmup, iterations=args.iterations, threads=args.threads,
          instances=args.instances, ids=args.ids)


def cmd_demo(args) -> None:
    from dlrmlib.cli.notebooks import run_demo  # deferred (see the module's docstring)

    run_demo(args.experiment, preset=args.preset, batch_size=args.batch_size, samples=args.samples)


class Parser(argparse.ArgumentParser):
    """argparse, with its refusals in the one form every dlrm error has (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"dlrm: error: {message} (see `{self.prog} --help`)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dlrm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="setup: model, normalised model, weights folder, test data (01_setup)")
    add_experiment(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default="small", help="tiny | small | kaggle | terabyte (default: %(default)s)")
    source.add_argument("--onnx-model", help="your own DLRM ONNX model instead of a generated one")
    p.add_argument("--batch-size", type=batch_size, default=128, help="batch size to build for (default: %(default)s)")
    p.add_argument("--samples", type=samples, default=1024, help="test samples (default: %(default)s)")
    p.add_argument("--seed", type=seed, default=0, help="weights and test data seed (default: %(default)s)")
    p.add_argument("--table-rows", type=table_rows, help="rows per table: one count, or 26 comma-separated")
    p.add_argument("--style", default="loop", choices=["loop", "aten"],
                   help="how the generated model writes embedding bags (default: %(default)s)")
    p.add_argument("--bags", choices=["one_per_bag", "any"],
                   help="one_per_bag (default with one id per bag): fast path, offsets must be 0..B-1; any: full "
                        "embedding_bag semantics (default with --ids-per-bag > 1)")
    p.add_argument("--ids-per-bag", type=ids_per_bag, default=1,
                   help="K ids in every bag (multi-hot): the test data holds K per bag, the model takes K x batch "
                        "per table; needs --bags any (default: %(default)s)")
    p.add_argument("--mlperf-data", help="MLPerf day-23 test data (.npz with X_int/X_cat/y, or a folder of .npy)")
    p.add_argument("--ids", default="reject", choices=["reject", "modulo"],
                   help="out-of-range ids in --mlperf-data: reject, or take them modulo the table size")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("build", help="build: library + manifest, checked against the reference (03_build)")
    add_experiment(p)
    p.add_argument("--no-verify", action="store_true", help="skip the check against the reference outputs")
    p.add_argument("--schedule", choices=["default", "custom"],
                   help="custom: hand-written packed-GEMM and interaction kernels (dlrmlib.schedules), "
                        "weights prepacked at build time (default: default; custom with --precision bf16/int8)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
                   help="the Dense layers' precision: int8 (AMX, VNNI or AVX2; per-channel weights, per-row u8 "
                        "activations) or bf16 weights; gated on accuracy (docs/precision.md; default: %(default)s)")
    p.add_argument("--calibration", choices=["dynamic", "static"],
                   help="int8 activations: dynamic (a scale per row of every batch) or static (one per layer from the "
                        "test data's calibration slice, docs/precision.md; tag custom_int8_static) (default: dynamic)")
    p.add_argument("--min-auc-ratio", type=float, default=0.999, metavar="R",
                   help="accuracy gate of a bf16/int8 build: AUC >= R x the fp32 reference's (default: %(default)s)")
    p.add_argument("--batch-size", type=batch_size,
                   help="build for this batch size instead of the experiment's (`dlrm prepare --batch-size`): the "
                        "model normalised again, same weights; custom or untuned builds, tagged <tag>_b<N> "
                        "(default: the experiment's)")
    p.add_argument("--tag", help="tag of an untuned or custom build (default: untuned, or custom; with another "
                                 "--batch-size N, untuned_bN or custom_bN); a build from a tuning log is tagged with "
                                 "the log's record count, from a shipped log shipped_<trials>")
    p.add_argument("--tuning-log", metavar="DIR", help="MetaSchedule tuning log to build from, e.g. a shipped one, "
                   "logs/<machine kind>/<preset>/b<batch>/tuned-fp32 (default: the experiment's tune/prepack/, or "
                   "tune/ with --no-prepack, whenever it has records)")
    p.add_argument("--other-machine", action="store_true",
                   help="build from a tuning log tuned on another machine kind anyway (refused otherwise: its "
                        "schedules were chosen for that CPU)")
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
    p.add_argument("--warmup", type=integer(0, 10**6), default=5,
                   help="untimed batches per instance (default: %(default)s)")
    p.add_argument("--iterations", type=integer(0, 10**6), default=0,
                   help="measured passes over the test data; 0: enough for 100 batches (default)")
    p.add_argument("--threads", type=integer(0, THREADS_MAX), default=0,
                   help="threads per instance; 0: cores / instances")
    p.add_argument("--instances", type=threads, default=1,
                   help="runner instances sharing the mapped weights, each on its own cores (default: 1)")
    p.add_argument("--ids", default="reject", choices=["reject", "modulo"],
                   help="out-of-range ids: reject, or take them modulo the table size")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("demo", help="the whole workflow through the notebooks, ending with what it measured")
    add_experiment(p)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch-size", type=batch_size, default=128)
    p.add_argument("--samples", type=samples, default=1024)
    p.set_defaults(func=cmd_demo)

    tune.add_subcommands(sub)  # tune (02_tune)
    analysis.add_subcommands(sub)  # profile, bench, report (04_profile, 05_report)
    loadgen.add_subcommand(sub)  # MLPerf LoadGen scenarios
    return parser


def _error(message: str) -> int:
    print(f"dlrm: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed its one line
        return e.code if isinstance(e.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.raiseExceptions = False  # a handler on a full disk must not print a traceback per record
    try:
        code = args.func(args)
    except DlrmError as e:
        return _error(str(e))
    except OSError as e:
        return _error(describe_os_error(e))
    except MemoryError:
        return _error(MEMORY_ADVICE)
    except KeyboardInterrupt:
        print("dlrm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # TVM and ONNX report the system's refusals as their own errors
        text = str(e)
        for marker, message in (("No space left on device", _OS_ADVICE_ENOSPC), ("bad_alloc", MEMORY_ADVICE),
                                ("Read-only file system", _OS_ADVICE_EROFS)):
            if marker in text:
                return _error(f"{message} ({type(e).__name__})")
        raise
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
