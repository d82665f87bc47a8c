"""`dlrm`: the workflow's steps from a shell, one subcommand per step (as the notebooks)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DlrmError
from .experiment import DEFAULT_EXPERIMENT


def _add_experiment(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help="experiment folder name under $DLRM_EXPERIMENTS_DIR or experiments/ (default: %(default)s)")


def cmd_prepare(args) -> None:
    from .prepare import prepare

    prepare(args.experiment, preset=args.preset, onnx_model=args.onnx_model, batch_size=args.batch_size,
            samples=args.samples, seed=args.seed, table_rows=args.table_rows, style=args.style,
            bags=args.bags, mlperf_data=args.mlperf_data, ids=args.ids)


def cmd_build(args) -> None:
    from .build import build
    from .experiment import Experiment

    schedule = getattr(args, "schedule", "default")
    tag = getattr(args, "tag", None) or ("custom" if schedule == "custom" else "untuned")
    kernel_log = getattr(args, "log", None) if schedule == "custom" else None
    build(Experiment.open(args.experiment), tag=tag, verify=not args.no_verify, schedule=schedule,
          kernel_log=Path(kernel_log) if kernel_log else None)


def cmd_infer(args) -> None:
    from .experiment import Experiment
    from .infer import infer

    exp = Experiment.open(args.experiment)
    manifest = exp.manifest_path(args.build) if args.build else None
    infer(exp, manifest, warmup=args.warmup, iterations=args.iterations, threads=args.threads,
          instances=args.instances, ids=args.ids)


def cmd_demo(args) -> None:
    from .notebooks import run_demo

    run_demo(args.experiment, preset=args.preset, batch_size=args.batch_size, samples=args.samples)


def _table_rows(text: str):
    values = [int(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlrm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="setup: model, normalised model, weights folder, test data (01_setup)")
    _add_experiment(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default="small", help="tiny | small | kaggle | terabyte (default: %(default)s)")
    source.add_argument("--onnx-model", help="your own DLRM ONNX model instead of a generated one")
    p.add_argument("--batch-size", type=int, default=128, help="batch size to build for (default: %(default)s)")
    p.add_argument("--samples", type=int, default=1024, help="test samples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weights and test data seed (default: %(default)s)")
    p.add_argument("--table-rows", type=_table_rows, help="rows per table: one count, or 26 comma-separated")
    p.add_argument("--style", default="loop", choices=["loop", "aten"],
                   help="how the generated model writes embedding bags (default: %(default)s)")
    p.add_argument("--bags", default="one_per_bag", choices=["one_per_bag", "any"],
                   help="one_per_bag: fast path, offsets must be 0..B-1; any: full embedding_bag semantics")
    p.add_argument("--mlperf-data", help="MLPerf day-23 test data (.npz with X_int/X_cat/y, or a folder of .npy)")
    p.add_argument("--ids", default="reject", choices=["reject", "modulo"],
                   help="out-of-range ids in --mlperf-data: reject, or take them modulo the table size")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("build", help="build: library + manifest, checked against the reference (03_build)")
    _add_experiment(p)
    p.add_argument("--no-verify", action="store_true", help="skip the check against the reference outputs")
    p.add_argument("--schedule", default="default", choices=["default", "custom"],
                   help="custom: hand-written packed-GEMM and interaction kernels (dlrmlib.schedules), "
                        "weights prepacked at build time (default: %(default)s)")
    p.add_argument("--tag", help="build tag (default: untuned, or custom with --schedule custom)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("infer", help="run natively: dlrm_infer on the experiment's latest build")
    _add_experiment(p)
    p.add_argument("--build", help="build tag (untuned, or the trial budget); default: the latest build")
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
    _add_experiment(p)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=1024)
    p.set_defaults(func=cmd_demo)

    from .analysis_cli import add_subcommands  # profile, bench, report (04_profile, 05_report)

    add_subcommands(sub, _add_experiment)

    from .loadgen_cli import add_subcommand as add_loadgen  # MLPerf LoadGen scenarios

    add_loadgen(sub, _add_experiment)

    from .tune_cli import add_subcommands as add_tune  # tune; build --log/--prepack (02_tune)

    add_tune(sub, _add_experiment)
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
