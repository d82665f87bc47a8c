"""Normalise a DLRM ONNX model into standard ops with static shapes, for one batch size.

A user's model may write embedding bags as `ATen` nodes (the MLPerf file) or as `Loop`s
(newer PyTorch exports); TVM's Relax importer reads neither. `normalise_model` finds every
embedding bag, rewrites it with `dlrmlib.formats.embedding_bag`'s standard-op forms, fixes the input
shapes to the batch size, and turns integer initializers (index lists, shapes) into Constant
nodes so that only real weights become the library's runtime parameters.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.embedding_bag import MODES, EmbeddingBag, NodeMaker, emit_general, emit_one_per_bag
from dlrmlib.formats.model import DENSE_INPUT, INDICES_INPUT, OFFSETS_INPUT
from dlrmlib.formats.presets import NUM_DENSE, NUM_TABLES

WEIGHT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
BAG_LAYOUTS = ("one_per_bag", "any")


def load_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """The model's graph without its weights' data (which can be 96 GB), with clear errors for
    a missing, empty, truncated or non-ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise DlrmError(f"ONNX model not found: {path}")
    if path.stat().st_size == 0:
        raise DlrmError(f"ONNX model {path} is empty (0 bytes)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError types
        raise DlrmError(f"{path} is not a readable ONNX model (truncated or another format?): {e}") from None
    if not model.graph.node:
        raise DlrmError(f"{path} parsed as ONNX but has no nodes: it is not an ONNX model, or it is truncated")
    return model


def check_external_data(model: onnx.ModelProto, model_dir: Path) -> list[Path]:
    """Every external-data file exists and is long enough for every tensor stored in it.
    Returns the files, for copying along with the model."""
    needed: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        end = int(info.get("offset", 0)) + int(info.get("length", _tensor_bytes(tensor)))
        needed[info["location"]] = max(needed.get(info["location"], 0), end)
    files = []
    for location, end in needed.items():
        file = model_dir / location
        if not file.is_file():
            raise DlrmError(f"external data file {file} is missing (the model's weights are stored there)")
        if file.stat().st_size < end:
            raise DlrmError(f"external data file {file} is truncated: {file.stat().st_size} bytes, "
                            f"the model needs at least {end}")
        files.append(file)
    return files


def _tensor_bytes(tensor: TensorProto) -> int:
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _find_aten_bag(node: onnx.NodeProto) -> EmbeddingBag | None:
    """`ATen(weight, indices, offsets[, per_sample_weights]) {operator="embedding_bag"}`."""
    attrs = _attrs(node)
    if node.op_type != "ATen" or attrs.get("operator", b"") not in (b"embedding_bag", "embedding_bag"):
        return None
    if len(node.input) > 3 and node.input[3]:
        raise DlrmError(f"ATen embedding_bag {node.name!r} has per-sample weights, which are not supported")
    return EmbeddingBag(weight=node.input[0], indices=node.input[1], offsets=node.input[2],
                        output=node.output[0], mode=MODES[int(attrs.get("mode", 0))],
                        include_last_offset=bool(attrs.get("include_last_offset", 0)))


def _find_loop_bag(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> EmbeddingBag | None:
    """PyTorch's Loop form: the body slices `indices` between `starts[i]` and `ends[i]`,
    gathers rows of an outer weight and reduces them; `starts` is a slice of the offsets,
    with the number of indices appended unless the model includes the last offset."""
    if node.op_type != "Loop":
        return None
    body = _attrs(node)["body"]
    iteration = body.input[0].name
    by_type = {}
    for n in body.node:
        by_type.setdefault(n.op_type, []).append(n)
    slices = by_type.get("Slice", [])
    gathers = by_type.get("Gather", [])
    reduces = [n for op in ("ReduceSum", "ReduceMean", "ReduceMax") for n in by_type.get(op, [])]
    local = {o for n in body.node for o in n.output} | {i.name for i in body.input}
    starts = [g.input[0] for g in gathers if g.input[1] == iteration and g.input[0] not in local]
    row_gathers = [g for g in gathers if g.input[0] not in local and g.input[1] not in {iteration}
                   and any(g.input[1] == s.output[0] for s in slices)]
    if len(reduces) != 1 or not starts or len(row_gathers) != 1 or len(node.output) != 1:
        return None
    picked = next(s for s in slices if s.output[0] == row_gathers[0].input[1])
    starts_producer = producers.get(starts[0])
    if starts_producer is None or starts_producer.op_type != "Slice":
        return None
    offsets, include_last = starts_producer.input[0], True
    concat = producers.get(offsets)
    if concat is not None and concat.op_type == "Concat" and len(concat.input) == 2:
        offsets, include_last = concat.input[0], False
    mode = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max"}[reduces[0].op_type]
    return EmbeddingBag(weight=row_gathers[0].input[0], indices=picked.input[0], offsets=offsets,
                        output=node.output[0], mode=mode, include_last_offset=include_last)


def find_embedding_bags(graph: onnx.GraphProto) -> dict[int, EmbeddingBag]:
    """Node position -> the embedding bag that node computes."""
    producers = {o: n for n in graph.node for o in n.output}
    bags = {}
    for pos, node in enumerate(graph.node):
        bag = _find_aten_bag(node) or _find_loop_bag(node, producers)
        if bag:
            bags[pos] = bag
    return bags


def rewrite_embedding_bags(graph: onnx.GraphProto, num_indices: int, num_bags: int, bags: str) -> int:
    """Replace every embedding bag of the graph (ATen or Loop form) by standard ops, in place;
    integer initializers become Constant nodes. Each bag takes `num_indices` indices into
    `num_bags` bags. Returns how many bags were rewritten."""
    found = find_embedding_bags(graph)
    weights = _weight_shapes(graph)
    new_nodes = _constants_from_initializers(graph)
    for pos, node in enumerate(graph.node):
        bag = found.get(pos)
        if bag is None:
            new_nodes.append(node)
            continue
        if bag.weight not in weights:
            raise DlrmError(f"embedding_bag {node.name!r} reads its table from {bag.weight!r}, "
                            "which is not an initializer of the model")
        maker = NodeMaker(f"embedding_bag/{bag.output}")
        if bags == "one_per_bag":
            emit_one_per_bag(bag, maker)
        else:
            emit_general(bag, maker, num_indices, num_bags, weights[bag.weight][1])
        new_nodes.extend(maker.nodes)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return len(found)


def _check_interface(graph: onnx.GraphProto) -> None:
    names = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    missing = [n for n in (DENSE_INPUT, OFFSETS_INPUT, INDICES_INPUT) if n not in names]
    if missing or len(names) != 3:
        raise DlrmError(f"the model's inputs are {names}; the workflow expects the MLPerf DLRM interface: "
                        f"{DENSE_INPUT} float32 [B,{NUM_DENSE}], {OFFSETS_INPUT} int64 [{NUM_TABLES},B], "
                        f"{INDICES_INPUT} int64 [{NUM_TABLES},L]")
    if len(graph.output) != 1:
        raise DlrmError(f"the model has {len(graph.output)} outputs; the workflow expects one, [B,1]")
    expected = {DENSE_INPUT: (TensorProto.FLOAT, {1: NUM_DENSE}), OFFSETS_INPUT: (TensorProto.INT64, {0: NUM_TABLES}),
                INDICES_INPUT: (TensorProto.INT64, {0: NUM_TABLES})}
    for value in graph.input:
        if value.name not in expected:
            continue
        elem_type, fixed = expected[value.name]
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        wrong_type = value.type.tensor_type.elem_type != elem_type
        wrong_dims = len(dims) != 2 or any(dims[axis] not in (None, size) for axis, size in fixed.items())
        if wrong_type or wrong_dims:
            raise DlrmError(f"model input {value.name!r} is {helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)} "
                            f"{dims}; the MLPerf DLRM interface needs "
                            f"{helper.tensor_dtype_to_np_dtype(elem_type)} with {fixed} (axis: size)")


def _static_inputs(batch_size: int, num_indices: int) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(DENSE_INPUT, TensorProto.FLOAT, [batch_size, NUM_DENSE]),
            helper.make_tensor_value_info(OFFSETS_INPUT, TensorProto.INT64, [NUM_TABLES, batch_size]),
            helper.make_tensor_value_info(INDICES_INPUT, TensorProto.INT64, [NUM_TABLES, num_indices])]


def _constants_from_initializers(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Integer and boolean initializers (index lists, shapes) as Constant nodes: TVM then folds
    them instead of taking them as runtime parameters."""
    nodes = []
    for tensor in list(graph.initializer):
        if tensor.data_type in WEIGHT_TYPES:
            continue
        value = numpy_helper.to_array(tensor)
        nodes.append(helper.make_node("Constant", [], [tensor.name], name=f"const/{tensor.name}",
                                      value=numpy_helper.from_array(value, tensor.name)))
        graph.initializer.remove(tensor)
    return nodes


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes (and initializers) nothing uses any more, such as a rewritten Loop's inputs."""
    while True:
        used = {o.name for o in graph.output}
        for node in graph.node:
            used.update(node.input)
            for attr in node.attribute:  # subgraphs read outer names implicitly
                if attr.type == onnx.AttributeProto.GRAPH:
                    used.update(i for n in attr.g.node for i in n.input)
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def _weight_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in graph.initializer}


def normalise_model(model: onnx.ModelProto, batch_size: int, bags: str = "one_per_bag",
                    indices_per_bag: int = 1) -> onnx.ModelProto:
    """The model rewritten for TVM: standard ops, static shapes for `batch_size`.

    `bags="one_per_bag"` emits the fast path (a plain gather; offsets must be 0..B-1, which the
    runners check); `bags="any"` keeps full embedding_bag semantics for any offsets, with
    `indices_per_bag * batch_size` indices per table.
    """
    if batch_size < 1:
        raise DlrmError(f"batch size must be at least 1, got {batch_size}")
    if bags not in BAG_LAYOUTS:
        raise DlrmError(f"bags must be one of {BAG_LAYOUTS}, got {bags!r}")
    if bags == "one_per_bag" and indices_per_bag != 1:
        raise DlrmError("the one-per-bag fast path needs exactly one index per bag")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    _check_interface(graph)
    num_indices = batch_size * indices_per_bag
    rewrite_embedding_bags(graph, num_indices, batch_size, bags)
    del graph.input[:]
    graph.input.extend(_static_inputs(batch_size, num_indices))
    output = graph.output[0]
    graph.output[0].CopyFrom(helper.make_tensor_value_info(output.name, TensorProto.FLOAT, [batch_size, 1]))
    del graph.value_info[:]
    _drop_dead_nodes(graph)
    leftover = Counter(n.op_type for n in graph.node if n.op_type in ("ATen", "Loop"))
    if leftover:
        raise DlrmError(f"the model has {dict(leftover)} nodes that are not embedding bags in a form "
                        "dlrmlib recognises; TVM cannot import them")
    # A custom domain (ATen's) is no longer used after the rewrite.
    kept = [o for o in out.opset_import if o.domain in ("", "ai.onnx")]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out


def embedding_tables(model: onnx.ModelProto) -> list[int]:
    """Row counts of the tables gathered by the normalised model, in lS_i row order."""
    weights = _weight_shapes(model.graph)
    return [weights[name][0] for name in embedding_table_weights(model)]


def embedding_table_weights(model: onnx.ModelProto) -> list[str]:
    """The initializer each table is gathered from, in lS_i row order."""
    producers = {o: n for n in model.graph.node for o in n.output}
    weights = _weight_shapes(model.graph)
    rows: dict[int, int] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in weights or node.input[1] not in producers:
            continue
        row_pick = producers[node.input[1]]
        if row_pick.op_type == "Gather" and row_pick.input[0] == INDICES_INPUT:
            table = _constant_value(producers.get(row_pick.input[1]))
            if table is not None:
                rows[int(table)] = node.input[0]
    if sorted(rows) != list(range(NUM_TABLES)):
        raise DlrmError(f"could not match the model's embedding tables to the {NUM_TABLES} rows of "
                        f"{INDICES_INPUT} (found tables {sorted(rows)})")
    return [rows[t] for t in range(NUM_TABLES)]


def _constant_value(node: onnx.NodeProto | None):
    if node is None or node.op_type != "Constant":
        return None
    return numpy_helper.to_array(_attrs(node)["value"])
