"""Fold a model's shape arithmetic into constants, with ONNX Runtime's graph optimizer.

Exporters compute shapes at run time: DLRM's `T.view((batch_size, -1, d))` becomes Shape ->
Gather -> Concat -> Reshape, and TVM's importer needs a constant shape there. Once every input
has its static shape, ONNX Runtime's basic-level optimizer (constant folding, which also folds
Shape of a static tensor; redundant-node removal) turns that arithmetic into constants; it
writes the result through `optimized_model_filepath`.

The weights are never read: the optimizer sees a weight-free copy of the graph in which every
float initializer is a graph input of the same shape (so nothing is folded through a weight
and a 96 GB external-data model costs only its graph), and the original initializers, external
data references and all, are put back afterwards. Constants the optimizer made become Constant
nodes, so that only real weights become the library's runtime parameters.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.recognise import node_inputs

WEIGHT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def _weight_free(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, TensorProto]]:
    """A copy whose weights are graph inputs, and the weights by name."""
    free = onnx.ModelProto()
    free.CopyFrom(model)
    weights = {t.name: t for t in model.graph.initializer if t.data_type in WEIGHT_TYPES}
    kept = [t for t in free.graph.initializer if t.name not in weights]
    del free.graph.initializer[:]
    free.graph.initializer.extend(kept)
    free.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                            for t in weights.values())
    return free, weights


def _optimise(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxruntime as ort  # deferred: ~0.3 s to import, and only normalising needs it here

    with tempfile.TemporaryDirectory(prefix="dlrm-fold-") as tmp:
        out = Path(tmp) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's own error types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DlrmError(f"folding the model's shape arithmetic failed: ONNX Runtime cannot load the "
                            f"normalised graph: {first[:300]}") from None
        return onnx.load(str(out))


def on_graph_alone(model: onnx.ModelProto, transform) -> onnx.ModelProto:
    """`transform` applied to a weight-free copy of the model, then the original weights put
    back: a 96 GB model costs only its graph, and no tool can fold through a weight."""
    free, weights = _weight_free(model)
    out = transform(free)
    graph = out.graph
    inputs = [i for i in graph.input if i.name not in weights]
    used = {o.name for o in graph.output}.union(*(node_inputs(n) for n in graph.node))
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(t for name, t in weights.items() if name in used)
    return out


def fold_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its shape arithmetic folded for its (static) input shapes; its weights'
    initializers are the very ones it came with."""
    return on_graph_alone(model, _folded)


def _folded(free: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's folding of a weight-free model; the constants it made become Constant
    nodes (as initializers they would be taken for weights)."""
    folded = _optimise(free)
    graph = folded.graph
    made = list(graph.initializer)
    del graph.initializer[:]
    constants = [helper.make_node("Constant", [], [t.name], name=f"const/{t.name}",
                                  value=numpy_helper.from_array(numpy_helper.to_array(t), t.name)) for t in made]
    nodes = constants + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    del folded.opset_import[:]
    folded.opset_import.extend(free.opset_import)
    folded.ir_version = free.ir_version
    return folded
