"""The weights folder and the manifest: the contract between the library and its runners.

One raw file per runtime parameter (C order, little-endian), in exactly the order, shape and
dtype the library's `main` takes them; the layout id ties a weights folder to the builds that
can use it. See docs/formats.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.files import atomic_dir, atomic_path, read_json, sha256_file, write_json
from dlrmlib.formats.normalise import WEIGHT_TYPES, load_graph

MANIFEST_FORMAT = "dlrm-manifest"
MANIFEST_VERSION = 2  # 2: weight checksums, embedding.table_params, manifest_sha256
LAYOUT_FILE = "layout.json"
COPY_CHUNK = 1 << 24
VERIFY_ENV = "DLRM_VERIFY_WEIGHTS"  # "0": skip hashing the weight files at load (docs/formats.md)
SEAL_KEY = "manifest_sha256"
# The seal is the manifest's last member, as write_manifest writes it (docs/formats.md).
SEAL = re.compile(rb',\n  "manifest_sha256": "([0-9a-f]{64})"\n}\n\Z')


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
    """Whether `folder` is a weights folder of this layout to reuse, checked file by file
    (content too, unless DLRM_VERIFY_WEIGHTS=0); False when there is none, or one written
    before checksums (to be written again). A damaged one is a DlrmError, not rewritten
    silently: something changed files it should not have."""
    meta_path = Path(folder) / LAYOUT_FILE
    if not meta_path.is_file():
        return False
    meta = read_json(meta_path)
    if meta.get("layout_id") != layout or not all("sha256" in p for p in meta.get("params", [{}])):
        return False
    verify_weights_folder(folder, layout, params)
    return True


def write_weights_folder(folder: Path, layout: str, params: list[ParamSpec],
                         sources: Iterable[Callable[[], Iterator[bytes]]], progress=None) -> Path:
    """Write every parameter's bytes and `layout.json`, atomically (a half-written folder never
    appears under its final name). Reuses an existing complete folder of the same layout."""
    if holds_weights(folder, layout, params):
        return folder
    with atomic_dir(folder) as tmp:
        checksums = []
        for spec, source in zip(params, sources, strict=True):
            written, digest = 0, hashlib.sha256()  # hashed as written: no second read
            with open(tmp / spec.file, "wb") as f:
                for block in source():
                    f.write(block)
                    digest.update(block)
                    written += len(block)
            if written != spec.bytes:
                raise DlrmError(f"parameter {spec.name!r}: wrote {written} bytes, expected {spec.bytes}")
            checksums.append(digest.hexdigest())
            if progress:
                progress(spec)
        write_layout(tmp, layout, params, checksums)
    return folder


def write_layout(folder: Path, layout: str, params: list[ParamSpec], checksums: list[str]) -> None:
    """`layout.json`: the layout id and each parameter with its file's SHA-256."""
    write_json(Path(folder) / LAYOUT_FILE, {"layout_id": layout, "params": param_entries(params, checksums)})


def param_entries(params: list[ParamSpec], checksums: list[str]) -> list[dict]:
    """The parameter list as layout.json and the manifest write it."""
    return [{**p.to_dict(), "sha256": c} for p, c in zip(params, checksums, strict=True)]


# -- checking and reading --------------------------------------------------------------------

def verify_enabled() -> bool:
    """Whether loads hash the weight files (the default); DLRM_VERIFY_WEIGHTS=0 skips it."""
    return os.environ.get(VERIFY_ENV, "1").strip() != "0"


def layout_checksums(folder: Path) -> list[str]:
    """The SHA-256 of each parameter file that the folder's layout.json records."""
    path = Path(folder) / LAYOUT_FILE
    entries = read_json(path).get("params", [])
    if not all(isinstance(p, dict) and isinstance(p.get("sha256"), str) for p in entries):
        raise DlrmError(f"{path} records no checksum for some weight file: written by an older dlrmlib; "
                        "delete the folder and run `dlrm build` again")
    return [p["sha256"] for p in entries]


RACY_NS = 2_000_000_000
_HASHED: dict[tuple, str] = {}  # (path, inode, size, mtime, ctime) -> SHA-256, for this process


def sha256_files(paths: list[Path]) -> list[str]:
    """Each file's SHA-256, files hashed in parallel (hashlib releases the GIL while hashing).
    A file hashed before by this process and unchanged since (same inode, size, mtime and
    ctime: any write moves ctime) is not read again: bench, LoadGen and profile open several
    runners on one weights folder."""
    keys = [(str(p), (s := os.stat(p)).st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for p in paths]
    todo = [p for p, key in zip(paths, keys) if key not in _HASHED]
    workers = max(1, min(len(todo), len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(workers) as pool:
        fresh = dict(zip(map(str, todo), pool.map(sha256_file, todo)))
    now = time.time_ns()
    for key in keys:  # as git does: a file changed in the last seconds may change again unseen
        if key[0] in fresh and now - key[4] > RACY_NS:  # (timestamps tick only every few ms)
            _HASHED[key] = fresh[key[0]]
    return [_HASHED.get(key) or fresh[key[0]] for key in keys]


def verify_weights_folder(folder: Path, layout: str, params: list[ParamSpec], checksums: list[str] | None = None,
                          content: bool | None = None) -> bool:
    """The folder holds exactly the files the manifest describes, each of the right size and,
    when `content` (default: unless DLRM_VERIFY_WEIGHTS=0), with the SHA-256 recorded in
    layout.json and in `checksums` (the manifest's). Returns whether the content was hashed."""
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
    recorded = layout_checksums(folder)
    if checksums is not None and list(checksums) != recorded:
        raise DlrmError(f"the checksums in {folder / LAYOUT_FILE} differ from the manifest's: the folder "
                        "was written again after the build, or edited; rebuild")
    for spec in params:
        path = folder / spec.file
        if not path.is_file():
            raise DlrmError(f"weight file missing: {path} (parameter {spec.name!r})")
        size = path.stat().st_size
        if size != spec.bytes:
            raise DlrmError(f"weight file {path} has {size} bytes, expected {spec.bytes} for {spec.name!r} "
                            f"{list(spec.shape)} {spec.dtype} (truncated or from another build?)")
    if not (verify_enabled() if content is None else content):
        return False
    for spec, expected, actual in zip(params, recorded, sha256_files([folder / p.file for p in params])):
        if actual != expected:
            raise DlrmError(f"weight file {folder / spec.file} (parameter {spec.name!r}) does not match its "
                            f"checksum: sha256 {actual}, recorded {expected} (corrupted, or swapped with "
                            "another file)")
    return True


def map_weights(folder: Path, params: list[ParamSpec]) -> list[np.ndarray]:
    """Each parameter as a read-only memory map: no copy until a runtime asks for one."""
    return [np.memmap(Path(folder) / p.file, dtype=np.dtype(p.dtype).newbyteorder("<"), mode="r",
                      shape=p.shape) if p.bytes else np.zeros(p.shape, p.dtype) for p in params]


# -- manifest --------------------------------------------------------------------------------

def write_manifest(path: Path, manifest: dict) -> Path:
    """The manifest, sealed: its last member `manifest_sha256` is the SHA-256 of the text
    without that member, so both runners refuse a manifest edited after the build. (`manifest`
    may be one read back: its own format fields and seal are replaced.)"""
    fields = {k: v for k, v in manifest.items() if k not in ("format", "format_version", SEAL_KEY)}
    body = json.dumps({"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, **fields}, indent=2,
                      default=_plain) + "\n"
    sealed = f'{body[:-3]},\n  "{SEAL_KEY}": "{hashlib.sha256(body.encode()).hexdigest()}"\n}}\n'
    with atomic_path(path) as tmp:
        tmp.write_text(sealed)
    return Path(path)


def _plain(obj):
    """numpy scalars and paths as JSON values (as core.files.write_json writes them)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def check_seal(path: Path, text: bytes) -> None:
    """The manifest is byte for byte what the build wrote."""
    seal = SEAL.search(text)
    if seal is None:
        raise DlrmError(f"{path} has no {SEAL_KEY} as its last member: not written by `dlrm build`, or "
                        "edited after it; rebuild it")
    if hashlib.sha256(text[:seal.start()] + b"\n}\n").hexdigest() != seal.group(1).decode():
        raise DlrmError(f"{path} was edited after the build (its content no longer matches its {SEAL_KEY}); "
                        "restore it or rebuild with `dlrm build`")


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    manifest = read_json(path)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DlrmError(f"{path} is not a dlrm manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise DlrmError(f"{path} has manifest version {manifest.get('format_version')}, "
                        f"this dlrmlib reads version {MANIFEST_VERSION}: rebuild it with `dlrm build`")
    check_seal(path, path.read_bytes())
    for key in ("build", "target"):
        if not isinstance(manifest.get(key), dict):
            raise DlrmError(f"{path} has no {key!r} section: not a manifest written by `dlrm build`")
    return manifest


def manifest_params(manifest: dict) -> list[ParamSpec]:
    return [ParamSpec.from_dict(p) for p in manifest["params"]]


def manifest_checksums(manifest: dict) -> list[str]:
    return [p["sha256"] for p in manifest["params"]]


def manifest_weights_dir(manifest_path: Path, manifest: dict) -> Path:
    return (Path(manifest_path).parent / manifest["weights"]["dir"]).resolve()


def check_tables(manifest_path: Path, manifest: dict) -> list[int]:
    """Each table's row count, checked against its weight parameter: with the parameter's
    file size checked (verify_weights_folder), the rows come from the file, not the manifest
    alone. An id is later checked against these counts before it reaches a kernel."""
    tables, names = manifest["embedding"]["tables"], manifest["embedding"].get("table_params", [])
    params = {p["name"]: p for p in manifest["params"]}
    if len(names) != len(tables):
        raise DlrmError(f"{manifest_path}: embedding.table_params names {len(names)} parameters for "
                        f"{len(tables)} tables")
    for t, (rows, name) in enumerate(zip(tables, names)):
        p = params.get(name)
        if p is None or len(p["shape"]) != 2 or p["shape"][0] != rows:
            raise DlrmError(f"{manifest_path}: embedding.tables[{t}] is {rows} rows, but its table {name!r} "
                            + (f"({p['file']}, {p['bytes']} bytes) is {p['dtype']} {p['shape']}" if p else
                               "is not among its params"))
    return tables


def verify_library(manifest_path: Path, manifest: dict, library: Path | None = None) -> Path:
    """The library file is the one this manifest was written with, and complete."""
    library = Path(library) if library else Path(manifest_path).parent / manifest["library"]["file"]
    if not library.is_file():
        raise DlrmError(f"library not found: {library}")
    if sha256_file(library) != manifest["library"]["sha256"]:
        raise DlrmError(f"library {library} does not match manifest {manifest_path}: "
                        "they come from different builds")
    check_elf(library)
    return library


def check_elf(library: Path) -> None:
    """The ELF headers lie inside the file: loading a truncated library dies of SIGBUS, with
    no message, when the loader touches the missing pages."""
    size = library.stat().st_size
    with open(library, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:5] != b"\x7fELF\x02":
            raise DlrmError(f"{library} is not a 64-bit ELF shared library")
        phoff, shoff = struct.unpack_from("<QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 54)
        needed = max(phoff + phnum * phentsize, shoff + shnum * shentsize)
        f.seek(phoff)
        table = f.read(phnum * phentsize) if phoff + phnum * phentsize <= size else b""
    for i in range(phnum if len(table) == phnum * phentsize == phnum * 56 else 0):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * 56)
        if p_type == 1:  # PT_LOAD
            needed = max(needed, p_offset + p_filesz)
    if needed > size:
        raise DlrmError(f"library {library} is truncated or damaged: {size} bytes, but its ELF headers "
                        f"describe {needed}; rebuild it")


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
