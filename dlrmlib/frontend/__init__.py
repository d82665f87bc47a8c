"""The front end: a normalised DLRM ONNX model into Relax, and the Relax passes every build
and every tuning run share (so the kernels tuned are exactly the kernels built)."""
