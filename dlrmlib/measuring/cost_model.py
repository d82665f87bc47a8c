"""What a kernel is for and what it costs: its DLRM bucket (embedding gather, bottom MLP, ...)
and its FLOPs and bytes from argument shapes, the same rules for every runtime's profile.

A kernel's bucket comes from what it touches, in this order: a concatenation by name; the
weights it reads (by parameter name: `emb_l.*`, `bot_l.*`, `top_l.*`, as DLRM and the MLPerf
file name them); the model input it reads; else the bucket of the kernel that produced its
input (a ReLU after a bottom-MLP matmul is bottom MLP). Work that consumes the first
concatenation is the dot interaction, except the top MLP's first (2-D) matmul.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from dlrmlib.formats.model import DENSE_INPUT, INDICES_INPUT, OFFSETS_INPUT

EMBEDDING, BOTTOM, INTERACTION, CONCAT, TOP, OTHER = (
    "embedding gather", "bottom MLP", "interaction", "concatenation", "top MLP", "other")
BUCKETS = (EMBEDDING, BOTTOM, INTERACTION, CONCAT, TOP, OTHER)
INPUT_BUCKETS = {DENSE_INPUT: BOTTOM, INDICES_INPUT: EMBEDDING, OFFSETS_INPUT: EMBEDDING}

_MATMUL = re.compile(r"matmul|dense|gemm|conv", re.IGNORECASE)
_GATHER = re.compile(r"take|gather|embedding", re.IGNORECASE)
# Element-wise steps a fused kernel's name lists (TVM: fused_matmul_add_relu; ORT: Relu).
_ELEMENTWISE = {"add", "relu", "sigmoid", "multiply", "subtract", "divide", "where", "less", "greater",
                "maximum", "minimum", "exp", "tanh", "mul", "sub", "div", "clip", "cast", "erf"}


@dataclass(frozen=True)
class TensorInfo:
    """A kernel argument as the cost model sees it."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize

    @property
    def is_integer(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.integer)


def param_bucket(name: str, shape=None, tables: list[int] | None = None) -> str:
    """The bucket of a weight, by its DLRM name; a table-shaped weight of another name is an
    embedding table."""
    if name.startswith("emb_l."):
        return EMBEDDING
    if name.startswith("bot_l."):
        return BOTTOM
    if name.startswith("top_l."):
        return TOP
    if shape is not None and tables and len(shape) == 2 and shape[0] in tables:
        return EMBEDDING
    return OTHER


def is_matmul(op: str) -> bool:
    return bool(_MATMUL.search(op))


def is_gather(op: str) -> bool:
    return bool(_GATHER.search(op)) and not is_matmul(op)


def inherited_bucket(producer: str, op: str, first_input: TensorInfo | None) -> str:
    """The bucket a kernel takes from its input's producer: work on the concatenated vectors
    is the interaction, except the top MLP's 2-D matmul on the second concatenation."""
    if producer == CONCAT:
        if is_matmul(op) and first_input is not None and len(first_input.shape) == 2:
            return TOP
        return INTERACTION
    return producer


def interaction_shape(tensors: list[TensorInfo], num_vectors: int) -> bool:
    """A non-batch dimension of 27 vectors, 27 x 27 products or their 351 pairs (MLPerf sizes)."""
    marks = {num_vectors, num_vectors * num_vectors, num_vectors * (num_vectors - 1) // 2}
    return any(d in marks for t in tensors for d in t.shape[1:])


def classify(op: str, params: list[str], model_inputs: list[str], producers: list[str],
             tensors: list[TensorInfo], num_vectors: int, tables: list[int] | None = None) -> str:
    """One kernel's bucket (see the module docstring for the rules and their order)."""
    if "concat" in op.lower():
        return CONCAT
    if op.lower().startswith("interaction_"):
        return INTERACTION  # dlrmlib.schedules' fused gather + interaction + concatenation
    for name in params:
        bucket = param_bucket(name, tables=tables)
        if bucket != OTHER:
            return bucket
    for name in model_inputs:
        if name in INPUT_BUCKETS:
            return INPUT_BUCKETS[name]
    first = tensors[0] if tensors else None
    for producer in producers:
        if producer != OTHER:
            return inherited_bucket(producer, op, first)
    if tensors and all(t.is_integer for t in tensors):
        return EMBEDDING  # index plumbing: every integer tensor of a DLRM feeds a gather
    if tensors and interaction_shape(tensors, num_vectors):
        return INTERACTION
    return OTHER


def elementwise_steps(op: str) -> int:
    """How many element-wise steps a (fused) kernel's name lists."""
    words = re.split(r"[_\W]+", re.sub(r"\d+", "", op.lower()))
    return sum(w in _ELEMENTWISE for w in words) + ("fusedgemm" in op.lower())  # FusedGemm: bias + activation


def kernel_cost(op: str, inputs: list[TensorInfo], outputs: list[TensorInfo],
                tables: frozenset[int] = frozenset()) -> tuple[int, int]:
    """(FLOPs, bytes) of one call from its shapes. GEMM: 2*M*N*K (+1 per output element per
    fused element-wise step). Gather: the rows read (not the whole table), the indices and the
    output. Otherwise every input and output byte once (compulsory traffic), except that an
    embedding table (`tables`: input positions) counts only one row per sample."""
    out_elems = sum(t.numel for t in outputs)
    out_bytes = sum(t.nbytes for t in outputs)
    if tables and outputs and not is_gather(op):
        rows = outputs[0].shape[0] if outputs[0].shape else 1
        inputs = [TensorInfo((min(rows, t.shape[0]), *t.shape[1:]), t.dtype) if i in tables else t
                  for i, t in enumerate(inputs)]
    if outputs and all(t.is_integer for t in outputs) and not is_gather(op):
        return 0, sum(t.nbytes for t in inputs) + out_bytes  # index arithmetic is not floating point
    if is_matmul(op) and inputs and outputs:
        k = inputs[0].shape[-1] if inputs[0].shape else 1
        flops = 2 * out_elems * k + elementwise_steps(op) * out_elems
        return flops, sum(t.nbytes for t in inputs) + out_bytes
    if is_gather(op) and inputs:
        indices = sum(t.nbytes for t in inputs[1:])
        return 0, out_bytes + indices + out_bytes  # rows read ~ output size
    return elementwise_steps(op) * out_elems, sum(t.nbytes for t in inputs) + out_bytes
