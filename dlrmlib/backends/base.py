"""The backend interface and what every backend shares: batching and timing."""
from __future__ import annotations

import time
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from dlrmlib.core.metrics import latency_summary
from dlrmlib.formats.model import DENSE_INPUT, INDICES_INPUT, OFFSETS_INPUT
from dlrmlib.formats.presets import NUM_TABLES


class Backend(Protocol):
    name: str
    version: str
    batch_size: int

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Scores [B, 1] for one batch of model inputs (`input.1`, `lS_o`, `lS_i`)."""


def model_inputs(dense: np.ndarray, sparse: np.ndarray, start: int, batch_size: int) -> tuple[dict, int]:
    """The model's inputs for samples start..start+B-1; a short last batch is padded by
    repeating its last sample. `sparse` [N, 26] holds one id per bag, [N, 26, K] K ids: bag b
    of table t is lS_i[t, b*K : b*K + K], so the offsets are 0, K, 2K, ... Returns the inputs
    and how many samples are real."""
    stop = min(start + batch_size, len(dense))
    rows = np.arange(start, start + batch_size).clip(max=stop - 1)
    per_bag = 1 if sparse.ndim == 2 else sparse.shape[2]
    offsets = np.arange(0, batch_size * per_bag, per_bag, dtype=np.int64)
    return ({DENSE_INPUT: np.ascontiguousarray(dense[rows], dtype=np.float32),
             OFFSETS_INPUT: np.tile(offsets, (NUM_TABLES, 1)),
             INDICES_INPUT: np.ascontiguousarray(np.swapaxes(sparse[rows], 0, 1).reshape(NUM_TABLES, -1),
                                                 dtype=np.int64)}, stop - start)


def predict_all(backend: Backend, dense: np.ndarray, sparse: np.ndarray, progress: bool = False) -> np.ndarray:
    """Scores for every sample, batch by batch."""
    out = np.empty(len(dense), dtype=np.float32)
    starts = range(0, len(dense), backend.batch_size)
    for start in tqdm(starts, desc=f"{backend.name} predict", unit="batch", disable=not progress, leave=False):
        inputs, n = model_inputs(dense, sparse, start, backend.batch_size)
        out[start:start + n] = np.asarray(backend.predict(inputs)).ravel()[:n]
    return out


def batch_inputs(dense: np.ndarray, sparse: np.ndarray, batch_size: int, limit: int | None = None) -> list[dict]:
    """The data's model inputs batch by batch from the first sample (a short last batch padded,
    as model_inputs does), at most `limit` batches."""
    starts = list(range(0, len(dense), batch_size))[:limit]
    return [model_inputs(dense, sparse, s, batch_size)[0] for s in starts]


def measure(backend: Backend, dense: np.ndarray, sparse: np.ndarray, warmup: int = 3,
            repeats: int = 20, max_seconds: float | None = None) -> dict:
    """Per-batch latency over `repeats` timed batches cycling through the data, after warm-up;
    with `max_seconds`, stops early once that much time is measured (at least 3 batches), so a
    slow untuned build does not hold up a quick check."""
    batches = batch_inputs(dense, sparse, backend.batch_size)
    for i in range(warmup):
        backend.predict(batches[i % len(batches)])
    seconds = []
    for i in range(repeats):
        if max_seconds is not None and len(seconds) >= 3 and sum(seconds) > max_seconds:
            break
        inputs = batches[i % len(batches)]
        start = time.perf_counter()
        backend.predict(inputs)
        seconds.append(time.perf_counter() - start)
    return {"backend": backend.name, "version": backend.version, **latency_summary(seconds, backend.batch_size)}
