"""The one way to make a runtime by name: bench, LoadGen and the benchmarks all call this.

Peers run the normalised ONNX model (`model_path`, at `batch_size` with `threads`); "tvm" runs a
build (`manifest`); PyTorch runs DLRM's own nn.Module on the experiment's weights, loaded once
per experiment (`TorchModule`) and shared by eager and `torch.compile` runs.
"""
from __future__ import annotations

from pathlib import Path

from dlrmlib.backends.base import batch_inputs
from dlrmlib.backends.onnxruntime import OnnxRuntimeBackend
from dlrmlib.backends.openvino import OpenVinoBackend
from dlrmlib.backends.pytorch import PyTorchBackend, compile_module, load_module
from dlrmlib.backends.tvm import TvmBackend
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.weights import extract_weights

REFERENCE = "onnxruntime"  # the independent runtime every other one is checked against
PEERS = ("onnxruntime", "openvino", "pytorch-eager", "pytorch-compile")
# The peers at their best precision: OpenVINO's default on avx512_bf16 CPUs, ONNX Runtime's
# quantize_dynamic and quantize_static, OpenVINO int8 through NNCF, PyTorch's CPU autocast.
REDUCED_PEERS = ("openvino-bf16", "onnxruntime-int8", "onnxruntime-int8-static", "openvino-int8",
                 "pytorch-eager-bf16")
# Calibrated on the test data's calibration slice (dlrmlib.formats.testdata.calibration_samples).
CALIBRATED = ("onnxruntime-int8-static", "openvino-int8")
RUNTIMES = (*PEERS, *REDUCED_PEERS, "tvm")  # "tvm": a build of the experiment
# What `dlrm bench` runs unless told: all but the int8 peers, which quantise a copy of the whole
# model (tables included) for every batch size of the sweep: ask for them by name.
DEFAULT_RUNTIMES = tuple(r for r in RUNTIMES if "-int8" not in r)


class TorchModule:
    """The PyTorch DLRM, loaded once and shared: eager runs it, `torch.compile` wraps it once
    (so it recompiles only when a new batch size needs it)."""

    def __init__(self, exp: Experiment):
        self.exp = exp
        self._module = None
        self._compiled = None

    def module(self):
        if self._module is None:
            folder, params, _ = extract_weights(self.exp)
            self._module = load_module(folder, params)
        return self._module

    def compiled(self):
        if self._compiled is None:
            self._compiled = compile_module(self.module())
        return self._compiled


def make_backend(runtime: str, *, model_path: Path | None = None, manifest: Path | None = None,
                 batch_size: int | None = None, threads: int | None = None, streams: int = 1,
                 torch_module: TorchModule | None = None, calibration: list[dict] | None = None):
    """A runtime by name (see RUNTIMES): a peer on `model_path` at `batch_size` with `threads`
    (OpenVINO with `streams` THROUGHPUT streams), or TVM on the build `manifest`. The CALIBRATED
    peers take `calibration`, the model inputs of the test data's calibration slice
    (calibration_batches)."""
    if runtime in CALIBRATED and not calibration:
        raise DlrmError(f"{runtime} needs the calibration slice's batches (calibration_batches)")
    if runtime == "tvm":
        return TvmBackend(manifest)
    if runtime in ("onnxruntime", "onnxruntime-int8", "onnxruntime-int8-static"):
        return OnnxRuntimeBackend(model_path, batch_size, threads, precision=_precision(runtime),
                                  calibration=calibration if runtime in CALIBRATED else None)
    if runtime in ("openvino", "openvino-bf16", "openvino-int8"):
        return OpenVinoBackend(model_path, batch_size, threads, streams=streams, precision=_precision(runtime),
                               calibration=calibration)
    if runtime in ("pytorch-eager", "pytorch-compile", "pytorch-eager-bf16"):
        if torch_module is None:
            raise DlrmError("a PyTorch backend needs the experiment's TorchModule")
        compiled = runtime == "pytorch-compile"
        module = torch_module.compiled() if compiled else torch_module.module()
        return PyTorchBackend(module, batch_size, threads, compiled=compiled, precision=_precision(runtime))
    raise DlrmError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")


def _precision(runtime: str) -> str:
    """A peer's precision from its name (see REDUCED_PEERS)."""
    return next((p for p in ("int8", "bf16") if f"-{p}" in runtime), "fp32")


def calibration_batches(data, batch_size: int) -> list[dict]:
    """The model inputs of the test data's calibration slice at `batch_size` (a short last batch
    padded by repeating its last sample, which changes no min/max)."""
    cal = data.calibration()
    return batch_inputs(cal.dense, cal.sparse, batch_size)


def experiment_backend(exp: Experiment, runtime: str = "tvm", manifest: Path | None = None,
                       threads: int | None = None, torch_module: TorchModule | None = None):
    """A runtime on the experiment as prepared: TVM on `manifest` (default: the latest build),
    a peer on the normalised model at the experiment's batch size."""
    if runtime == "tvm":
        return make_backend("tvm", manifest=Path(manifest) if manifest else exp.latest_build())
    calibration = (calibration_batches(read_test_data(exp.testdata_dir), exp.batch_size) if runtime in CALIBRATED
                   else None)
    return make_backend(runtime, model_path=exp.normalised_model, batch_size=exp.batch_size, threads=threads,
                        torch_module=torch_module or (TorchModule(exp) if runtime.startswith("pytorch") else None),
                        calibration=calibration)
