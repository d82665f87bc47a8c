"""Generate a DLRM ONNX model with the MLPerf Inference architecture and interface.

Inputs `input.1` float32 [B, 13], `lS_o` int64 [26, B] (offsets), `lS_i` int64 [26, L]
(indices); output `pred` float32 [B, 1]. Weights are deterministic in the seed and are
written table by table, so a 96 GB model never needs 96 GB of memory.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.embedding_bag import EMITTERS, EmbeddingBag, NodeMaker
from dlrmlib.formats.presets import NUM_DENSE, NUM_TABLES, ModelConfig

OPSET = 18
DENSE_INPUT, OFFSETS_INPUT, INDICES_INPUT, OUTPUT = "input.1", "lS_o", "lS_i", "pred"
EXTERNAL_THRESHOLD = 1 << 20  # tensors of 1 MiB and more go to external data
ALIGN = 4096  # external data offsets are page-aligned so the data can be mapped
ROWS_PER_CHUNK = 1 << 18  # rows generated at a time for a big table


def interaction_pairs(num_vectors: int) -> np.ndarray:
    """Flat indices i * n + j of the strictly-lower-triangle pairs (j < i), in DLRM's order."""
    return np.array([i * num_vectors + j for i in range(num_vectors) for j in range(i)], dtype=np.int64)


class _WeightWriter:
    """Turns weights into initializers: small ones inline, large ones appended to the external
    data file at page-aligned offsets."""

    def __init__(self, data_path: Path):
        self.data_path = data_path
        self.location = data_path.name.removesuffix(".tmp")
        self.file = None
        self.initializers: list[TensorProto] = []

    def add(self, name: str, shape: tuple[int, ...], chunks) -> None:
        """`chunks` yields float32 arrays that together fill `shape` in C order."""
        nbytes = math.prod(shape) * 4
        if nbytes < EXTERNAL_THRESHOLD:
            array = np.concatenate([c.reshape(-1) for c in chunks]).reshape(shape)
            self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
            return
        if self.file is None:
            self.file = open(self.data_path, "wb")
        offset = -self.file.tell() % ALIGN + self.file.tell()
        self.file.seek(offset)
        for chunk in chunks:
            self.file.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape,
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)

    def close(self) -> bool:
        if self.file is None:
            return False
        self.file.close()
        return True


def _linear_weights(rng: np.random.Generator, fan_in: int, fan_out: int):
    """DLRM's initialisation: normal with std sqrt(2 / (in + out)), bias std sqrt(1 / out)."""
    w = rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=(fan_out, fan_in)).astype(np.float32)
    b = rng.normal(0.0, math.sqrt(1.0 / fan_out), size=fan_out).astype(np.float32)
    return w, b


def _table_chunks(rng: np.random.Generator, rows: int, dim: int):
    """DLRM's initialisation: uniform in +-sqrt(1 / rows), generated a slice of rows at a time."""
    bound = math.sqrt(1.0 / rows)
    for start in range(0, rows, ROWS_PER_CHUNK):
        n = min(ROWS_PER_CHUNK, rows - start)
        yield rng.uniform(-bound, bound, size=(n, dim)).astype(np.float32)


def _mlp(maker: NodeMaker, writer: _WeightWriter, rng: np.random.Generator, x: str,
         widths: list[int], prefix: str, last_activation: str) -> str:
    """Gemm (transB, as torch.nn.Linear exports) + ReLU per layer; the last layer ends in
    `last_activation`. Layer k is named `{prefix}.{2k}` as in DLRM's nn.Sequential."""
    for k, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        w, b = _linear_weights(rng, fan_in, fan_out)
        w_name, b_name = f"{prefix}.{2 * k}.weight", f"{prefix}.{2 * k}.bias"
        writer.add(w_name, w.shape, [w])
        writer.add(b_name, b.shape, [b])
        x = maker.op("Gemm", [x, w_name, b_name], transB=1)
        last = k == len(widths) - 2
        x = maker.op(last_activation if last else "Relu", [x])
    return x


def build_graph(config: ModelConfig, writer: _WeightWriter, seed: int, style: str) -> onnx.GraphProto:
    """The whole DLRM graph; embedding bags are written in the exporter `style`."""
    if style not in EMITTERS:
        raise DlrmError(f"unknown embedding_bag style {style!r}; choose one of {', '.join(EMITTERS)}")
    rng = np.random.default_rng(seed)
    maker = NodeMaker("dlrm")
    bottom = _mlp(maker, writer, rng, DENSE_INPUT, [NUM_DENSE, *config.bottom_mlp], "bot_l", "Relu")

    embedded = []
    for t, rows in enumerate(config.table_rows):
        name = f"emb_l.{t}.weight"
        writer.add(name, (rows, config.embedding_dim), _table_chunks(rng, rows, config.embedding_dim))
        bag = EmbeddingBag(weight=name,
                           indices=maker.op("Gather", [INDICES_INPUT, maker.const(t)], axis=0),
                           offsets=maker.op("Gather", [OFFSETS_INPUT, maker.const(t)], axis=0),
                           output=f"emb_bag_{t}")
        EMITTERS[style](bag, maker)
        embedded.append(bag.output)

    # Dot interaction: T = [bottom, e_0..e_25] as [B, 27, d]; Z = T T^T; keep pairs j < i.
    n, d = config.num_vectors, config.embedding_dim
    stacked = maker.op("Reshape", [maker.op("Concat", [bottom, *embedded], axis=1), maker.const([-1, n, d])])
    z = maker.op("MatMul", [stacked, maker.op("Transpose", [stacked], perm=[0, 2, 1])])
    z = maker.op("Reshape", [z, maker.const([-1, n * n])])
    pairs = maker.op("Gather", [z, maker.const(interaction_pairs(n))], axis=1)
    top_in = maker.op("Concat", [bottom, pairs], axis=1)
    _mlp(maker, writer, rng, top_in, [config.top_input_width, *config.top_mlp], "top_l", "Sigmoid")
    maker.nodes[-1].output[0] = OUTPUT

    inputs = [helper.make_tensor_value_info(DENSE_INPUT, TensorProto.FLOAT, ["batch", NUM_DENSE]),
              helper.make_tensor_value_info(OFFSETS_INPUT, TensorProto.INT64, [NUM_TABLES, "batch"]),
              helper.make_tensor_value_info(INDICES_INPUT, TensorProto.INT64, [NUM_TABLES, "num_indices"])]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 1])]
    return helper.make_graph(maker.nodes, "dlrm", inputs, outputs, writer.initializers)


def generate_model(config: ModelConfig, path: str | os.PathLike, seed: int = 0, style: str = "loop",
                   aten_domain: str = "") -> Path:
    """Write the model to `path` (and `path`.data when weights are large), atomically: a crash
    leaves either the old files or the new ones.

    `style` is how embedding bags are written: "loop", as current PyTorch exports do (ONNX
    Runtime runs it), or "aten", as the MLPerf file does (only our normaliser reads it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = path.with_name(path.name + ".data.tmp")
    tmp = path.with_name(path.name + ".tmp")
    writer = _WeightWriter(data_path)
    try:
        graph = build_graph(config, writer, seed, style)
        has_external = writer.close()
        opsets = [helper.make_opsetid("", OPSET)]
        if style == "aten" and aten_domain:
            opsets.append(helper.make_opsetid(aten_domain, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="dlrmlib")
        model.doc_string = f"DLRM, MLPerf architecture, generated by dlrmlib (seed {seed}, {style} embedding bags)"
        helper.set_model_props(model, {"dlrm_config": str(config.to_dict()), "dlrm_seed": str(seed)})
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
        if has_external:
            os.replace(data_path, path.with_name(path.name + ".data"))
        os.replace(tmp, path)
    finally:
        writer.close()
        data_path.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a model behind
    return path
