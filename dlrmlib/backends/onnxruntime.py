"""ONNX Runtime: the independent runtime that makes the reference outputs, and a peer."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError


QUANTIZED_OPS = ["MatMul", "Gemm"]  # the Dense layers and the interaction; Gathers (tables) stay fp32


def private_copy(model_path: Path, folder: Path) -> Path:
    """A copy of the model and its external data in `folder`: ONNX's loader refuses external
    data files with several hard links (the weights folders link them)."""
    import shutil

    import onnx

    copy, source = Path(folder) / "model.onnx", Path(model_path)
    shutil.copyfile(source, copy)
    graph = onnx.load(str(source), load_external_data=False).graph
    for location in {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}:
        shutil.copyfile(source.parent / location, Path(folder) / location)
    return copy


def quantized_dynamic(model_path: Path, folder: Path) -> Path:
    """ONNX Runtime's own int8 recipe, written into `folder`: `quantize_dynamic` of the
    MatMul/Gemm weights (int8, per output channel), activations quantised per batch at run time
    (u8); the Gathers (embedding tables) stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model_path = private_copy(model_path, folder)
    out = Path(folder) / "model.int8-dynamic.onnx"
    quantize_dynamic(str(model_path), str(out), op_types_to_quantize=QUANTIZED_OPS,
                     weight_type=QuantType.QInt8, per_channel=True, use_external_data_format=True)
    return out


def quantized_static(model_path: Path, folder: Path, calibration: list[dict]) -> Path:
    """ONNX Runtime's static int8 recipe, written into `folder`: `quantize_static` in the QDQ
    format, S8S8 (int8 activations and weights), weights per output channel, activation scales
    from the min/max over `calibration` (model inputs: the test data's calibration slice)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.left = iter(calibration)

        def get_next(self):
            return next(self.left, None)

    model_path = private_copy(model_path, folder)
    out = Path(folder) / "model.int8-static.onnx"
    quantize_static(str(model_path), str(out), Batches(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=QUANTIZED_OPS, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=True)
    return out


class OnnxRuntimeBackend:
    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, model_path: str | Path, batch_size: int, threads: int | None = None,
                 profile_prefix: str | None = None, precision: str = "fp32", calibration: list[dict] | None = None):
        """`precision` int8: quantize_dynamic, or with `calibration` (model inputs of the test
        data's calibration slice) quantize_static (`onnxruntime-int8-static`)."""
        import onnxruntime as ort

        self.version = ort.__version__
        self.batch_size = batch_size
        self.precision = precision
        if precision == "int8":
            self.name = "onnxruntime-int8-static" if calibration else "onnxruntime-int8"
            # beside the model (its tables are large), removed once the session holds what it needs
            with tempfile.TemporaryDirectory(prefix=".ort-int8-", dir=Path(model_path).parent) as tmp:
                quantized = (quantized_static(Path(model_path), Path(tmp), calibration) if calibration
                             else quantized_dynamic(Path(model_path), Path(tmp)))
                self._open(ort, quantized, threads, profile_prefix)
            return
        self._open(ort, model_path, threads, profile_prefix)

    def _open(self, ort, model_path, threads, profile_prefix) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about Loop subgraph names are noise
        if threads:
            options.intra_op_num_threads = threads
        if profile_prefix:  # ONNX Runtime's own per-node profiler (dlrmlib.measuring.profile)
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise DlrmError(f"ONNX Runtime cannot load {model_path}: {e}") from None
        self.output = self.session.get_outputs()[0].name

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], inputs)[0]
