"""Interleaved timing: the one way dlrmlib compares runtimes on a shared, noisy machine.

Each round runs every measurement once, in an order that rotates from round to round, after
an untimed pause (the previous runtime's worker threads stop spinning first). Drift of the
machine's speed over minutes then touches every runtime alike; only ratios from one run mean
anything.
"""
from __future__ import annotations

import time
from typing import Callable

PAUSE_S = 0.05  # untimed, before each run: long enough for OpenMP/TVM pools to go idle


def interleaved(measures: dict[str, Callable[[], float]], repeats: int, pause_s: float = PAUSE_S,
                after_round: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """`repeats` rounds of every measure (name -> a call returning one figure), rotating who
    goes first; `after_round` runs after each round (e.g. timing the machine's peak). Returns
    name -> one figure per round."""
    names = list(measures)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            time.sleep(pause_s)
            runs[name].append(measures[name]())
        if after_round is not None:
            after_round()
    return runs


def seconds_of(call: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start
