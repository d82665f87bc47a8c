"""Argument types and options the subcommands share."""
from __future__ import annotations

import argparse

from dlrmlib.core.experiment import DEFAULT_EXPERIMENT


def add_experiment(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help="experiment folder name under $DLRM_EXPERIMENTS_DIR or experiments/ (default: %(default)s)")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def table_rows(text: str):
    values = [int(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values
