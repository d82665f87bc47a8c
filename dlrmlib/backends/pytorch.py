"""PyTorch: the framework DLRM is written in, a peer. The module below is DLRM's own
architecture (as MLPerf's reference `dlrm_s_pytorch.py` builds it: Linear+ReLU MLPs,
`nn.EmbeddingBag(mode="sum")`, dot interaction of the strictly-lower-triangle pairs), loaded
with the experiment's weights, run eagerly or through `torch.compile`."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError
from dlrmlib.formats.model import DENSE_INPUT, INDICES_INPUT, OFFSETS_INPUT, interaction_pairs
from dlrmlib.formats.weights import map_weights

_LAYER = re.compile(r"^(bot_l|top_l)\.(\d+)\.(weight|bias)$")
_TABLE = re.compile(r"^emb_l\.(\d+)\.weight$")


def dlrm_layers(weights: dict[str, np.ndarray]) -> tuple[list, list, list]:
    """(bottom layers, tables, top layers) from DLRM-named weights: `bot_l.<k>.weight|bias`,
    `emb_l.<t>.weight`, `top_l.<k>.weight|bias`, in index order."""
    layers: dict[str, dict[int, dict]] = {"bot_l": {}, "top_l": {}}
    tables: dict[int, np.ndarray] = {}
    for name, array in weights.items():
        if m := _LAYER.match(name):
            layers[m[1]].setdefault(int(m[2]), {})[m[3]] = array
        elif m := _TABLE.match(name):
            tables[int(m[1])] = array
        else:
            raise DlrmError(f"the PyTorch DLRM needs DLRM weight names (bot_l.K.weight, emb_l.T.weight, "
                            f"top_l.K.weight, ...); the model has {name!r}")
    if not layers["bot_l"] or not layers["top_l"] or sorted(tables) != list(range(len(tables))):
        raise DlrmError("the model's weights do not form a DLRM (bottom MLP, top MLP, tables 0..T-1)")
    ordered = [[(v["weight"], v["bias"]) for _, v in sorted(layers[k].items())] for k in ("bot_l", "top_l")]
    return ordered[0], [tables[t] for t in range(len(tables))], ordered[1]


def make_module(weights: dict[str, np.ndarray]):
    """DLRM as an `nn.Module` holding copies of the weights (float32, writable)."""
    import torch
    from torch import nn

    bottom, tables, top = dlrm_layers(weights)

    def mlp(layers, last):
        modules = []
        for i, (w, b) in enumerate(layers):
            linear = nn.Linear(w.shape[1], w.shape[0])
            linear.weight.data = torch.from_numpy(np.array(w, dtype=np.float32))
            linear.bias.data = torch.from_numpy(np.array(b, dtype=np.float32))
            modules += [linear, last if i == len(layers) - 1 else nn.ReLU()]
        return nn.Sequential(*modules)

    class Dlrm(nn.Module):
        def __init__(self):
            super().__init__()
            self.bottom = mlp(bottom, nn.ReLU())
            self.top = mlp(top, nn.Sigmoid())
            self.tables = nn.ModuleList(
                nn.EmbeddingBag.from_pretrained(torch.from_numpy(np.array(t, dtype=np.float32)), mode="sum",
                                                freeze=True) for t in tables)
            n = len(tables) + 1
            pairs = interaction_pairs(n)
            self.register_buffer("li", torch.from_numpy(pairs // n))
            self.register_buffer("lj", torch.from_numpy(pairs % n))

        def forward(self, dense, offsets, indices):
            x = self.bottom(dense)
            embedded = [table(indices[t], offsets[t]) for t, table in enumerate(self.tables)]
            vectors = torch.cat([x, *embedded], dim=1).view(x.shape[0], -1, x.shape[1])
            products = torch.bmm(vectors, vectors.transpose(1, 2))
            return self.top(torch.cat([x, products[:, self.li, self.lj]], dim=1))

    return Dlrm().eval()


def load_module(weights_dir: str | Path, params: list) -> object:
    """The module with the weights of a weights folder (see docs/formats.md)."""

    arrays = map_weights(Path(weights_dir), params)
    return make_module({p.name: a for p, a in zip(params, arrays)})


def compile_module(module):
    """`torch.compile` (Inductor) of the module; it compiles at the first call for a shape."""
    import torch

    return torch.compile(module)


class PyTorchBackend:
    """The module run eagerly, or, with `compiled=True`, a module from `compile_module` (its
    first call for a batch size compiles: warm-up pays it)."""

    def __init__(self, module, batch_size: int, threads: int | None = None, compiled: bool = False,
                 precision: str = "fp32"):
        import torch

        self.version = torch.__version__
        self.batch_size = batch_size
        self.precision = precision  # bf16: CPU autocast (matmuls in bf16 through oneDNN)
        self.name = ("pytorch-compile" if compiled else "pytorch-eager") + ("" if precision == "fp32" else "-bf16")
        self.threads = threads
        self.module = module
        self._torch = torch

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # process-wide: set before each run that needs it
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.module(torch.from_numpy(inputs[DENSE_INPUT]), torch.from_numpy(inputs[OFFSETS_INPUT]),
                              torch.from_numpy(inputs[INDICES_INPUT]))
        return out.float().numpy()
