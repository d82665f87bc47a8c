"""Hand-written TensorIR kernels for the DLRM and the Relax passes that use them.

`custom_module` rewrites the imported module (Dense layers -> packed GEMM with fused bias +
ReLU, or a dot-product kernel for the 1-wide last layer; the 26 gathers + dot interaction +
concatenation -> one kernel) and lifts the weight packing into `main_transform_params`; the
default CPU pipeline then lowers whatever is left. Knobs per kernel: dlrmlib.schedules.knobs.
See README "Performance".
"""
from __future__ import annotations

from dlrmlib.schedules.dense import PANEL, DenseConfig, DenseShape, dense_func, pack_func
from dlrmlib.schedules.prepack import TRANSFORM, LiftPlan, lift_weight_transforms, write_transformed_weights
from dlrmlib.schedules.rewrite import use_dense_kernels, use_interaction_kernel

__all__ = ["PANEL", "PIPELINE_NAME", "TRANSFORM", "DenseConfig", "DenseShape", "LiftPlan", "custom_module",
           "dense_func", "lift_weight_transforms", "pack_func", "write_transformed_weights", "written_kernels"]

SCHEDULES = ("default", "custom")
PIPELINE_NAME = ("custom kernels (dlrmlib.schedules: packed GEMM + bias/ReLU, narrow last layer, fused gather + "
                 "interaction with prefetch) + relax default (cpu_generic)")


def custom_module(mod, target: dict, num_input: int, configs: dict | None = None, seen: dict | None = None,
                  fallbacks: dict | None = None, precision: str = "fp32", amx: bool = False,
                  ranges: dict | None = None, avx2: str | None = None):
    """(rewritten module, LiftPlan) for `tvm.compile` with the default pipeline. `configs`:
    tuned knobs per kernel name (dlrmlib.schedules.knobs); `seen` collects the kernels made;
    `fallbacks` the layers left to the default lowering (name -> why): a shape no kernel was
    written for is lowered as an untuned build would, never forced into a kernel. `precision`:
    the Dense layers' (dlrmlib.schedules.reduced); `amx`: int8/bf16 on AMX tiles
    (dlrmlib.schedules.amx; the target needs amx.MATTR); `ranges`: int8 with static activation
    scales from these calibrated input ranges (dlrmlib.schedules.static); `avx2`: int8 on AVX2
    alone, no VNNI, with these operands (dlrmlib.schedules.avx2_int8: "s16" or "u8s8")."""
    import tvm

    tvm_target = tvm.target.Target(target)
    seen = seen if seen is not None else {}
    fallbacks = fallbacks if fallbacks is not None else {}
    mod = use_interaction_kernel(configs=configs, seen=seen)(mod)
    if not any(kind == "interaction" for kind, _, _ in seen.values()):
        fallbacks["interaction"] = ("the gathers + dot interaction are not in the form the fused kernel matches "
                                    "(one id per bag, tables read from lS_i rows, pairs j < i by a constant index)")
    mod = use_dense_kernels(tvm_target, configs, seen, fallbacks, precision=precision, amx=amx, ranges=ranges,
                            avx2=avx2)(mod)
    return lift_weight_transforms(mod, num_input)


def written_kernels(mod, target: dict, dense: frozenset[str] = frozenset(), configs: dict | None = None,
                    seen: dict | None = None):
    """The tuned build's hand-written kernels, used as written: the fused gather + interaction +
    concatenation and the narrow last layer always, the packed GEMM for the Dense layers named
    in `dense` (where the tuning log measured it faster than every trial). Each is marked
    scheduled, so MetaSchedule neither extracts it as a task nor replaces it; the rest of the
    module is left as imported, for the tuned kernels. `configs`: knobs per kernel name."""
    import tvm

    seen = seen if seen is not None else {}
    before = {gv.name_hint for gv in mod.functions}
    mod = use_interaction_kernel(configs=configs, seen=seen)(mod)
    mod = use_dense_kernels(tvm.target.Target(target), configs, seen, only=set(dense))(mod)
    for gv, func in list(mod.functions.items()):
        if gv.name_hint not in before and isinstance(func, tvm.tirx.PrimFunc):
            mod[gv] = func.with_attr("tirx.is_scheduled", True)
    return mod
