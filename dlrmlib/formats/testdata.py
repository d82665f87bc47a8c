"""The test data folder: Criteo-like inputs, labels and reference outputs (see docs/formats.md).

Synthetic inputs follow Criteo's shape: dense features are heavy-tailed counts, log-transformed
as DLRM does; each table's ids are skewed (a few hot rows take most lookups). Reference outputs
come from ONNX Runtime, an independent runtime, on the same normalised model; labels are drawn
from the reference scores so that AUC means something even for random weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.files import atomic_dir, read_json, write_json, write_npy
from dlrmlib.formats.presets import NUM_DENSE, NUM_TABLES

ID_POLICIES = ("reject", "modulo")
# Multi-hot bags: each sample's bag of table t holds K ids. The bound keeps K x batch ids per
# table (each gathered as a [K x B, dim] block in the normalised model) well inside memory;
# MLPerf's multi-hot DLRMv2 data has at most 100 ids in a bag.
MAX_IDS_PER_BAG = 1024
# The calibration slice: the test data's first samples calibrate a statically quantised build's
# activation scales (ONNX Runtime's quantize_static, OpenVINO's NNCF, TVM's --calibration
# static) and never score accuracy; every AUC ratio is taken over the samples after it.
CALIBRATION_SAMPLES = 256


def calibration_samples(n: int) -> int:
    """How many of `n` test samples form the calibration slice (the first ones):
    CALIBRATION_SAMPLES, and never more than a quarter of the data."""
    return min(CALIBRATION_SAMPLES, n // 4)


def ids_per_bag(sparse: np.ndarray) -> int:
    """How many ids each bag holds: `sparse` is [N, 26] (one) or [N, 26, K]."""
    return 1 if sparse.ndim == 2 else int(sparse.shape[2])


@dataclass
class TestData:
    __test__ = False  # not a pytest test class
    dense: np.ndarray      # float32 [N, 13]
    sparse: np.ndarray     # int64 [N, 26] (one id per bag) or [N, 26, K] (K ids per bag)
    labels: np.ndarray     # float32 [N]
    reference: np.ndarray | None = None  # float32 [N]

    def __len__(self) -> int:
        return len(self.dense)

    def head(self, n: int) -> "TestData":
        return TestData(self.dense[:n], self.sparse[:n], self.labels[:n],
                        None if self.reference is None else self.reference[:n])

    def tail(self, start: int) -> "TestData":
        return TestData(self.dense[start:], self.sparse[start:], self.labels[start:],
                        None if self.reference is None else self.reference[start:])

    def calibration(self) -> "TestData":
        """The calibration slice (calibration_samples): for calibrating, never for scoring."""
        return self.head(calibration_samples(len(self)))

    def scored(self) -> "TestData":
        """The samples after the calibration slice: the ones every AUC ratio is taken over."""
        return self.tail(calibration_samples(len(self)))


def synthesize_inputs(samples: int, tables: list[int], seed: int = 0,
                      per_bag: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Criteo-like dense features (log(1 + heavy-tailed counts)) and skewed categorical ids:
    [N, 26] with one id per bag, [N, 26, K] with `per_bag` = K > 1 (each drawn alike)."""
    if samples < 1:
        raise DlrmError(f"samples must be at least 1, got {samples}")
    if not 1 <= per_bag <= MAX_IDS_PER_BAG:
        raise DlrmError(f"ids per bag must be from 1 to {MAX_IDS_PER_BAG}, got {per_bag}")
    rng = np.random.default_rng(seed)
    counts = np.floor(rng.lognormal(mean=1.0, sigma=1.6, size=(samples, NUM_DENSE)))
    counts[rng.random((samples, NUM_DENSE)) < 0.2] = 0  # Criteo's many missing/zero counts
    dense = np.log1p(counts).astype(np.float32)
    sparse = np.empty((samples, NUM_TABLES, per_bag), dtype=np.int64)
    for t, rows in enumerate(tables):
        # Rank ~ rows ** u (log-uniform, Zipf-like), scattered over the table by a fixed
        # multiplicative hash so that hot rows are not all at the start.
        rank = np.floor(np.power(float(rows), rng.random((samples, per_bag)))).astype(np.int64) - 1
        sparse[:, t] = (rank * 2654435761 + t) % rows
    return dense, sparse[:, :, 0] if per_bag == 1 else sparse


def draw_labels(scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """Clicks drawn with a probability that rises with the reference score's rank (CTR ~25%)."""
    rng = np.random.default_rng(seed + 1)
    ranks = np.argsort(np.argsort(scores.ravel())) / max(len(scores) - 1, 1)
    probability = 1.0 / (1.0 + np.exp(-(6.0 * ranks - 4.5)))
    return (rng.random(len(scores)) < probability).astype(np.float32)


def check_inputs(dense: np.ndarray, sparse: np.ndarray, tables: list[int], ids: str = "reject",
                 source: str = "test data") -> np.ndarray:
    """Shapes, dtypes and values a kernel can take: no NaN or inf dense values, every id within
    its table (TVM's gather does no bounds check and would read out of bounds). Returns the
    ids, taken modulo the table size when `ids="modulo"` (the MLPerf convention)."""
    if ids not in ID_POLICIES:
        raise DlrmError(f"ids must be one of {ID_POLICIES}, got {ids!r}")
    if dense.ndim != 2 or dense.shape[1] != NUM_DENSE:
        raise DlrmError(f"{source}: dense features have shape {list(dense.shape)}, expected [N, {NUM_DENSE}]")
    if sparse.ndim not in (2, 3) or sparse.shape[1] != NUM_TABLES:
        raise DlrmError(f"{source}: categorical ids have shape {list(sparse.shape)}, expected [N, {NUM_TABLES}] "
                        f"(one id per bag) or [N, {NUM_TABLES}, K] (K ids per bag)")
    if len(dense) != len(sparse):
        raise DlrmError(f"{source}: {len(dense)} dense rows but {len(sparse)} categorical rows")
    if dense.dtype != np.float32:
        raise DlrmError(f"{source}: dense features are {dense.dtype}, expected float32")
    if not np.issubdtype(sparse.dtype, np.integer):
        raise DlrmError(f"{source}: categorical ids are {sparse.dtype}, expected int64")
    bad = ~np.isfinite(dense)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DlrmError(f"{source}: dense feature {col} of sample {row} is {dense[row, col]} "
                        f"({int(bad.sum())} non-finite values in all)")
    rows = np.asarray(tables, dtype=np.int64)
    if len(rows) != NUM_TABLES:
        raise DlrmError(f"expected {NUM_TABLES} table sizes, got {len(rows)}")
    sparse = sparse.astype(np.int64, copy=False)
    rows = rows.reshape((1, NUM_TABLES) + (1,) * (sparse.ndim - 2))  # every id of a bag against its table
    if ids == "modulo":
        return np.mod(sparse, rows)
    bad = (sparse < 0) | (sparse >= rows)
    if bad.any():
        sample, table = np.argwhere(bad)[0][:2]
        rows = rows.ravel()
        raise DlrmError(f"{source}: id {sparse[bad][0]} of sample {sample} is out of range for table "
                        f"{table} with {rows[table]} rows ({int(bad.sum())} bad ids in all); "
                        "use ids='modulo' for the MLPerf convention of taking ids modulo the table size")
    return sparse


def write_test_data(folder: Path, data: TestData, meta: dict) -> Path:
    """The folder, written atomically."""
    with atomic_dir(folder) as tmp:
        write_npy(tmp / "dense.npy", data.dense.astype(np.float32))
        write_npy(tmp / "sparse.npy", data.sparse.astype(np.int64))
        write_npy(tmp / "labels.npy", data.labels.astype(np.float32))
        if data.reference is not None:
            write_npy(tmp / "reference.npy", data.reference.astype(np.float32).ravel())
        write_json(tmp / "meta.json", {"samples": len(data), "ids_per_bag": ids_per_bag(data.sparse), **meta})
    return folder


def _ndim(path: Path) -> int:
    """The dimension count in a .npy file's header (0 when it cannot be read: _load_npy says why)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).ndim
    except (ValueError, OSError, EOFError):
        return 0


def _load_npy(path: Path, dtype, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise DlrmError(f"test data file missing: {path}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DlrmError(f"{path} is not a readable .npy file (truncated?): {e}") from None
    if array.ndim != ndim or array.dtype != np.dtype(dtype):
        raise DlrmError(f"{path} holds {array.dtype} {list(array.shape)}, expected {np.dtype(dtype)} "
                        f"with {ndim} dimension(s)")
    return np.asarray(array)


def read_test_data(folder: str | Path, tables: list[int] | None = None, ids: str = "reject",
                   per_bag: int | None = None) -> TestData:
    """Read and check a test data folder; with `tables`, also check ids against them; with
    `per_bag`, check that every bag holds that many ids (what the model was made for)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DlrmError(f"test data folder not found: {folder}")
    sparse_path = folder / "sparse.npy"
    sparse = _load_npy(sparse_path, np.int64, 3 if _ndim(sparse_path) == 3 else 2)
    if per_bag is not None and ids_per_bag(sparse) != per_bag:
        raise DlrmError(f"{sparse_path} holds {ids_per_bag(sparse)} id(s) per bag ({list(sparse.shape)}), but the "
                        f"model takes {per_bag}; prepare the test data with --ids-per-bag {per_bag}")
    data = TestData(dense=_load_npy(folder / "dense.npy", np.float32, 2), sparse=sparse,
                    labels=_load_npy(folder / "labels.npy", np.float32, 1),
                    reference=_load_npy(folder / "reference.npy", np.float32, 1)
                    if (folder / "reference.npy").exists() else None)
    n = len(data.dense)
    for name, array in (("labels.npy", data.labels), ("reference.npy", data.reference)):
        if array is not None and len(array) != n:
            raise DlrmError(f"{folder / name} has {len(array)} rows, dense.npy has {n}")
    check_labels(data.labels, folder / "labels.npy")
    data.sparse = check_inputs(data.dense, data.sparse, tables or [np.iinfo(np.int64).max] * NUM_TABLES,
                               ids, source=str(folder))
    return data


def check_labels(labels: np.ndarray, source) -> np.ndarray:
    """Labels are clicks: 0 or 1 (an AUC over anything else is meaningless, and NaN breaks it)."""
    bad = ~np.isin(labels, (0.0, 1.0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DlrmError(f"{source}: labels must be 0 or 1; {int(bad.sum())} are not (the first, sample {first}, is "
                        f"{labels[first]})")
    return labels


def read_test_meta(folder: Path) -> dict:
    return read_json(Path(folder) / "meta.json")


def read_mlperf_day23(path: str | Path, tables: list[int], ids: str = "modulo",
                      samples: int | None = None) -> TestData:
    """User data in the MLPerf/DLRM Criteo Terabyte layout: an `.npz` with `X_int` (raw dense
    counts), `X_cat` (ids) and `y` (labels), as `day_23_reordered.npz`; or a folder of
    `*_int.npy` (raw counts) or `*_dense.npy` (already log-transformed), `*_sparse.npy` (or
    `*_cat.npy`) and `*_labels.npy`. Dense counts are
    log-transformed as DLRM does (negatives count as 0); ids are taken modulo the table sizes
    by default, as MLPerf does with its 40M-row cap."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = {"X_int", "X_cat", "y"} - set(npz.files)
                if missing:
                    raise DlrmError(f"{path} lacks {sorted(missing)}; it holds {npz.files}")
                raw, cat, y = (npz[k][:samples] for k in ("X_int", "X_cat", "y"))
        except (ValueError, OSError, EOFError) as e:
            raise DlrmError(f"{path} is not a readable .npz file: {e}") from None
    elif path.is_dir():
        def one(*suffixes):
            for suffix in suffixes:
                found = sorted(path.glob(f"*{suffix}.npy"))
                if found:
                    return suffix, np.load(found[0], mmap_mode="r", allow_pickle=False)[:samples]
            raise DlrmError(f"{path} has no *{suffixes[0]}.npy file")
        kind, raw = one("_int", "_dense")
        (_, cat), (_, y) = one("_sparse", "_cat"), one("_labels", "_y")
        if kind == "_dense":  # already log-transformed
            raw = np.expm1(np.asarray(raw, dtype=np.float64))
    else:
        raise DlrmError(f"MLPerf data not found (expected an .npz file or a folder of .npy files): {path}")
    dense = np.log1p(np.maximum(np.asarray(raw, dtype=np.float64), 0)).astype(np.float32)
    sparse = check_inputs(dense, np.asarray(cat).astype(np.int64), tables, ids, source=str(path))
    labels = check_labels(np.asarray(y, dtype=np.float32).ravel(), path)
    return TestData(dense=dense, sparse=sparse, labels=labels)
