"""The weights folder and the manifest: the contract between the library and its runners.

One raw file per runtime parameter (C order, little-endian), in exactly the order, shape and
dtype the library's `main` takes them; the layout id ties a weights folder to the builds that
can use it. See docs/formats.md.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import atomic_dir, read_json, sha256_file, write_json
from dlrmlib.formats.normalise import WEIGHT_TYPES, load_graph

MANIFEST_FORMAT = "dlrm-manifest"
MANIFEST_VERSION = 1
LAYOUT_FILE = "layout.json"
COPY_CHUNK = 1 << 24


@dataclass(frozen=True)
class ParamSpec:
    """One runtime parameter of the library."""

    name: str
    file: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "bytes": self.bytes}

    @classmethod
    def from_dict(cls, d: dict) -> "ParamSpec":
        return cls(name=d["name"], file=d["file"], shape=tuple(int(s) for s in d["shape"]), dtype=d["dtype"])


def param_file_name(index: int) -> str:
    return f"p{index:03d}.bin"


def layout_id(source_id: str, params: list[ParamSpec], transform: str | None) -> str:
    """Same id <=> byte-for-byte the same weights folder."""
    blob = json.dumps({"source": source_id, "params": [p.to_dict() for p in params], "transform": transform},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- writing ---------------------------------------------------------------------------------

def initializer_chunks(tensor: TensorProto, model_dir: Path) -> Iterator[bytes]:
    """A weight's bytes straight from the ONNX file, chunk by chunk, without loading a 40M-row
    table into memory."""
    if tensor.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        length = int(info.get("length", int(np.prod(tensor.dims, dtype=np.int64)) * itemsize))
        with open(model_dir / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            remaining = length
            while remaining:
                block = f.read(min(COPY_CHUNK, remaining))
                if not block:
                    raise DlrmError(f"external data {model_dir / info['location']} ended early "
                                    f"while reading {tensor.name!r}")
                remaining -= len(block)
                yield block
    elif tensor.raw_data:
        yield tensor.raw_data
    else:
        yield np.ascontiguousarray(numpy_helper.to_array(tensor)).astype(
            np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")).tobytes()


def array_chunks(array: np.ndarray) -> Iterator[bytes]:
    yield np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def holds_weights(folder: Path, layout: str, params: list[ParamSpec]) -> bool:
    """Whether `folder` is a complete weights folder of this layout (one to reuse); an
    incomplete or stale one is to be written again."""
    if not Path(folder).is_dir():
        return False
    try:
        verify_weights_folder(folder, layout, params)
        return True
    except DlrmError:
        return False


def write_weights_folder(folder: Path, layout: str, params: list[ParamSpec],
                         sources: Iterable[Callable[[], Iterator[bytes]]], progress=None) -> Path:
    """Write every parameter's bytes and `layout.json`, atomically (a half-written folder never
    appears under its final name). Reuses an existing complete folder of the same layout."""
    if holds_weights(folder, layout, params):
        return folder
    with atomic_dir(folder) as tmp:
        for spec, source in zip(params, sources, strict=True):
            written = 0
            with open(tmp / spec.file, "wb") as f:
                for block in source():
                    f.write(block)
                    written += len(block)
            if written != spec.bytes:
                raise DlrmError(f"parameter {spec.name!r}: wrote {written} bytes, expected {spec.bytes}")
            if progress:
                progress(spec)
        write_json(tmp / LAYOUT_FILE, {"layout_id": layout, "params": [p.to_dict() for p in params]})
    return folder


# -- checking and reading --------------------------------------------------------------------

def verify_weights_folder(folder: Path, layout: str, params: list[ParamSpec]) -> None:
    """The folder holds exactly the files the manifest describes, each of the right size."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DlrmError(f"weights folder not found: {folder}")
    meta = read_json(folder / LAYOUT_FILE)
    if meta.get("layout_id") != layout:
        raise DlrmError(f"weights folder {folder} has layout {meta.get('layout_id')!r}, the library expects "
                        f"{layout!r}: it was written for another build or model")
    if [ParamSpec.from_dict(p) for p in meta.get("params", [])] != list(params):
        raise DlrmError(f"the parameter list of {folder / LAYOUT_FILE} differs from the manifest's: "
                        "one of them was edited by hand, or they come from different builds")
    for spec in params:
        path = folder / spec.file
        if not path.is_file():
            raise DlrmError(f"weight file missing: {path} (parameter {spec.name!r})")
        size = path.stat().st_size
        if size != spec.bytes:
            raise DlrmError(f"weight file {path} has {size} bytes, expected {spec.bytes} for {spec.name!r} "
                            f"{list(spec.shape)} {spec.dtype} (truncated or from another build?)")


def map_weights(folder: Path, params: list[ParamSpec]) -> list[np.ndarray]:
    """Each parameter as a read-only memory map: no copy until a runtime asks for one."""
    return [np.memmap(Path(folder) / p.file, dtype=np.dtype(p.dtype).newbyteorder("<"), mode="r",
                      shape=p.shape) if p.bytes else np.zeros(p.shape, p.dtype) for p in params]


# -- manifest --------------------------------------------------------------------------------

def write_manifest(path: Path, manifest: dict) -> Path:
    return write_json(path, {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, **manifest})


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    manifest = read_json(path)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DlrmError(f"{path} is not a dlrm manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise DlrmError(f"{path} has manifest version {manifest.get('format_version')}, "
                        f"this dlrmlib reads version {MANIFEST_VERSION}")
    return manifest


def manifest_params(manifest: dict) -> list[ParamSpec]:
    return [ParamSpec.from_dict(p) for p in manifest["params"]]


def manifest_weights_dir(manifest_path: Path, manifest: dict) -> Path:
    return (Path(manifest_path).parent / manifest["weights"]["dir"]).resolve()


def verify_library(manifest_path: Path, manifest: dict, library: Path | None = None) -> Path:
    """The library file is the one this manifest was written with."""
    library = Path(library) if library else Path(manifest_path).parent / manifest["library"]["file"]
    if not library.is_file():
        raise DlrmError(f"library not found: {library}")
    if sha256_file(library) != manifest["library"]["sha256"]:
        raise DlrmError(f"library {library} does not match manifest {manifest_path}: "
                        "they come from different builds")
    return library


def runtime_params(model: onnx.ModelProto) -> list[ParamSpec]:
    """The library's parameters: the normalised model's initializers, in order."""
    specs = []
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.data_type not in WEIGHT_TYPES:
            raise DlrmError(f"initializer {tensor.name!r} is not floating point; normalise the model first")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).name
        specs.append(ParamSpec(name=tensor.name, file=param_file_name(i), shape=tuple(tensor.dims), dtype=dtype))
    return specs


def model_identity(path: Path, model: onnx.ModelProto | None = None) -> str:
    """A cheap content id of a model: its graph file's hash plus each external data file's
    size and time (hashing 96 GB of weights at every build would take minutes). `model`, the
    graph already read from `path`, saves reading it again."""
    digest = hashlib.sha256(sha256_file(path).encode())
    model = model if model is not None else load_graph(path)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    for name in sorted(locations):
        stat = (path.parent / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def extract_weights(experiment: Experiment, model: onnx.ModelProto | None = None, model_id: str | None = None,
                    progress: Callable | None = None) -> tuple[Path, list[ParamSpec], str]:
    """The experiment's plain weights folder (no transform): each initializer's bytes copied
    out of the ONNX model in the library's parameter order; (folder, params, layout id).
    `model` and `model_id`, when the caller has them, save reading and hashing the graph again."""
    model = model if model is not None else load_graph(experiment.normalised_model)
    params = runtime_params(model)
    layout = layout_id(model_id or model_identity(experiment.normalised_model, model), params, None)
    tensors = list(model.graph.initializer)
    folder = write_weights_folder(
        experiment.weights_root / layout, layout, params,
        [lambda t=t: initializer_chunks(t, experiment.model_dir) for t in tensors], progress)
    return folder, params, layout
