"""Import into Relax and the passes up to the fused TIR kernels.

The weights stay out of the library: the normalised model's weights become the Relax
function's parameters after its three inputs, so the library is small, the weights folder can
be mapped by the native runner, and a build never needs the weights in memory.
"""
from __future__ import annotations

import warnings

import onnx
from onnx import helper

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.tvmlog import quiet_tvm_log
from dlrmlib.formats.normalise import load_graph

NUM_INPUTS = 3  # input.1 (dense), lS_o (offsets), lS_i (indices); the weights follow
TRANSFORM = "main_transform_params"  # the Relax function that lays weights out once, before `main`


def import_relax(model: onnx.ModelProto):
    """The normalised model as a Relax module whose `main` takes the 3 inputs, then the weights
    as parameters. The weights' data is never read: each initializer becomes a graph input."""
    from tvm.relax.frontend.onnx import from_onnx

    graph_only = onnx.ModelProto()
    graph_only.CopyFrom(model)
    weights = list(graph_only.graph.initializer)
    del graph_only.graph.initializer[:]
    graph_only.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    _check_supported_ops(graph_only)
    try:
        with warnings.catch_warnings():  # "Renaming name input.1 to input_1", once per weight
            warnings.simplefilter("ignore", UserWarning)
            mod = from_onnx(graph_only, keep_params_in_input=False)
    except Exception as e:
        raise DlrmError(f"TVM's ONNX importer failed on the normalised model: {type(e).__name__}: "
                        f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}") from e
    mod["main"] = mod["main"].with_attr("num_input", NUM_INPUTS)
    if len(mod["main"].params) != NUM_INPUTS + len(weights):
        raise DlrmError(f"the imported function takes {len(mod['main'].params)} arguments, expected "
                        f"{NUM_INPUTS} inputs + {len(weights)} weights")
    return mod


def _check_supported_ops(model: onnx.ModelProto) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"Constant", "If"}
    missing = sorted({n.op_type for n in model.graph.node if n.op_type not in known})
    if missing:
        raise DlrmError(f"TVM's ONNX importer does not support these operators of the model: {', '.join(missing)}")

def front_passes(target, prepack: bool) -> list:
    """Relax passes up to the fused TIR kernels, shared by task extraction and the build so
    that the database's workloads are exactly the kernels the build looks up. With `prepack`,
    weights are marked layout-free (as `static_shape_tuning_pipeline` does), so the tuned
    kernels may ask for their weights in another layout, made once by `main_transform_params`.
    For that a Gemm's weight must reach its matmul kernel as the model's own parameter: ONNX
    Gemms import as matmul(x, permute_dims(W)), and with the transpose a kernel of its own the
    matmul read a computed [K, N] array, which is not layout-free. Every trial then walked the
    weights 4 KB apart, ~1.5x slower than the same tiles over packed panels (measured on Zen 3,
    1024 x 1024 layer, batch 128). `FuseTransposeMatmul` makes them one NT_matmul kernel."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    passes = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
              *([relax.transform.FuseTransposeMatmul()] if prepack else []),
              *cpu.library_dispatch_passes(target), *cpu.legalize_passes(target)]
    if prepack:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    return passes


def fused_module(experiment: Experiment, target, prepack: bool, before=None):
    """The experiment's model imported exactly as `build` does, through the front passes;
    `before(mod)` first, if given (the tuned build's hand-written kernels)."""
    import tvm

    mod = import_relax(load_graph(experiment.normalised_model))
    if before is not None:
        mod = before(mod)
    with target, quiet_tvm_log():
        return tvm.transform.Sequential(front_passes(target, prepack))(mod)


def per_batch_kernels(mod, target, prepack: bool):
    """The module as it runs per batch. With prepacking, kernels on weights alone (the Gemm
    weights' transposes) move into `main_transform_params`, run once at build time: they are
    not worth a trial and not part of a batch's latency."""
    import tvm
    from tvm import relax


    if not prepack:
        return mod
    with target:
        lifted = relax.transform.LiftTransformParams()(mod)
    return tvm.IRModule({gv: f for gv, f in lifted.functions.items() if gv.name_hint != TRANSFORM})
