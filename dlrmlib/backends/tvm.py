"""A TVM library run from Python with the Relax VM."""
from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.files import loadable_copy
from dlrmlib.formats.model import INDICES_INPUT, OFFSETS_INPUT
from dlrmlib.formats.weights import (
    VERIFY_ENV,
    check_tables,
    manifest_checksums,
    manifest_params,
    manifest_weights_dir,
    map_weights,
    read_manifest,
    verify_library,
    verify_weights_folder,
)

DLPACK_ALIGNMENT = 64  # tvm.runtime.from_dlpack refuses data less aligned than this


def advise_random(array: np.ndarray) -> None:
    """Tell the kernel a weight file's pages are read at random (embedding lookups): without
    it, every page fault reads ahead neighbouring rows nobody asked for, which on a table
    larger than memory evicts the hot rows (measured: one batch of 128 read 46% of a 9.3 GiB
    weights folder). Advisory: a plain array, or a system without madvise, is left alone."""
    mapping = getattr(array, "_mmap", None)  # np.memmap keeps its mmap.mmap here
    if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)


def weight_tensor(array: np.ndarray, device):
    """A TVM tensor over the array's own memory when it can be (a file mapping starts on a page
    boundary), so that a weights folder larger than free memory is paged in on demand instead
    of copied; otherwise an aligned copy. A read-only mapping exports only through versioned
    DLPack, which can say "read-only"; TVM never writes a weight."""
    import tvm

    advise_random(array)
    aligned = array.ctypes.data % DLPACK_ALIGNMENT == 0 and array.flags.c_contiguous and array.size > 0
    if aligned and device.dlpack_device_type() == array.__dlpack_device__()[0]:
        return tvm.runtime.from_dlpack(array.__dlpack__(max_version=(1, 0)))
    return tvm.runtime.tensor(np.ascontiguousarray(array), device)


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised array whose data starts on a DLPACK_ALIGNMENT boundary, so TVM can use
    its memory directly."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + DLPACK_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % DLPACK_ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


class TvmBackend:
    name = "tvm"

    def __init__(self, manifest_path: str | Path, weights_dir: str | Path | None = None,
                 verify_weights: bool | None = None):
        """`verify_weights`: hash the weight files against the manifest's checksums (default:
        unless DLRM_VERIFY_WEIGHTS=0); sizes, table shapes and the library are always checked."""
        import tvm
        from tvm import relax

        self.manifest_path = Path(manifest_path)
        self.manifest = read_manifest(self.manifest_path)
        self.version = tvm.__version__
        self.batch_size = int(self.manifest["batch_size"])
        self.tag = self.manifest["build"]["tag"]
        self.name = f"tvm-{self.tag}"
        self.precision = self.manifest.get("precision", {}).get("name", "fp32")
        library = verify_library(self.manifest_path, self.manifest)
        params = manifest_params(self.manifest)
        folder = Path(weights_dir) if weights_dir else manifest_weights_dir(self.manifest_path, self.manifest)
        self.weights_verified = verify_weights_folder(folder, self.manifest["weights"]["layout_id"], params,
                                                      manifest_checksums(self.manifest), verify_weights)
        if verify_weights is None and not self.weights_verified:
            print(f"[tvm] {self.tag}: weight checksums NOT verified ({VERIFY_ENV}=0)", file=sys.stderr)
        self.tables = np.asarray(check_tables(self.manifest_path, self.manifest), dtype=np.int64)
        self.one_per_bag = self.manifest["embedding"]["bags"] == "one_per_bag"
        # Manifests from before multi-hot test data have no ids_per_bag: one id per bag.
        self.ids_per_bag = int(self.manifest["embedding"].get("ids_per_bag", 1))
        self.input_specs = self.manifest["inputs"]
        device = tvm.cpu()
        try:
            self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(loadable_copy(library))), device)
        except Exception as e:
            raise DlrmError(f"TVM cannot load {library}: {e}") from None
        # The weight files' memory maps themselves, as the native runner uses them: no second copy.
        self.params = [weight_tensor(a, device) for a in map_weights(folder, params)]
        self.main = self.vm["main"]
        # Input buffers made once and refilled per call, as a serving loop (and dlrm_infer) does:
        # numpy views of the very tensors `main` reads, so a call costs one np.copyto per input
        # (TVM's own copyfrom costs ~6 us each, a tenth of the whole model at batch 1).
        self.input_views = [aligned_empty(spec["shape"], spec["dtype"]) for spec in self.input_specs]
        self.inputs = [tvm.runtime.from_dlpack(view) for view in self.input_views]
        self.input_names = [spec["name"] for spec in self.input_specs]
        self.call_args = [*self.inputs, *self.params]
        self.tables_unsigned = self.tables.astype(np.uint64)[:, None]
        self.one_per_bag_offsets = np.broadcast_to(np.arange(self.batch_size), (len(self.tables), self.batch_size))

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """Inputs a kernel can take: right shapes and dtypes, ids inside their tables, offsets
        0..B-1 for a one-per-bag build. TVM's gather does no bounds check."""
        for spec in self.input_specs:
            array = inputs.get(spec["name"])
            if array is None:
                raise DlrmError(f"input {spec['name']!r} missing")
            if list(array.shape) != spec["shape"] or array.dtype != np.dtype(spec["dtype"]):
                per_bag = (f" ({self.ids_per_bag} id(s) per bag x batch {self.batch_size}; was the input made for "
                           "another --ids-per-bag?)" if spec["name"] == INDICES_INPUT else "")
                raise DlrmError(f"input {spec['name']!r} is {array.dtype} {list(array.shape)}, the library "
                                f"takes {spec['dtype']} {spec['shape']}{per_bag}")
        ids = inputs[INDICES_INPUT]
        # As unsigned, a negative id is huge: one comparison checks both ends (batch 1: ~2 us).
        if not (ids.view(f"u{ids.dtype.itemsize}") < self.tables_unsigned).all():
            table, pos = np.argwhere((ids < 0) | (ids >= self.tables[:, None]))[0]
            raise DlrmError(f"id {ids[table, pos]} at position {pos} is out of range for table {table} "
                            f"with {self.tables[table]} rows")
        offsets = inputs[OFFSETS_INPUT]
        if self.one_per_bag:
            if not (offsets == self.one_per_bag_offsets).all():
                raise DlrmError("this library was built with the one-index-per-bag fast path: offsets must be "
                                "0..B-1 in every table; build with bags='any' for multi-hot bags")
        elif (np.diff(offsets, axis=1) < 0).any() or (offsets < 0).any() or (offsets > ids.shape[1]).any():
            table = int(np.argwhere((np.diff(offsets, axis=1) < 0).any(axis=1) | (offsets < 0).any(axis=1)
                                    | (offsets > ids.shape[1]).any(axis=1))[0, 0])
            raise DlrmError(f"offsets of table {table} are not a non-decreasing sequence within "
                            f"[0, {ids.shape[1]}]: {offsets[table].tolist()}")

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.check(inputs)
        for view, name in zip(self.input_views, self.input_names):
            np.copyto(view, inputs[name])
        try:
            return np.array(np.from_dlpack(self.main(*self.call_args)))
        except Exception as e:  # TVM's own argument checks, e.g. a hand-edited manifest
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DlrmError(f"the library {self.manifest['library']['file']} refused the call: {first} "
                            f"(does {self.manifest_path.name} still describe that library?)") from None
