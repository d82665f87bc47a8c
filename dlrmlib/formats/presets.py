"""DLRM architectures: the MLPerf Inference model and its smaller relatives.

Every preset has the MLPerf interface (13 dense features, 26 embedding tables); they differ
in table sizes and, for `tiny` only, in widths.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from dlrmlib.core.errors import DlrmError

NUM_DENSE = 13
NUM_TABLES = 26

# Criteo Kaggle row counts (the DLRM repository's day-split Kaggle data set).
KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
# Criteo Terabyte row counts as MLPerf Inference uses them (ids capped at 40M rows).
TERABYTE_ROWS = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346,
    10, 2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)
# Small, all-different sizes so that a mixed-up table order shows in tests.
TINY_ROWS = tuple(40 + 7 * k for k in range(NUM_TABLES))


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a DLRM: table row counts and layer widths (biases and ReLUs implied)."""

    table_rows: tuple[int, ...]
    embedding_dim: int = 128
    bottom_mlp: tuple[int, ...] = (512, 256, 128)  # output widths; input is NUM_DENSE
    top_mlp: tuple[int, ...] = (1024, 1024, 512, 256, 1)  # output widths; sigmoid at the end

    def __post_init__(self):
        if len(self.table_rows) != NUM_TABLES:
            raise DlrmError(f"a DLRM here has {NUM_TABLES} tables, got {len(self.table_rows)} row counts")
        if any(int(r) < 1 for r in self.table_rows):
            raise DlrmError(f"every table needs at least one row, got {list(self.table_rows)}")
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise DlrmError(
                f"the bottom MLP must end at the embedding dimension {self.embedding_dim}, "
                f"it ends at {self.bottom_mlp[-1]}")
        if self.top_mlp[-1] != 1:
            raise DlrmError(f"the top MLP must end with one output, it ends at {self.top_mlp[-1]}")

    @property
    def num_vectors(self) -> int:
        """Vectors in the interaction: the bottom MLP output plus one per table."""
        return NUM_TABLES + 1

    @property
    def num_pairs(self) -> int:
        """Strictly-lower-triangle pairs of the dot interaction (351 for MLPerf)."""
        n = self.num_vectors
        return n * (n - 1) // 2

    @property
    def top_input_width(self) -> int:
        """Width of the concatenation fed to the top MLP (479 for MLPerf)."""
        return self.embedding_dim + self.num_pairs

    @property
    def embedding_bytes(self) -> int:
        return sum(self.table_rows) * self.embedding_dim * 4

    def flops_per_sample(self) -> int:
        """Multiply-adds count twice: the MLPs and the interaction's dot products."""
        widths = [NUM_DENSE, *self.bottom_mlp]
        flops = sum(2 * a * b for a, b in zip(widths, widths[1:]))
        widths = [self.top_input_width, *self.top_mlp]
        flops += sum(2 * a * b for a, b in zip(widths, widths[1:]))
        n = self.num_vectors
        return flops + 2 * n * n * self.embedding_dim

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(TINY_ROWS, embedding_dim=16, bottom_mlp=(32, 16), top_mlp=(64, 32, 1)),
    "small": ModelConfig((100_000,) * NUM_TABLES),
    "kaggle": ModelConfig(KAGGLE_ROWS),
    "terabyte": ModelConfig(TERABYTE_ROWS),
}


def preset_config(name: str, table_rows: list[int] | int | None = None) -> ModelConfig:
    """The preset's architecture, optionally with other table sizes (one count for all tables,
    or 26 counts)."""
    if name not in PRESETS:
        raise DlrmError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]
    if table_rows is None:
        return config
    if isinstance(table_rows, int):
        table_rows = [table_rows] * NUM_TABLES
    return replace(config, table_rows=tuple(int(r) for r in table_rows))
