"""ONNX Runtime: the independent runtime that makes the reference outputs, and a peer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: str | Path, batch_size: int, threads: int | None = None,
                 profile_prefix: str | None = None):
        import onnxruntime as ort

        self.version = ort.__version__
        self.batch_size = batch_size
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
