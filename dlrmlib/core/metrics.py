"""Accuracy and timing figures, computed the same way for every runtime."""
from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties share their average rank), as MLPerf
    reports accuracy for DLRM. NaN when only one class is present."""
    labels = np.asarray(labels).ravel() > 0.5
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank over runs of equal scores.
    edges = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def accuracy(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """How far outputs are from the reference runtime's, and their AUC against the labels."""
    diff = np.abs(np.asarray(outputs, np.float64).ravel() - np.asarray(reference, np.float64).ravel())
    result = {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()), "samples": int(diff.size)}
    if labels is not None:
        result["auc"] = auc(labels, outputs)
        result["reference_auc"] = auc(labels, reference)
    return result


def spread(values_ms) -> dict:
    """The one latency summary: median with its 10th-90th percentile spread, p99, mean, min and
    the number of runs (values in any unit; dlrmlib passes milliseconds)."""
    v = np.asarray(values_ms, dtype=np.float64)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "mean": float(v.mean()), "min": float(v.min()), "n": int(v.size)}


def latency_summary(seconds: list[float] | np.ndarray, batch_size: int) -> dict:
    """Per-batch latency (ms) and throughput, from the same statistics as `spread`: throughput
    is the batch size over the median latency, as the benchmark and the profiles report it."""
    stats = spread(np.asarray(seconds, dtype=np.float64) * 1e3)
    return {
        "batches": stats["n"],
        "batch_size": int(batch_size),
        "latency_ms_mean": stats["mean"],
        "latency_ms_p50": stats["median"],
        "latency_ms_p90": stats["p90"],
        "latency_ms_p99": stats["p99"],
        "samples_per_s": float(batch_size / (stats["median"] / 1e3)),
    }
