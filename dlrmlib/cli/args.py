"""Argument types and options the subcommands share."""
from __future__ import annotations

import argparse
import math

from dlrmlib.core.experiment import DEFAULT_EXPERIMENT
from dlrmlib.formats.testdata import MAX_IDS_PER_BAG


def add_experiment(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help="experiment folder name under $DLRM_EXPERIMENTS_DIR or experiments/ (default: %(default)s)")


SEED_MAX = 2**32 - 1  # NumPy's seeds
BATCH_MAX = 65536  # larger batches are not what a recommender serves, and their buffers get huge
THREADS_MAX = 4096


def integer(low: int, high: int, why: str = ""):
    """An argparse type: an integer from `low` to `high`; the refusal says the range and `why`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            wanted = "a positive integer" if low == 1 else f"an integer of at least {low}"
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text} is too large: at most {high:,}{why}")
        return value
    return parse


def number(low: float, high: float, why: str = "", low_open: bool = True):
    """An argparse type: a finite number in (`low`, `high`] (or [`low`, ...] unless `low_open`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"expected a number {'above' if low_open else 'of at least'} {low:g}, "
                                             f"got {text!r}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text} is too large: at most {high:g}{why}")
        return value
    return parse


positive = integer(1, 2**31 - 1)
seed = integer(0, SEED_MAX)
batch_size = integer(1, BATCH_MAX, " (a batch that large is not served one request at a time)")
threads = integer(1, THREADS_MAX)
samples = integer(1, 10**7, " (the test data is held in memory: 10 million samples take 2.6 GB)")
ids_per_bag = integer(1, MAX_IDS_PER_BAG, " (each table's K x batch ids are gathered at once; MLPerf's multi-hot "
                                         "bags hold at most 100)")


def ints(text: str, low: int = 1, high: int = BATCH_MAX) -> list[int]:
    """Comma-separated integers, each from `low` to `high`."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or not all(low <= v <= high for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers from {low} to {high:,}, got {text!r}")
    return values


def thread_counts(text: str) -> list[int]:
    return ints(text, 1, THREADS_MAX)


def names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def table_rows(text: str):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one row count or 26 comma-separated ones, got {text!r}") from None
    return values[0] if len(values) == 1 else values
