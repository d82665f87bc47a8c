"""Functions MetaSchedule's worker processes run: building a candidate, filling its inputs.

Workers unpickle these by reference, importing this module (and `dlrmlib/__init__.py`) but
nothing else of dlrmlib, so it stays small and imports TVM lazily.
"""
from __future__ import annotations


def build_candidate(mod, target, _params):
    """TVM's `default_build` minus its `import tvm.s_tir.tensor_intrin`, which registers every
    CUDA/ROCm/Hexagon tensor intrinsic (about 27 s, paid by every fresh build worker, so most
    candidates hit the build timeout). A CPU candidate needs none of it. As there: drop the
    weight layout-rewrite blocks (at run time the weights arrive already rewritten), compile."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def alloc_in_range_remote(session, device, args_info, alloc_repeat: int) -> list:
    """`alloc_in_range` on an RPC server's device (RPCRunner's allocation hook)."""
    return alloc_in_range(device, args_info, alloc_repeat, session.get_function("tvm.contrib.random.random_fill"))


def alloc_in_range(device, args_info, alloc_repeat: int, fill=None) -> list:
    """MetaSchedule's argument allocation (random data), except that integer tensors hold ids
    inside the smallest table the kernel reads (first dimension of its 2-D float arguments).
    With random int64 ids an embedding gather reads far outside its table and crashes the
    runner (TVM's gather does no bounds check): every gather trial failed, each crash costing
    a runner restart. In-range random ids also time gathers as DLRM lookups behave."""
    import numpy as np
    import tvm

    fill = fill or tvm.get_global_func("tvm.contrib.random.random_fill")
    rows = [int(shape[0]) for kind, dtype, shape in args_info
            if kind == "TENSOR" and str(dtype).startswith(("float", "bfloat")) and len(shape) >= 2]
    high = max(1, min(rows)) if rows else 1
    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for kind, dtype, shape in args_info:
            if kind != "TENSOR":
                raise NotImplementedError(f"argument kind {kind!r}")
            if "int" in str(dtype):
                args.append(tvm.runtime.tensor(rng.integers(0, high, size=tuple(shape)).astype(str(dtype)), device))
            else:
                tensor = tvm.runtime.empty(shape=tuple(shape), dtype=str(dtype), device=device)
                fill(tensor)
                args.append(tensor)
        repeated.append(args)
    return repeated
