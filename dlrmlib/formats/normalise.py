"""Normalise a DLRM ONNX model into standard ops with static shapes, for one batch size.

A user's model may write embedding bags as `ATen` nodes (the MLPerf file) or as `Loop`s
(newer PyTorch exports); TVM's Relax importer reads neither. `normalise_model` finds every
embedding bag (`dlrmlib.formats.recognise`), rewrites it with `dlrmlib.formats.embedding_bag`'s
standard-op forms, fixes the input shapes to the batch size, folds the shape arithmetic into
constants (`dlrmlib.formats.folding`), and turns integer initializers (index lists, shapes)
into Constant nodes so that only real weights become the library's runtime parameters.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.embedding_bag import EmbeddingBag, NodeMaker, emit_general, emit_one_per_bag
from dlrmlib.formats.folding import fold_shapes, on_graph_alone
from dlrmlib.formats.recognise import find_embedding_bags, node_inputs, unknown_nodes
from dlrmlib.formats.model import DENSE_INPUT, INDICES_INPUT, OFFSETS_INPUT
from dlrmlib.formats.presets import NUM_DENSE, NUM_TABLES

WEIGHT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
BAG_LAYOUTS = ("one_per_bag", "any")
GENERAL_BAG_OPSET = 18  # ScatterElements reduction="max" (emit_general) is opset 18
INLINE_LIMIT = 1 << 20  # external tensors smaller than this are read into the graph


def load_graph(path: str | os.PathLike, inline_small: bool = True) -> onnx.ModelProto:
    """The model's graph without its weights' data (which can be 96 GB), with clear errors for
    a missing, empty, truncated or non-ONNX file; external tensors under INLINE_LIMIT bytes
    are read in unless `inline_small` is false."""
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
    if inline_small:
        _inline_small_tensors(model, path.parent)
    return model


def _inline_small_tensors(model: onnx.ModelProto, model_dir: Path, limit: int = INLINE_LIMIT) -> None:
    """External tensors under `limit` bytes read into the graph: an exporter may put index lists
    and shapes there too, and normalising must see their values. (Read directly: onnx's own
    loader refuses the hard links an experiment holds.)"""
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL or _tensor_bytes(tensor) >= limit:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        file = model_dir / info["location"]
        if not file.is_file():
            continue  # check_external_data says so, in one clear line
        with open(file, "rb") as f:
            f.seek(int(info.get("offset", 0)))
            data = f.read(int(info.get("length", _tensor_bytes(tensor))))
        if len(data) != _tensor_bytes(tensor):
            continue  # truncated: check_external_data says so
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
        tensor.raw_data = data


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


def rewrite_embedding_bags(model: onnx.ModelProto, num_indices: int, num_bags: int, bags: str) -> int:
    """Replace every embedding bag of the graph (in any form `recognise` knows) by standard ops,
    in place; integer initializers become Constant nodes. Each bag takes `num_indices` indices
    into `num_bags` bags. Returns how many bags were rewritten."""
    graph = model.graph
    found = find_embedding_bags(model, num_bags, num_indices)
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
        bag = _with_rows(bag, maker)
        if bags == "one_per_bag":
            emit_one_per_bag(bag, maker)
        else:
            emit_general(bag, maker, num_indices, num_bags, weights[bag.weight][1])
        new_nodes.extend(maker.nodes)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return len(found)


def _with_rows(bag: EmbeddingBag, maker: NodeMaker) -> EmbeddingBag:
    """A probed bag reads row `bag.row` of lS_i/lS_o: gather that row here."""
    if bag.row is None:
        return bag
    def row(name: str) -> str:
        return maker.op("Gather", [name, maker.const(bag.row)], axis=0)

    return replace(bag, indices=row(bag.indices), offsets=row(bag.offsets), row=None)


def _check_interface(graph: onnx.GraphProto, batch_size: int | None = None, per_bag: int = 1) -> None:
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
        if value.name == DENSE_INPUT and batch_size and dims and dims[0] not in (None, batch_size):
            raise DlrmError(f"the model was exported for batch {dims[0]} (its {DENSE_INPUT} is {dims}, no dynamic "
                            f"batch axis); prepare it with batch size {dims[0]}, not {batch_size}")
        if value.name == INDICES_INPUT and batch_size and len(dims) == 2 and dims[1] not in (None, batch_size * per_bag):
            _refuse_ids_per_bag(dims[1], batch_size, per_bag)
        wrong_type = value.type.tensor_type.elem_type != elem_type
        wrong_dims = len(dims) != 2 or any(dims[axis] not in (None, size) for axis, size in fixed.items())
        if wrong_type or wrong_dims:
            raise DlrmError(f"model input {value.name!r} is {helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)} "
                            f"{dims}; the MLPerf DLRM interface needs "
                            f"{helper.tensor_dtype_to_np_dtype(elem_type)} with {fixed} (axis: size)")


def _refuse_ids_per_bag(count: int, batch_size: int, per_bag: int) -> None:
    """A model exported with a fixed index count takes exactly that many ids per table."""
    fits = f"{count // batch_size} per bag" if count % batch_size == 0 else f"not a whole number per bag at batch {batch_size}"
    raise DlrmError(f"the model was exported for {count} ids per table ({INDICES_INPUT} is [{NUM_TABLES}, {count}], no "
                    f"dynamic axis: {fits}); {per_bag} per bag x batch {batch_size} needs {per_bag * batch_size}"
                    + (f"; prepare it with --ids-per-bag {count // batch_size}" if count % batch_size == 0 else ""))


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
        used = {o.name for o in graph.output}.union(*(node_inputs(n) for n in graph.node))
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def _at_least_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model in ONNX opset `opset` when it is older (onnx's version converter, on the graph
    alone): the general bag form scatter-reduces, which needs ScatterElements' `reduction`."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if version >= opset:
        return model
    try:
        return on_graph_alone(model, lambda free: version_converter.convert_version(free, opset))
    except Exception as e:  # the converter's own error types
        raise DlrmError(f"the model is ONNX opset {version}; bags='any' needs opset {opset}, and onnx's version "
                        f"converter failed: {str(e).strip().splitlines()[0][:300] if str(e).strip() else e}") from None


def _check_no_leftovers(graph: onnx.GraphProto) -> None:
    """After the rewrite, no node TVM cannot import may remain: name the first one."""
    leftover = unknown_nodes(graph)
    if leftover:
        first = next(n for n in graph.node if n.op_type in leftover)
        what = _attrs(first).get("operator", b"")
        what = f" (ATen operator {what.decode() if isinstance(what, bytes) else what!r})" if what else ""
        raise DlrmError(f"{first.op_type} node {first.name!r}{what} is not part of an embedding bag dlrmlib "
                        f"recognises (expected ATen embedding_bag, or a Loop computing one); the model has "
                        f"{dict(leftover)} such nodes and TVM cannot import them")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


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
    if indices_per_bag < 1:
        raise DlrmError(f"ids per bag must be at least 1, got {indices_per_bag}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    _check_interface(graph, batch_size, indices_per_bag)
    num_indices = batch_size * indices_per_bag
    if bags == "any":
        out = _at_least_opset(out, GENERAL_BAG_OPSET)
        graph = out.graph
    rewrite_embedding_bags(out, num_indices, batch_size, bags)
    del graph.input[:]
    graph.input.extend(_static_inputs(batch_size, num_indices))
    output = graph.output[0]
    graph.output[0].CopyFrom(helper.make_tensor_value_info(output.name, TensorProto.FLOAT, [batch_size, 1]))
    del graph.value_info[:]
    _drop_dead_nodes(graph)
    _check_no_leftovers(graph)
    # A custom domain (ATen's) is no longer used after the rewrite.
    kept = [o for o in out.opset_import if o.domain in ("", "ai.onnx")]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    out = fold_shapes(out)
    _check_interface(out.graph)
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
