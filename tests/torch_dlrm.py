"""A DLRM written in PyTorch after the MLPerf reference (facebookresearch/dlrm,
`dlrm_s_pytorch.py`'s `DLRM_Net`), and every way torch 2.13 exports it to ONNX.

Test helper only (not part of the package): the tests export it as a new user would and check
that dlrmlib's builds score exactly as this module does. Sizes are deliberately unlike the
presets: embedding dims 16 and 64, MLP widths that are not multiples of 32, tables of a few rows.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

NUM_DENSE, NUM_TABLES = 13, 26


@dataclass(frozen=True)
class TorchDlrmConfig:
    dim: int = 16
    bottom: tuple[int, ...] = (24, 16)  # output widths; ends at dim
    top: tuple[int, ...] = (40, 1)  # output widths; ends at 1
    rows: tuple[int, ...] = tuple(3 + (5 * t) % 11 for t in range(NUM_TABLES))  # a few rows each
    mode: str = "sum"
    include_last_offset: bool = False
    seed: int = 0


class DlrmNet(nn.Module):
    """DLRM_Net's inference path: bottom MLP, one nn.EmbeddingBag per table, dot interaction
    through the `li`/`lj` index lists, top MLP with a sigmoid."""

    def __init__(self, config: TorchDlrmConfig):
        super().__init__()
        torch.manual_seed(config.seed)
        self.config = config
        self.bot_l = self._mlp([NUM_DENSE, *config.bottom], sigmoid_last=False)
        self.emb_l = nn.ModuleList(
            nn.EmbeddingBag(rows, config.dim, mode=config.mode, include_last_offset=config.include_last_offset)
            for rows in config.rows)
        for emb in self.emb_l:  # DLRM's uniform init, so rows differ visibly from zeros
            bound = float(np.sqrt(1.0 / emb.num_embeddings))
            nn.init.uniform_(emb.weight, -bound, bound)
        n = NUM_TABLES + 1
        self.li = torch.tensor([i for i in range(n) for j in range(i)])
        self.lj = torch.tensor([j for i in range(n) for j in range(i)])
        self.top_l = self._mlp([config.dim + n * (n - 1) // 2, *config.top], sigmoid_last=True)

    @staticmethod
    def _mlp(widths: list[int], sigmoid_last: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for k, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            last = k == len(widths) - 2
            layers.append(nn.Sigmoid() if last and sigmoid_last else nn.ReLU())
        return nn.Sequential(*layers)

    def interact_features(self, x, ly):
        batch_size, d = x.shape
        T = torch.cat([x] + ly, dim=1).view((batch_size, -1, d))
        Z = torch.bmm(T, torch.transpose(T, 1, 2))
        Zflat = Z[:, self.li, self.lj]
        return torch.cat([x] + [Zflat], dim=1)

    def forward(self, dense_x, lS_o, lS_i):
        x = self.bot_l(dense_x)
        ly = [self.emb_l[k](lS_i[k], lS_o[k]) for k in range(NUM_TABLES)]
        return self.top_l(self.interact_features(x, ly))


@dataclass
class Inputs:
    dense: np.ndarray  # float32 [B, 13]
    offsets: np.ndarray  # int64 [26, B] (B + 1 with include_last_offset)
    indices: np.ndarray  # int64 [26, B * hot]

    def torch(self):
        return tuple(torch.from_numpy(np.array(a)) for a in (self.dense, self.offsets, self.indices))


def make_inputs(config: TorchDlrmConfig, batch: int, hot: int = 1, seed: int = 1) -> Inputs:
    """A batch with `hot` ids per bag (uneven bags when hot > 1: the first bag is empty and the
    second twice as long, so offsets really matter)."""
    rng = np.random.default_rng(seed)
    dense = rng.random((batch, NUM_DENSE), dtype=np.float32)
    lengths = np.full(batch, hot)
    if hot > 1 and batch > 1:
        lengths[0], lengths[1] = 0, 2 * hot
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if config.include_last_offset:
        offsets = np.append(offsets, lengths.sum())
    indices = np.stack([rng.integers(0, rows, batch * hot) for rows in config.rows])
    return Inputs(dense, np.tile(offsets, (NUM_TABLES, 1)).astype(np.int64), indices.astype(np.int64))


def folder_inputs(dense: np.ndarray, sparse: np.ndarray, include_last_offset: bool = False) -> Inputs:
    """The model's inputs for a test data folder's samples, written here independently of
    dlrmlib: `sparse` [B, 26] (one id per bag) or [B, 26, K] (K ids per bag: offsets 0, K, 2K, ...)."""
    batch, hot = len(dense), 1 if sparse.ndim == 2 else sparse.shape[2]
    offsets = np.arange(0, (batch + 1 if include_last_offset else batch) * hot, hot, dtype=np.int64)
    indices = np.stack([sparse[:, t].reshape(-1) for t in range(NUM_TABLES)])
    return Inputs(np.ascontiguousarray(dense, np.float32), np.tile(offsets, (NUM_TABLES, 1)),
                  np.ascontiguousarray(indices, np.int64))


def torch_scores(model: DlrmNet, inputs: Inputs) -> np.ndarray:
    with torch.no_grad():
        return model(*inputs.torch()).numpy().reshape(-1)


# --- exporters -------------------------------------------------------------------------------

INPUT_NAMES = ["input.1", "lS_o", "lS_i"]


def _parse_args(*kinds):
    from torch.onnx import symbolic_helper

    return symbolic_helper.parse_args(*kinds)


@_parse_args("v", "v", "v", "i", "i", "i", "v", "i", "i")
def _embedding_bag_as_aten(g, weight, indices, offsets, scale_grad_by_freq, mode, sparse,
                           per_sample_weights, include_last_offset, padding_idx):
    """What older PyTorch wrote for aten::embedding_bag (MLPerf's tb00_40M.onnx): an ATen node."""
    return g.at("embedding_bag", weight, indices, offsets, outputs=4,
                scale_grad_by_freq_i=scale_grad_by_freq, mode_i=mode, sparse_i=sparse,
                include_last_offset_i=include_last_offset)


@dataclass(frozen=True)
class ExportForm:
    """One way of exporting: `aten` or `loop` (TorchScript) or `dynamo`, the opset, whether the
    batch axis is dynamic, whether weights go to external data."""

    name: str
    exporter: str = "loop"
    opset: int = 17
    dynamic: bool = False
    external: bool = False


def export(model: DlrmNet, form: ExportForm, example: Inputs, path: Path) -> Path:
    """Export `model` as `form` says to `path` (and path.data with external data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = example.torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if form.exporter == "dynamo":
            _export_dynamo(model, form, args, path)
        else:
            _export_torchscript(model, form, args, path)
    return path


def _export_torchscript(model, form: ExportForm, args, path: Path) -> None:
    dynamic_axes = ({"input.1": {0: "batch"}, "lS_o": {1: "batch"}, "lS_i": {1: "indices"}, "pred": {0: "batch"}}
                    if form.dynamic else None)
    if form.exporter == "aten":
        torch.onnx.register_custom_op_symbolic("aten::embedding_bag", _embedding_bag_as_aten, form.opset)
    try:
        kwargs = dict(input_names=INPUT_NAMES, output_names=["pred"], opset_version=form.opset,
                      dynamic_axes=dynamic_axes, dynamo=False, do_constant_folding=True)
        if form.exporter == "aten":
            kwargs["operator_export_type"] = torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK
        torch.onnx.export(model, args, str(path), **kwargs)
    finally:
        if form.exporter == "aten":
            torch.onnx.unregister_custom_op_symbolic("aten::embedding_bag", form.opset)
    if form.external:
        _to_external_data(path)


def _export_dynamo(model, form: ExportForm, args, path: Path) -> None:
    dynamic_shapes = None
    if form.dynamic:
        batch = torch.export.Dim("batch")
        dynamic_shapes = ({0: batch}, {1: batch}, {1: torch.export.Dim("indices")})
    program = torch.onnx.export(model, args, input_names=INPUT_NAMES, output_names=["pred"],
                                opset_version=form.opset, dynamo=True, dynamic_shapes=dynamic_shapes,
                                external_data=form.external)
    program.save(str(path), external_data=form.external)


def _to_external_data(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=256)
