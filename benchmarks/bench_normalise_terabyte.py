"""Normalising the terabyte preset (96 GB of tables) reads the graph, never the weights.

    python benchmarks/bench_normalise_terabyte.py [--preset terabyte] [--batch-size 128] [--bags one_per_bag]

Writes the preset's model as `dlrm prepare --preset terabyte` does (same graph, same
external-data layout: page-aligned tables in model.onnx.data), except that the data file is
left a hole of the right size (a sparse file: no disk, no time spent drawing 96 GB of random
numbers), then runs prepare's own normalising step (`dlrmlib.prepare.normalise_source`: load
the graph, check the external data, recognise the bags by probing, fold the shape arithmetic
with ONNX Runtime on the weight-free graph) in this process and prints what it measured: peak
anonymous memory (sampled every 10 ms; a copy of any table would show here) and its growth
over the process's baseline, the time, and how much of the data file was ever read.
tests/test_beyond_ram.py runs `measure` on the terabyte preset (it costs seconds and no disk).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

GIB = 2**30
LIMIT = 2 * GIB  # the bound on peak anonymous memory


class _HoleWriter:
    """model._WeightWriter's layout (page-aligned offsets in one data file) without writing
    the large tensors: the data file gets their size as a hole."""

    def __init__(self, data_path: Path):
        from dlrmlib.formats.model import _WeightWriter

        self.inner = _WeightWriter(data_path)
        self.end = 0

    @property
    def initializers(self):
        return self.inner.initializers

    def add(self, name: str, shape: tuple[int, ...], chunks) -> None:
        from onnx import TensorProto

        from dlrmlib.formats.model import ALIGN, EXTERNAL_THRESHOLD

        nbytes = math.prod(shape) * 4
        if nbytes < EXTERNAL_THRESHOLD:
            self.inner.add(name, shape, chunks)
            return
        offset = -self.end % ALIGN + self.end
        self.end = offset + nbytes
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.inner.location), ("offset", str(offset)), ("length", str(nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.inner.initializers.append(tensor)


def write_hollow_model(preset: str, folder: Path, style: str = "loop") -> Path:
    """The preset's model.onnx + a sparse model.onnx.data of the real size."""
    from onnx import helper

    from dlrmlib.formats.model import OPSET, build_graph
    from dlrmlib.formats.presets import preset_config

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "model.onnx.data"
    writer = _HoleWriter(data)
    graph = build_graph(preset_config(preset), writer, seed=0, style=style)
    with open(data, "wb") as f:
        f.truncate(writer.end)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dlrmlib")
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _read_bytes() -> int:
    """Bytes this process has read from storage or the page cache so far (Linux rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1


def measure(preset: str = "terabyte", batch_size: int = 128, bags: str = "one_per_bag",
            folder: Path | None = None) -> dict:
    """Peak anonymous memory of prepare's normalising step on the preset's model."""
    from dlrmlib.core.machine import PeakAnon, cpu_description
    from dlrmlib.prepare import normalise_source

    with tempfile.TemporaryDirectory(prefix="dlrm-bench-normalise-") as tmp:
        path = write_hollow_model(preset, Path(folder or tmp))
        data = path.with_name("model.onnx.data")
        normalise_source(path, {"batch_size": 1, "bags": bags})  # warm: imports, ORT's first session
        read_before, started = _read_bytes(), time.perf_counter()
        with PeakAnon() as peak:
            normalised = normalise_source(path, {"batch_size": batch_size, "bags": bags})
        seconds = time.perf_counter() - started
        result = {
            "preset": preset, "batch_size": batch_size, "bags": bags,
            "data_file_bytes": data.stat().st_size, "data_file_disk_bytes": data.stat().st_blocks * 512,
            "graph_bytes": path.stat().st_size,
            "peak_anon_bytes": peak.peak, "anon_growth_bytes": peak.growth,
            "bytes_read": _read_bytes() - read_before, "seconds": seconds,
            "nodes": len(normalised.graph.node),
            "loops_left": sum(n.op_type == "Loop" for n in normalised.graph.node),
            "cpu": cpu_description(), "machine_shared": True,
        }
    result["within_limit"] = result["peak_anon_bytes"] < LIMIT
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="terabyte")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bags", default="one_per_bag", choices=["one_per_bag", "any"])
    args = parser.parse_args(argv)
    result = measure(args.preset, args.batch_size, args.bags)
    print(json.dumps(result, indent=1))
    print(f"{args.preset}: {result['data_file_bytes'] / 1e9:.1f} GB of tables; normalising took "
          f"{result['seconds']:.1f} s, peak anonymous memory {result['peak_anon_bytes'] / GIB:.2f} GiB "
          f"(+{result['anon_growth_bytes'] / 2**20:.0f} MiB over the baseline), read "
          f"{result['bytes_read'] / 2**20:.1f} MiB; on {result['cpu']} (machine shared)")
    return 0 if result["within_limit"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
