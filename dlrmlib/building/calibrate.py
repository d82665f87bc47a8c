"""Static calibration of an int8 build (`dlrm build --precision int8 --calibration static`):
each Dense layer's input range over the test data's calibration slice, from the fp32 model.

ONNX Runtime runs the normalised model (the reference runtime) with every Gemm's input as an
extra output, batch by batch over the calibration slice (dlrmlib.formats.testdata's rule: its
first samples, never scored); the per-tensor min and max of each input become the layer's
activation scale and zero point (dlrmlib.schedules.static), so the int8 kernels need no
min/max pass per batch.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from dlrmlib.backends.base import batch_inputs
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.formats.normalise import load_graph
from dlrmlib.formats.testdata import read_test_data

CALIBRATIONS = ("dynamic", "static")


def relax_name(onnx_name: str) -> str:
    """A parameter's name after TVM's ONNX importer (`top_l.0.weight` -> `top_l_0_weight`)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", onnx_name)


def dense_inputs(model) -> dict[str, str]:
    """Weight parameter (Relax name) -> the name of the tensor its Gemm multiplies."""
    initializers = {t.name for t in model.graph.initializer}
    return {relax_name(n.input[1]): n.input[0] for n in model.graph.node
            if n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] in initializers}


def activation_ranges(experiment: Experiment, log=print) -> dict:
    """{"ranges": weight (Relax name) -> [min, max] of its layer's input over the calibration
    slice, "samples": how many samples, "which": the rule in words}."""
    import onnxruntime as ort  # deferred: only a static build needs it

    model = load_graph(experiment.normalised_model, inline_small=False)
    inputs = dense_inputs(model)
    if not inputs:
        raise DlrmError(f"{experiment.normalised_model} has no Gemm with a weight to calibrate")
    data = read_test_data(experiment.testdata_dir).calibration()
    if len(data) == 0:
        raise DlrmError(f"{experiment.testdata_dir} holds too few samples for a calibration slice "
                        "(it takes the first quarter, at most 256): prepare more --samples")
    names = sorted(set(inputs.values()))
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    lo, hi = {n: np.inf for n in names}, {n: -np.inf for n in names}
    # beside the model, so that its external data (the tables) resolve; removed at once
    fd, path = tempfile.mkstemp(prefix=".calibrate-", suffix=".onnx", dir=experiment.normalised_model.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    finally:
        Path(path).unlink(missing_ok=True)
    for batch in batch_inputs(data.dense, data.sparse, experiment.batch_size):  # padding repeats a sample: same range
        for name, value in zip(names, session.run(names, batch)):
            lo[name], hi[name] = min(lo[name], float(value.min())), max(hi[name], float(value.max()))
    log(f"[calibrate] activation ranges of {len(inputs)} Dense layers over the calibration slice "
        f"(test samples 0..{len(data) - 1})")
    return {"ranges": {w: [lo[x], hi[x]] for w, x in sorted(inputs.items())}, "samples": len(data),
            "which": f"test data samples 0..{len(data) - 1} (the calibration slice)"}
