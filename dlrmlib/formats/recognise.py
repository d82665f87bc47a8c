"""Find a model's embedding bags by what they compute, not by one exporter's node order.

Exporters write `nn.EmbeddingBag` in many ways: an `ATen` node (MLPerf's file, older PyTorch),
a `Loop` over bags (TorchScript; the bag starts sliced or gathered from the offsets, with or
without the index count appended), a `Loop` carrying a sequence that a `ConcatFromSequence`
stacks (the dynamo exporter, with `If`s for empty bags and `mean`). An ATen node says what it
is in its attributes. Any other candidate (a `Loop`, and what stacks its sequence) is cut out
of the graph with everything it depends on, run by ONNX Runtime on probe inputs (uneven bags,
an empty one, distinct ids in every table, a small probe table in place of the real one,
which is never read) and compared with `embedding_bag_reference` for every table row, mode and
`include_last_offset`: the one that matches is the bag it computes. None matching is an error
that names the node.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.embedding_bag import MODES, EmbeddingBag, embedding_bag_reference

INDICES_INPUT, OFFSETS_INPUT = "lS_i", "lS_o"  # the MLPerf interface (dlrmlib.formats.model)
SEQUENCE_STACKERS = ("ConcatFromSequence",)
PROBE_ROWS = 37  # at least this many rows in the probe table (never the real one)
PROBE_BAGS = 8  # bags per probe when the model's batch is symbolic
TOLERANCE = 1e-5


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def aten_bag(node: onnx.NodeProto) -> EmbeddingBag | None:
    """`ATen(weight, indices, offsets[, per_sample_weights]) {operator="embedding_bag"}`."""
    attrs = _attrs(node)
    if node.op_type != "ATen" or attrs.get("operator", b"") not in (b"embedding_bag", "embedding_bag"):
        return None
    if len(node.input) > 3 and node.input[3]:
        raise DlrmError(f"ATen embedding_bag {node.name!r} has per-sample weights, which are not supported")
    return EmbeddingBag(weight=node.input[0], indices=node.input[1], offsets=node.input[2],
                        output=node.output[0], mode=MODES[int(attrs.get("mode", 0))],
                        include_last_offset=bool(attrs.get("include_last_offset", 0)))


def node_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node reads, including those its subgraphs read from the outer scope."""
    names = set(node.input)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
            names |= {i for n in g.node for i in node_inputs(n)} - local
    return names - {""}


def _slice(graph: onnx.GraphProto, output: str, producers: dict) -> list[onnx.NodeProto]:
    """The nodes `output` depends on, in graph order."""
    needed, stack = set(), [output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(node_inputs(node))
    return [n for n in graph.node if id(n) in needed]


def _gathered(nodes) -> set[str]:
    """Names that some Gather, at any depth, takes its rows from: where a table can be."""
    names = set()
    for node in nodes:
        if node.op_type == "Gather":
            names.add(node.input[0])
        for attr in node.attribute:
            names |= _gathered([n for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)
                                for n in g.node])
    return names


def _candidate_output(node: onnx.NodeProto, consumers: dict) -> str | None:
    """The float tensor a Loop's bag ends in: its one output, or the stack of its sequence."""
    used = [o for o in node.output if o in consumers]
    if len(used) != 1:
        return None
    stackers = [c for c in consumers[used[0]] if c is not None and c.op_type in SEQUENCE_STACKERS]
    return stackers[0].output[0] if stackers else used[0]


class _Probe:
    """Probe inputs shaped like the model's: `num_bags` (+1) offsets per table, `num_indices` ids."""

    def __init__(self, offsets_len: int, num_indices: int, rank: int):
        rng = np.random.default_rng(12345)
        self.rank = rank
        self.tables = 1 if rank == 1 else 26
        # Distinct ids within a table (so no two modes agree on a bag) and across tables (so
        # no two table rows do).
        self.rows = max(PROBE_ROWS, self.tables * num_indices)
        self.indices = rng.permutation(self.rows)[:self.tables * num_indices].reshape(self.tables, num_indices)
        # Ends at num_indices (so it also reads as include_last_offset), one empty bag first,
        # then a bag of two ids (so sum, mean and max differ even when ids are few: spreading
        # 2 ids over 3 bags made every bag hold one, and every mode agree), then the rest spread.
        offsets = np.round(np.linspace(0, num_indices, offsets_len)).astype(np.int64)
        if offsets_len > 2:
            rest = np.linspace(min(2, num_indices), num_indices, offsets_len - 2)
            offsets = np.concatenate([[0, 0], np.round(rest)]).astype(np.int64)
        self.offsets = np.tile(offsets, (self.tables, 1))

    def feeds(self) -> dict:
        squeeze = (lambda a: a[0]) if self.rank == 1 else (lambda a: a)
        return {INDICES_INPUT: squeeze(self.indices), OFFSETS_INPUT: squeeze(self.offsets)}


def _probe_model(model: onnx.ModelProto, nodes, weight: onnx.TensorProto, output: str,
                 probe: _Probe, probe_weight: np.ndarray) -> bytes:
    graph = model.graph
    used = set().union(*(node_inputs(n) for n in nodes))
    initializers = [t for t in graph.initializer if t.name in used and t.name != weight.name]
    external = [t.name for t in initializers if t.data_location == TensorProto.EXTERNAL]
    if external:
        raise DlrmError(f"the embedding bag ending in {output!r} reads {external[0]!r} from external data "
                        "besides its table; dlrmlib cannot tell what it computes")
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, list(array.shape))
              for name, array in probe.feeds().items() if name in used]
    sub = helper.make_graph(nodes, "probe", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                            [*initializers, numpy_helper.from_array(probe_weight, weight.name)])
    return helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version).SerializeToString()


def _run(model_bytes: bytes, feeds: dict) -> np.ndarray:
    import onnxruntime as ort  # deferred: only models with Loop bags need it here

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _matches(out: np.ndarray, probe: _Probe, weight: np.ndarray):
    """(table row, mode, include_last_offset) whose reference equals `out`, over bags that are
    not empty (exporters differ on empty bags; the rewrite gives PyTorch's zeros)."""
    found = []
    for t in range(probe.tables):
        for mode in MODES:
            for last in (False, True):
                ref = embedding_bag_reference(weight, probe.indices[t], probe.offsets[t], mode, last)
                if ref.shape != out.shape:
                    continue
                starts = probe.offsets[t][:len(ref)]
                ends = np.append(probe.offsets[t][1:], len(probe.indices[t]))[:len(ref)]
                full = ends > starts
                if np.allclose(out[full], ref[full], rtol=TOLERANCE, atol=TOLERANCE):
                    found.append((t, mode, last))
    return found


def probed_bag(model: onnx.ModelProto, node: onnx.NodeProto, producers: dict, consumers: dict,
               batch_size: int, num_indices: int) -> EmbeddingBag:
    """The embedding bag a Loop computes, found by running it on probe inputs; a DlrmError
    naming the node when it computes none."""
    graph = model.graph
    expected = ("an embedding bag: one float [bags, dim] output gathered from one table (a 2-D float initializer) "
                f"and rows of {INDICES_INPUT}/{OFFSETS_INPUT}")
    output = _candidate_output(node, consumers)
    nodes = _slice(graph, output, producers) if output else []
    used = set().union(*(node_inputs(n) for n in nodes)) if nodes else set()
    gathered = _gathered(nodes)
    tables = [t for t in graph.initializer if t.name in gathered and len(t.dims) == 2 and t.data_type == TensorProto.FLOAT]
    inputs = {i.name: i for i in graph.input if i.name in used}
    if output is None or len(tables) != 1 or not inputs or not set(inputs) <= {INDICES_INPUT, OFFSETS_INPUT}:
        raise DlrmError(f"{node.op_type} node {node.name!r} is not {expected}: it reads tables "
                        f"{[t.name for t in tables]} and inputs {sorted(inputs)}")
    weight = tables[0]
    probe = _probe_for(graph, inputs, batch_size, num_indices)
    probe_weight = np.random.default_rng(7).normal(size=(probe.rows, int(weight.dims[1]))).astype(np.float32)
    try:
        out = _run(_probe_model(model, nodes, weight, output, probe, probe_weight), probe.feeds())
    except DlrmError:
        raise
    except Exception as e:  # ONNX Runtime's own errors: the node is not something it can run
        raise DlrmError(f"{node.op_type} node {node.name!r} is not {expected}: ONNX Runtime cannot run it "
                        f"on probe inputs ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
    found = _matches(np.asarray(out), probe, probe_weight)
    if len({(t, last) for t, _, last in found}) == 1 and probe.indices.shape[1] <= 1:
        found = found[:1]  # with at most one id there is no bag of two: every mode computes the same
    if len(found) != 1:
        raise DlrmError(f"{node.op_type} node {node.name!r} is not {expected}: on probe inputs its output "
                        f"{list(np.shape(out))} matches {len(found)} embedding_bag forms (table row, mode, "
                        f"include_last_offset) instead of one")
    t, mode, last = found[0]
    return EmbeddingBag(weight=weight.name, indices=INDICES_INPUT, offsets=OFFSETS_INPUT, output=output,
                        mode=mode, include_last_offset=last, row=None if probe.rank == 1 else t)


def _probe_for(graph, inputs: dict, batch_size: int, num_indices: int) -> _Probe:
    """Probe shapes: the model's declared input shapes where they are fixed."""
    def dims(name, fallback):
        value = inputs.get(name) or next((i for i in graph.input if i.name == name), None)
        if value is None:
            return [fallback]
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    offsets, indices = dims(OFFSETS_INPUT, batch_size), dims(INDICES_INPUT, num_indices)
    # A symbolic size is probed at a size that tells the forms apart, whatever the batch.
    return _Probe(offsets[-1] or PROBE_BAGS, indices[-1] or 2 * PROBE_BAGS, len(indices))


def find_embedding_bags(model: onnx.ModelProto, batch_size: int, num_indices: int) -> dict[int, EmbeddingBag]:
    """Node position -> the embedding bag whose output that node writes (ATen by its attributes;
    Loop forms by what they compute)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {o.name: [None] for o in graph.output}  # None: the graph's output
    for n in graph.node:
        for i in node_inputs(n):
            consumers.setdefault(i, []).append(n)
    bags = {}
    position = {id(n): p for p, n in enumerate(graph.node)}
    for node in graph.node:
        bag = aten_bag(node)
        if bag is None and node.op_type == "Loop":
            bag = probed_bag(model, node, producers, consumers, batch_size, num_indices)
        if bag is not None:
            bags[position[id(producers[bag.output])]] = bag
    return bags


def unknown_nodes(graph: onnx.GraphProto) -> Counter:
    """Op type -> count of the nodes TVM's importer cannot take that a bag rewrite should have
    removed (control flow, sequences, ATen)."""
    return Counter(n.op_type for n in graph.node
                   if n.op_type in ("ATen", "Loop", "If", "Scan") or n.op_type.startswith("Sequence")
                   or n.op_type in SEQUENCE_STACKERS)
