"""MLPerf-style query samples: each one an aggregate of many user-item pairs.

In MLPerf Inference's DLRM benchmark a query sample is not one user-item pair but a user's
whole request: a run of consecutive pairs of the test day, 100 to 700 of them, drawn from a
fixed distribution (MLPerf's `dist_quantile.txt`: 5% quantiles, mean 270). Here the pairs are
rows of the experiment's test data folder, drawn with a seeded RNG, so that a run can be
repeated exactly and its accuracy log interpreted later.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.files import atomic_path

# MLPerf DLRM's distribution of pairs per query sample, as probabilities: its 20 published
# 5% quantiles are 100 twice, 200 twelve times, 300 twice, then 400, 500, 600 and 700 once.
PAIRS_PER_SAMPLE = {100: 0.10, 200: 0.60, 300: 0.10, 400: 0.05, 500: 0.05, 600: 0.05, 700: 0.05}


@dataclass
class Aggregation:
    """Query sample i is the test data rows `rows[offsets[i]:offsets[i + 1]]`."""

    offsets: np.ndarray  # int64 [S + 1], offsets[0] == 0
    rows: np.ndarray     # int64 [offsets[-1]], a test data row per pair
    seed: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def pairs(self, sample: int) -> np.ndarray:
        """The test data rows of one query sample."""
        return self.rows[self.offsets[sample]:self.offsets[sample + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def summary(self) -> dict:
        sizes = self.sizes()
        return {"query_samples": len(self), "pairs": int(sizes.sum()), "mean_pairs": float(sizes.mean()),
                "min_pairs": int(sizes.min()), "max_pairs": int(sizes.max()), "seed": self.seed,
                "distribution": "MLPerf DLRM quantiles (100-700 pairs, mean 270)"}


def draw_sizes(count: int, rng: np.random.Generator, distribution: dict[int, float] = PAIRS_PER_SAMPLE) -> np.ndarray:
    """Pairs per query sample, drawn from the distribution."""
    values = np.array(sorted(distribution), dtype=np.int64)
    weights = np.array([distribution[v] for v in values], dtype=np.float64)
    return rng.choice(values, size=count, p=weights / weights.sum())


def draw_rows(total: int, num_rows: int, rng: np.random.Generator) -> np.ndarray:
    """`total` test data rows: whole shuffled passes over the data, so every row is used
    about equally often (like MLPerf's consecutive pairs of day 23, but in a seeded order)."""
    passes = -(-total // num_rows)
    return np.concatenate([rng.permutation(num_rows) for _ in range(passes)])[:total].astype(np.int64)


def aggregate(num_rows: int, count: int, seed: int = 0,
              distribution: dict[int, float] = PAIRS_PER_SAMPLE) -> Aggregation:
    """`count` query samples over a test data folder of `num_rows` rows."""
    if num_rows < 1:
        raise DlrmError("the test data folder has no samples to draw user-item pairs from")
    if count < 1:
        raise DlrmError(f"the number of query samples must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    sizes = draw_sizes(count, rng, distribution)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return Aggregation(offsets=offsets, rows=draw_rows(int(offsets[-1]), num_rows, rng), seed=seed)


def save_aggregation(path: Path, aggregation: Aggregation) -> Path:
    """The sample-to-pairs map beside LoadGen's logs (its accuracy log names samples only)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, offsets=aggregation.offsets, rows=aggregation.rows, seed=aggregation.seed)
    return Path(path)


def load_aggregation(path: Path) -> Aggregation:
    if not Path(path).is_file():
        raise DlrmError(f"aggregation file not found: {path}")
    with np.load(path, allow_pickle=False) as npz:
        return Aggregation(offsets=npz["offsets"], rows=npz["rows"], seed=int(npz["seed"]))
