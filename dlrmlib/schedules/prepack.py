"""Weight transforms (prepacking) lifted out of `main` and run once, at build time.

`relax.transform.LiftTransformParams` moves every computation that depends on weights alone
(here: packing into GEMM panels) into `main_transform_params`, and `main` then takes the
transformed weights. Run naively, that function takes and returns EVERY weight, embedding
tables included (gigabytes, 96 GB for MLPerf). So lifting runs twice: the first pass shows
which weights come out untouched; those become plain inputs of `main` (num_input grows), and
the second pass yields a transform over the few MLP weights only. The untouched weights'
files are then linked from the plain weights folder; only the transformed ones are computed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrmlib.core.files import atomic_dir, link_or_copy, loadable_copy
from dlrmlib.formats.weights import (
    ParamSpec,
    holds_weights,
    layout_checksums,
    map_weights,
    param_file_name,
    write_layout,
)
from dlrmlib.frontend.relax import TRANSFORM


@dataclass(frozen=True)
class LiftPlan:
    """How the lifted `main` takes its weights: first the untouched ones (indices into the
    original weights), then the transform's outputs, which are computed from `sources`."""

    untouched: tuple[int, ...]
    sources: tuple[int, ...]
    transformed_shapes: tuple[tuple[int, ...], ...]
    transformed_dtypes: tuple[str, ...] = ()  # empty: all float32 (reduced precision adds int8, uint16, ...)

    def dtype(self, index: int) -> str:
        return self.transformed_dtypes[index] if self.transformed_dtypes else "float32"

    @property
    def identity(self) -> bool:
        return not self.transformed_shapes


def _bindings(func):
    return {b.var: b.value for block in func.body.blocks for b in block.bindings}


def _pass_through(transform, num_params: int) -> list[int | None]:
    """For each output of a lifted transform: the index of the weight it returns unchanged,
    or None when it computes something."""
    from tvm import relax

    values = _bindings(transform)
    result = transform.body.body
    while isinstance(result, relax.Var) and result in values:
        result = values[result]
    fields = []
    for field in result.fields:
        while isinstance(field, relax.Var) and field in values:
            field = values[field]
        is_param = isinstance(field, relax.TupleGetItem) and field.tuple_value.same_as(transform.params[0])
        fields.append(int(field.index) if is_param else None)
    return fields


def _with_inputs_first(func, num_input: int, keep: list[int]):
    """`func` with the weights in `keep` moved right after the real inputs, counted as inputs."""
    from tvm import relax

    inputs, weights = list(func.params[:num_input]), list(func.params[num_input:])
    rest = [i for i in range(len(weights)) if i not in set(keep)]
    params = inputs + [weights[i] for i in keep] + [weights[i] for i in rest]
    moved = relax.Function(params, func.body, func.ret_ty, func.is_pure, func.attrs, func.span)
    return moved.with_attr("num_input", num_input + len(keep)), rest


def lift_weight_transforms(mod, num_input: int):
    """(module whose `main` takes inputs, untouched weights, transformed weights; LiftPlan).
    A module with nothing to lift comes back unchanged with an identity plan."""
    from tvm import relax

    num_weights = len(mod["main"].params) - num_input
    first = relax.transform.LiftTransformParams()(mod)
    if TRANSFORM not in first:
        return mod, LiftPlan(tuple(range(num_weights)), (), ())
    passing = _pass_through(first[TRANSFORM], num_weights)
    keep = sorted({i for i in passing if i is not None})
    if len(keep) == num_weights:
        return mod, LiftPlan(tuple(range(num_weights)), (), ())
    mod = mod.clone() if hasattr(mod, "clone") else mod
    moved, rest = _with_inputs_first(mod["main"], num_input, keep)
    mod["main"] = moved
    lifted = relax.transform.LiftTransformParams()(mod)
    main = lifted["main"]
    outputs = main.params[num_input + len(keep):]
    shapes = tuple(tuple(int(d) for d in p.ty.shape.values) for p in outputs)
    dtypes = tuple(str(p.ty.dtype) for p in outputs)
    lifted["main"] = main.with_attr("num_input", num_input)
    return lifted, LiftPlan(tuple(keep), tuple(rest), shapes, dtypes)


def transform_weights(executable, plan: LiftPlan, weights: list[np.ndarray]) -> list[np.ndarray]:
    """Run the library's `main_transform_params` on the weights it needs (the others never
    leave their files)."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(np.ascontiguousarray(weights[i])) for i in plan.sources]
    outputs = vm[TRANSFORM](args)
    arrays = [o.numpy() for o in outputs]
    for array, shape in zip(arrays, plan.transformed_shapes, strict=True):
        if tuple(array.shape) != shape:
            raise RuntimeError(f"{TRANSFORM} returned {array.shape}, main expects {shape}")
    return arrays


def transformed_param_specs(params, plan: LiftPlan):
    """The lifted library's parameter list: untouched weights keep their names and files'
    content; each transform output gets a name saying where it comes from."""

    specs = [params[i] for i in plan.untouched]
    sources = ",".join(params[i].name for i in plan.sources)
    for k, shape in enumerate(plan.transformed_shapes):
        specs.append(ParamSpec(name=f"{TRANSFORM}[{k}]({sources})", file="", shape=shape, dtype=plan.dtype(k)))
    return [ParamSpec(name=s.name, file=param_file_name(i), shape=s.shape, dtype=s.dtype)
            for i, s in enumerate(specs)]


def write_transformed_weights(folder: Path, layout: str, library: Path, plan: LiftPlan, plain_dir: Path,
                              plain_params) -> list:
    """The prepacked weights folder, written atomically: untouched weights hard-linked from the
    plain folder (no second copy of the tables), the transform's outputs computed once by the
    library itself, so they are exactly what its `main` expects."""
    import tvm


    specs = transformed_param_specs(plain_params, plan)
    if holds_weights(folder, layout, specs):
        return specs
    computed = transform_weights(tvm.runtime.load_module(str(loadable_copy(library))), plan, map_weights(plain_dir, plain_params))
    plain_sums = layout_checksums(plain_dir)  # the linked files' content is the plain folder's
    with atomic_dir(folder) as tmp:
        checksums = []
        for spec, index in zip(specs, plan.untouched):
            link_or_copy(Path(plain_dir) / plain_params[index].file, tmp / spec.file)
            checksums.append(plain_sums[index])
        for spec, array in zip(specs[len(plan.untouched):], computed, strict=True):
            data = np.ascontiguousarray(array, dtype=spec.dtype).tobytes()
            (tmp / spec.file).write_bytes(data)
            checksums.append(hashlib.sha256(data).hexdigest())
        write_layout(tmp, layout, specs, checksums)
    return specs
