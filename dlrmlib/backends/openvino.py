"""OpenVINO: Intel's CPU runtime, a peer. It reads the normalised ONNX model directly."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError


class OpenVinoBackend:
    name = "openvino"
    precision = "fp32"

    def __init__(self, model_path: str | Path, batch_size: int, threads: int | None = None, streams: int = 1,
                 precision: str = "fp32"):
        import openvino as ov

        self.version = ov.__version__.split("-")[0]
        self.batch_size = batch_size
        self.precision = precision
        self.name = "openvino" if precision == "fp32" else f"openvino-{precision}"
        # f32 unless asked, so that a CPU with bf16/AMX does not silently trade accuracy for speed;
        # bf16 is OpenVINO's own default wherever avx512_bf16 exists (its "best precision");
        # LATENCY: one request at a time, as every other runtime here runs. For parallel
        # requests OpenVINO's own way is one model with THROUGHPUT streams (each on its own
        # cores); separately compiled single-thread models would all pin to the same core.
        config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision], "PERFORMANCE_HINT": "LATENCY"}
        if streams > 1:
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": int(streams)})
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = ov.Core().compile_model(str(model_path), "CPU", config)
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
