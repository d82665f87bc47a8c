"""embedding_bag: its numpy reference, the ways exporters write it in ONNX, and the
standard-op forms the rest of the workflow uses.

PyTorch's `nn.EmbeddingBag(mode="sum")` reduces, for each bag b, the rows
`weight[indices[offsets[b]:offsets[b+1]]]` (the last bag runs to the end of `indices`;
with `include_last_offset` the offsets carry that end themselves). ONNX has no such op:
the MLPerf file writes it as an `ATen` node, newer PyTorch exports as a `Loop` over bags.
TVM imports neither, so `dlrmlib.formats.normalise` rewrites both into the forms emitted here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

MODES = ("sum", "mean", "max")


def embedding_bag_reference(weight: np.ndarray, indices: np.ndarray, offsets: np.ndarray,
                            mode: str = "sum", include_last_offset: bool = False) -> np.ndarray:
    """PyTorch's embedding_bag in numpy, bag by bag: the truth the rewrites are checked against.
    Empty bags give zeros, as in PyTorch."""
    offsets = np.asarray(offsets, dtype=np.int64)
    ends = offsets[1:] if include_last_offset else np.append(offsets[1:], len(indices))
    starts = offsets[:-1] if include_last_offset else offsets
    out = np.zeros((len(starts), weight.shape[1]), dtype=weight.dtype)
    for b, (start, end) in enumerate(zip(starts, ends)):
        rows = weight[indices[start:end]]
        if len(rows):
            out[b] = {"sum": np.sum, "mean": np.mean, "max": np.max}[mode](rows, axis=0)
    return out


@dataclass
class EmbeddingBag:
    """One embedding_bag found in (or to be written into) a graph, by tensor names."""

    weight: str
    indices: str
    offsets: str
    output: str
    mode: str = "sum"
    include_last_offset: bool = False
    row: int | None = None  # set: `indices`/`offsets` are whole [T, ...] inputs; the bag reads this row


class NodeMaker:
    """Makes nodes with unique, readable names under one prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[NodeProto] = []
        self._count = 0

    def tmp(self, label: str) -> str:
        self._count += 1
        return f"{self.prefix}/{label}_{self._count}"

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.tmp(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.tmp(op_type), **attrs))
        return output

    def const(self, value, dtype=np.int64, label: str = "const") -> str:
        """A Constant node, not an initializer: initializers become runtime parameters in TVM."""
        out = self.tmp(label)
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=self.tmp("Constant"), value=tensor))
        return out


def emit_one_per_bag(bag: EmbeddingBag, maker: NodeMaker) -> None:
    """The fast path: with one index per bag (offsets 0..B-1) the bag is a plain gather.
    The callers check the offsets before they run a library built this way."""
    maker.op("Gather", [bag.weight, bag.indices], bag.output, axis=0)


def emit_general(bag: EmbeddingBag, maker: NodeMaker, num_indices: int, num_bags: int,
                 dim: int, dtype: int = TensorProto.FLOAT) -> None:
    """Any offsets, static shapes: gather every index's row, give each index its bag number
    (a cumulative sum of bag starts, so empty bags are skipped), then scatter-reduce rows into
    their bags. Costs O(indices x dim), unlike a one-hot matmul."""
    np_dtype = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
                TensorProto.FLOAT16: np.float16}[dtype]
    starts = bag.offsets
    if bag.include_last_offset:  # the last offset only closes the last bag
        starts = maker.op("Slice", [bag.offsets, maker.const([0]), maker.const([num_bags]), maker.const([0])])
    rows = maker.op("Gather", [bag.weight, bag.indices], axis=0)
    # marks[j] = how many bags start at index j; a slot past the end takes starts == num_indices.
    marks = maker.op("ScatterElements", [maker.const(np.zeros(num_indices + 1)), starts,
                                         maker.const(np.ones(num_bags))], axis=0, reduction="add")
    bag_of = maker.op("CumSum", [marks, maker.const(0)])
    bag_of = maker.op("Slice", [bag_of, maker.const([0]), maker.const([num_indices]), maker.const([0])])
    bag_of = maker.op("Sub", [bag_of, maker.const([1])])
    bag_of = maker.op("Unsqueeze", [bag_of, maker.const([1])])
    bag_of = maker.op("Expand", [bag_of, maker.const([num_indices, dim])])
    if bag.mode == "max":
        # Start from -inf so negative rows win; bags that stay at -inf were empty: zero them.
        init = maker.const(np.full((num_bags, dim), -np.inf), dtype=np_dtype)
        reduced = maker.op("ScatterElements", [init, bag_of, rows], axis=0, reduction="max")
        empty = maker.op("IsInf", [reduced], detect_positive=0)
        maker.op("Where", [empty, maker.const(np.zeros(1), dtype=np_dtype), reduced], bag.output)
        return
    zeros = maker.const(np.zeros((num_bags, dim)), dtype=np_dtype)
    if bag.mode == "sum":
        maker.op("ScatterElements", [zeros, bag_of, rows], bag.output, axis=0, reduction="add")
        return
    summed = maker.op("ScatterElements", [zeros, bag_of, rows], axis=0, reduction="add")
    counts = maker.op("ScatterElements", [maker.const(np.zeros((num_bags, 1)), dtype=np_dtype),
                                          maker.op("Slice", [bag_of, maker.const([0]), maker.const([1]),
                                                             maker.const([1])]),
                                          maker.const(np.ones((num_indices, 1)), dtype=np_dtype)],
                      axis=0, reduction="add")
    counts = maker.op("Max", [counts, maker.const(np.ones(1), dtype=np_dtype)])
    maker.op("Div", [summed, counts], bag.output)


def emit_aten(bag: EmbeddingBag, maker: NodeMaker, domain: str = "") -> None:
    """As the MLPerf file writes it: an ATen node with PyTorch's four outputs."""
    extra = [maker.tmp(name) for name in ("offset2bag", "bag_size", "max_indices")]
    maker.nodes.append(helper.make_node(
        "ATen", [bag.weight, bag.indices, bag.offsets], [bag.output, *extra],
        name=maker.tmp("ATen"), domain=domain, operator="embedding_bag",
        mode=MODES.index(bag.mode), scale_grad_by_freq=0, sparse=1,
        include_last_offset=int(bag.include_last_offset)))


def emit_loop(bag: EmbeddingBag, maker: NodeMaker) -> None:
    """As PyTorch's TorchScript exporter writes it (opset 11 and later): a Loop over bags,
    each iteration slicing its indices, gathering their rows and reducing them."""
    offsets = bag.offsets
    if not bag.include_last_offset:
        indices_len = maker.op("Unsqueeze", [maker.op("Size", [bag.indices]), maker.const([0])])
        offsets = maker.op("Concat", [bag.offsets, indices_len], axis=0)
    big = np.iinfo(np.int64).max
    starts = maker.op("Slice", [offsets, maker.const([0]), maker.const([big]), maker.const([0]), maker.const([1])])
    ends = maker.op("Slice", [offsets, maker.const([1]), maker.const([big]), maker.const([0]), maker.const([1])])
    trip_count = maker.op("Size", [ends])
    cond = maker.op("Cast", [maker.const(1)], to=TensorProto.BOOL)

    body = NodeMaker(maker.prefix + "/loop")
    it, cond_in = body.tmp("i"), body.tmp("cond")
    start = body.op("Unsqueeze", [body.op("Gather", [starts, it], axis=0), body.const([0])])
    end = body.op("Unsqueeze", [body.op("Gather", [ends, it], axis=0), body.const([0])])
    picked = body.op("Slice", [bag.indices, start, end, body.const([0])])
    rows = body.op("Gather", [bag.weight, picked], axis=0)
    reduce_op = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax"}[bag.mode]
    reduced = body.op(reduce_op, [rows, body.const([0])], keepdims=0)
    cond_out = body.op("Identity", [cond_in])
    graph = helper.make_graph(
        body.nodes, "embedding_bag_body",
        [helper.make_tensor_value_info(it, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info(reduced, TensorProto.FLOAT, None)])
    maker.nodes.append(helper.make_node("Loop", [trip_count, cond], [bag.output],
                                        name=maker.tmp("Loop"), body=graph))


EMITTERS = {"aten": emit_aten, "loop": emit_loop}
