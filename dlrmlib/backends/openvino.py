"""OpenVINO: Intel's CPU runtime, a peer. It reads the normalised ONNX model directly."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError


def nncf_quantized(core, model_path: str | Path, calibration: list[dict] | None):
    """The model with NNCF's post-training int8 quantization (its default preset: symmetric
    int8 weights per channel, activation scales from `calibration`, bias correction)."""
    if not calibration:
        raise DlrmError("openvino-int8 needs calibration batches (the test data's calibration slice)")
    try:
        import nncf
    except ImportError:
        raise DlrmError("openvino-int8 needs NNCF (pip install nncf; pinned in pyproject.toml)") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)  # its progress bars and notes are noise here
    return nncf.quantize(core.read_model(str(model_path)), nncf.Dataset(calibration),
                         subset_size=len(calibration))


class OpenVinoBackend:
    name = "openvino"
    precision = "fp32"

    def __init__(self, model_path: str | Path, batch_size: int, threads: int | None = None, streams: int = 1,
                 precision: str = "fp32", calibration: list[dict] | None = None):
        """`precision` int8: the model quantised by NNCF's post-training quantization,
        calibrated on `calibration` (model inputs of the test data's calibration slice)."""
        import openvino as ov

        self.version = ov.__version__.split("-")[0]
        self.batch_size = batch_size
        self.precision = precision
        self.name = "openvino" if precision == "fp32" else f"openvino-{precision}"
        # f32 unless asked, so that a CPU with bf16/AMX does not silently trade accuracy for speed;
        # bf16 is OpenVINO's own default wherever avx512_bf16 exists (its "best precision");
        # int8: NNCF's int8 layers, the rest in OpenVINO's default precision (its best, gated alike).
        # LATENCY: one request at a time, as every other runtime here runs. For parallel
        # requests OpenVINO's own way is one model with THROUGHPUT streams (each on its own
        # cores); separately compiled single-thread models would all pin to the same core.
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if precision in ("fp32", "bf16"):
            config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
        if streams > 1:
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": int(streams)})
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        model = str(model_path) if precision != "int8" else nncf_quantized(core, model_path, calibration)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise DlrmError(f"OpenVINO cannot compile {model_path}: {str(e).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.array(self.request.infer(inputs)[self.output])  # the request reuses its buffer

    def another_request(self) -> "OpenVinoBackend":
        """The same compiled model with its own infer request: one more request in flight."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.request = self.compiled.create_infer_request()
        return twin
