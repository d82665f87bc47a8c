"""Workloads the tests schedule: written as the tuned build's fused kernels are."""
from __future__ import annotations


def dense_workload(m: int, k: int, n: int, epilogue: str):
    """A Dense kernel as the prepacked build's fused workloads are written (fused_NT_matmul):
    x[M,K] times the Gemm's own weight w[N,K] transposed, then bias + ReLU, bias alone, or nothing."""
    from tvm import te, tirx

    x = te.placeholder((m, k), "float32", name="x")
    w = te.placeholder((n, k), "float32", name="w")
    b = te.placeholder((n,), "float32", name="b")
    r = te.reduce_axis((0, k), name="r")
    out = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="matmul")
    if epilogue != "none":
        out = te.compute((m, n), lambda i, j: out[i, j] + b[j], name="T_add")
    if epilogue == "relu":
        out = te.compute((m, n), lambda i, j: tirx.max(out[i, j], tirx.const(0, "float32")), name="compute")
    return te.create_prim_func([x, w, b, out] if epilogue != "none" else [x, w, out])
