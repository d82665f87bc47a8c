"""Tables beyond RAM: a DLRM whose embedding tables are a large share of this machine's memory,
run from its mapped weights folder by the native runner and by the Python path.

    python benchmarks/bench_beyond_ram.py [--table-rows 750000] [--memory-limit-gib 3] [--keep]

Generates the MLPerf-architecture model (`small` preset widths) with `--table-rows` rows per
table (750,000: 9.3 GiB of embeddings; the model and its weights folder take about twice that
on disk, checked first), prepares and builds it (untuned), then measures, each from a cold page
cache (the weight files are evicted first):
  - time to first inference: a fresh process, from start to the first batch's scores (the
    native runner on a one-batch test data folder; the Python path: import, load, one batch);
  - steady throughput (samples/s) after one warm-up pass over the Zipf-skewed test data;
  - resident memory: anonymous (a copy of the weights would show here) and file-backed.
Then the same again inside a memory cgroup whose limit (`--memory-limit-gib`) is smaller than
the weights folder, when this machine lets us make one (cgroup v1 or v2, as root); otherwise
it says so. The experiment is deleted at the end unless `--keep`.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

EXPERIMENT = "bench-beyond-ram"
GIB = 2**30


# -- memory and page cache -------------------------------------------------------------------

def weight_files(weights_dir: Path) -> list[Path]:
    return sorted(Path(weights_dir).glob("p*.bin"))


def evict(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (written back first), so the next run
    reads them from disk: a cold start, without touching anyone else's cache."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: list[Path]) -> float:
    """Share of the files' pages in the page cache (mincore on a fresh read-only mapping)."""
    import numpy as np

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    resident = total = 0
    for path in paths:
        size = path.stat().st_size
        if size == 0:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
            view = np.frombuffer(m, dtype=np.uint8)
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = ctypes.create_string_buffer(pages)
            failed = libc.mincore(ctypes.c_void_p(view.ctypes.data), size, vec) != 0
            del view
            if failed:
                return float("nan")
            resident += np.frombuffer(vec.raw, dtype=np.uint8).__and__(1).sum()
            total += pages
    return float(resident / total) if total else 0.0


# -- a memory cgroup -------------------------------------------------------------------------

class MemoryCgroup:
    """A child memory cgroup of this process's own, with a hard limit; processes started
    with `preexec` run inside it. Works with cgroup v1 or v2 when we may write there."""

    def __init__(self, limit_bytes: int):
        self.limit = int(limit_bytes)
        self.path, self.version = self._make()

    @staticmethod
    def _own_cgroups() -> tuple[Path | None, Path | None]:
        v1 = v2 = None
        mounts = {}
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
            if fstype == "cgroup" and "memory" in options.split(","):
                mounts["v1"] = Path(fields[4])
            elif fstype == "cgroup2":
                mounts.setdefault("v2", Path(fields[4]))
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if "memory" in controllers.split(",") and "v1" in mounts:
                v1 = mounts["v1"] / rel.lstrip("/")
            elif controllers == "" and "v2" in mounts:
                candidate = mounts["v2"] / rel.lstrip("/")
                if "memory" in (candidate / "cgroup.controllers").read_text().split():
                    v2 = candidate
        return v1, v2

    def _make(self) -> tuple[Path, int]:
        v1, v2 = self._own_cgroups()
        for parent, version, limit_file in ((v2, 2, "memory.max"), (v1, 1, "memory.limit_in_bytes")):
            if parent is None:
                continue
            child = parent / f"dlrm-bench-{os.getpid()}"
            try:
                child.mkdir(exist_ok=True)
                (child / limit_file).write_text(str(self.limit))
                return child, version
            except OSError:
                if child.exists():
                    child.rmdir()
        raise OSError("no writable memory cgroup (v1 or v2) for this process")

    def preexec(self) -> None:
        """In the child, before exec: move itself into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        path = self.path / name
        return int(path.read_text()) if path.exists() else -1

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def reset_peak(self) -> None:
        if self.version == 1:
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError as e:
            print(f"note: could not remove cgroup {self.path}: {e}")


# -- the two runtimes, each in a fresh process ------------------------------------------------

def run_process(command: list[str], cgroup: MemoryCgroup | None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=cgroup.preexec if cgroup else None)
    return done, time.perf_counter() - started


def native_run(binary, exp, manifest, testdata, warmup, iterations, cgroup, tmp: Path) -> dict:
    from dlrmlib.formats.weights import manifest_weights_dir, read_manifest

    m = read_manifest(manifest)
    out = tmp / "native.json"
    command = [str(binary), str(manifest.parent / m["library"]["file"]), str(manifest),
               str(manifest_weights_dir(manifest, m)), str(testdata), "--warmup", str(warmup),
               "--iterations", str(iterations), "--json", str(out)]
    done, wall = run_process(command, cgroup)
    if done.returncode != 0:
        return {"failed": f"exit {done.returncode}: {done.stderr.strip()[-300:]}", "wall_s": wall}
    return {**json.loads(out.read_text()), "wall_s": wall}


def python_run(manifest, testdata, steady_passes, cgroup) -> dict:
    command = [sys.executable, __file__, "--python-worker", str(manifest), str(testdata), str(steady_passes)]
    done, wall = run_process(command, cgroup)
    if done.returncode != 0:
        return {"failed": f"exit {done.returncode}: {done.stderr.strip()[-300:]}", "wall_s": wall}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall}


def python_worker(manifest: str, testdata: str, steady_passes: int) -> None:
    """In a fresh process: import, load (map), first batch, then steady passes; JSON to stdout."""
    started = time.perf_counter()
    import numpy as np
    import psutil
    import tvm  # noqa: F401 - imported here so that `load_s` is the load alone

    from dlrmlib.backends import batch_inputs
    from dlrmlib.backends.tvm import TvmBackend
    from dlrmlib.formats.testdata import read_test_data

    imported = time.perf_counter()
    backend = TvmBackend(manifest)
    loaded = time.perf_counter()
    data = read_test_data(testdata)
    b = backend.batch_size
    batches = batch_inputs(data.dense, data.sparse, b)
    backend.predict(batches[0])
    first = time.perf_counter()
    for batch in batches:  # warm-up pass: fault in the pages this data touches
        backend.predict(batch)
    steady_start = time.perf_counter()
    for _ in range(steady_passes):
        for batch in batches:
            backend.predict(batch)
    steady = time.perf_counter() - steady_start
    info = psutil.Process().memory_info()
    print(json.dumps({"import_s": imported - started, "load_s": loaded - imported,
                      "first_inference_s": first - started, "first_batch_s": first - loaded,
                      "samples_per_s": steady_passes * len(batches) * b / steady,
                      "rss_anon_kb": (info.rss - info.shared) // 1024, "rss_file_kb": info.shared // 1024,
                      "peak_rss_kb": _peak_rss_kb(), "batches": len(batches), "batch_size": b,
                      "check": float(np.isfinite(backend.predict(batches[0])).all())}))


def _peak_rss_kb() -> int:
    """VmHWM: this process image's peak RSS (getrusage's maxrss would carry the parent's
    peak across a vfork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


# -- the benchmark ---------------------------------------------------------------------------

def check_disk(root: Path, table_bytes: int) -> None:
    need = int(2.1 * table_bytes) + 2 * GIB
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need:
        sys.exit(f"not enough disk: the model and its weights folder need about {need / GIB:.1f} GiB "
                 f"in {root}, {free / GIB:.1f} GiB free")


def prepare_and_build(args, log) -> tuple:
    from dlrmlib.building.build import build
    from dlrmlib.core.experiment import Experiment
    from dlrmlib.core.machine import PeakAnon
    from dlrmlib.prepare import prepare

    with PeakAnon() as p:
        started = time.perf_counter()
        exp = prepare(EXPERIMENT, preset="small", table_rows=args.table_rows, batch_size=args.batch_size,
                      samples=args.samples, root=args.root, log=log)
        prepare_s = time.perf_counter() - started
    existing = Experiment.open(EXPERIMENT, args.root).builds()
    with PeakAnon() as b:
        started = time.perf_counter()
        manifest = existing[-1] if (args.reuse and existing) else build(exp, verify=False, log=log).manifest
        build_s = time.perf_counter() - started
    return exp, manifest, {"prepare_s": prepare_s, "prepare_peak_anon_gib": (p.peak - p.start) / GIB,
                           "build_s": build_s, "build_peak_anon_gib": (b.peak - b.start) / GIB}


def one_batch_testdata(exp, batch_size: int, folder: Path) -> Path:
    """The first batch of the test data, for timing a start to its first scores."""
    from dlrmlib.formats.testdata import read_test_data, read_test_meta, write_test_data

    data = read_test_data(exp.testdata_dir).head(batch_size)
    return write_test_data(folder, data, read_test_meta(exp.testdata_dir))


def measure_all(binary, exp, manifest, files, cgroup, tmp: Path, args) -> dict:
    """Cold first inference and steady throughput of both runtimes (in `cgroup`, if any)."""
    one = one_batch_testdata(exp, args.batch_size, tmp / "one-batch")
    batches = -(-args.samples // args.batch_size)
    results = {}
    for name, run in (
            ("native first", lambda: native_run(binary, exp, manifest, one, 0, 1, cgroup, tmp)),
            ("native steady", lambda: native_run(binary, exp, manifest, exp.testdata_dir, batches,
                                                 args.steady_passes, cgroup, tmp)),
            ("python", lambda: python_run(manifest, exp.testdata_dir, args.steady_passes, cgroup))):
        evict(files)
        cold = resident_fraction(files)
        if cgroup:
            cgroup.reset_peak()
        result = run()
        result["resident_before"] = cold
        result["resident_after"] = resident_fraction(files)
        if cgroup:
            result["cgroup_peak_gib"] = cgroup.peak_bytes() / GIB
            result["cgroup_oom_kills"] = cgroup.oom_kills()
        results[name] = result
    return results


def print_results(label: str, results: dict, weights_bytes: int) -> None:
    """One line per run: start to first scores, load (map) time, steady samples/s, memory."""
    print(f"\n{label}")
    print(f"{'run':<14}{'to 1st scores s':>16}{'load s':>8}{'samples/s':>10}{'anon RSS GiB':>13}"
          f"{'file RSS GiB':>13}{'peak RSS GiB':>13}{'paged in before/after':>23}{'cgroup peak GiB':>16}")
    for name, r in results.items():
        if "failed" in r:
            print(f"{name:<14}FAILED after {r['wall_s']:.1f} s: {r['failed']}")
            continue
        native = "native" in name
        first = r["wall_s"] if name == "native first" else r.get("first_inference_s")
        load = (r["weights_map_ms"] + r["load_ms"]) / 1e3 if native else r["load_s"]
        rate = None if name == "native first" else r.get("throughput_samples_per_s", r.get("samples_per_s"))
        paged = f"{r['resident_before']:.1%} / {r['resident_after']:.1%}"
        print(f"{name:<14}{_f(first, 16, 2)}{_f(load, 8, 2)}{_f(rate, 10, 1)}{_f(r['rss_anon_kb'] / 2**20, 13, 2)}"
              f"{_f(r['rss_file_kb'] / 2**20, 13, 2)}{_f(r['peak_rss_kb'] / 2**20, 13, 2)}{paged:>23}"
              f"{_f(r.get('cgroup_peak_gib'), 16, 2)}")
    print(f"weights folder {weights_bytes / GIB:.2f} GiB; 'to 1st scores': a fresh process from start to its "
          "first batch's scores, weights evicted from the page cache first")


def _f(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--python-worker":
        python_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    from dlrmlib.core.experiment import experiments_root

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-rows", type=int, default=750_000, help="rows in each of the 26 tables")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=1024, help="test samples (Zipf-skewed ids)")
    parser.add_argument("--steady-passes", type=int, default=1, help="measured passes over the test data")
    parser.add_argument("--memory-limit-gib", type=float, default=3.0,
                        help="cgroup memory limit for the limited runs (0: skip them)")
    parser.add_argument("--root", type=Path, default=None, help="experiments root (default: the usual one)")
    parser.add_argument("--keep", action="store_true", help="keep the experiment (about 2x the tables on disk)")
    parser.add_argument("--reuse", action="store_true", help="reuse a kept experiment's build")
    args = parser.parse_args()
    args.root = (args.root or experiments_root()).resolve()

    import psutil

    from dlrmlib.building.native import native_binary
    from dlrmlib.core.target import cpu_description
    from dlrmlib.formats.presets import preset_config
    from dlrmlib.formats.weights import manifest_weights_dir, read_manifest

    table_bytes = preset_config("small", args.table_rows).embedding_bytes
    memory = psutil.virtual_memory()
    print(f"{cpu_description()}, {os.cpu_count()} cores, {memory.total / GIB:.1f} GiB memory "
          f"({memory.available / GIB:.1f} GiB available); tables {table_bytes / GIB:.2f} GiB "
          f"({table_bytes / memory.total:.0%} of memory)")
    check_disk(args.root, table_bytes)
    started = time.perf_counter()
    exp, manifest, setup = prepare_and_build(args, log=lambda s: print(f"  {time.perf_counter() - started:7.1f}s {s}"))
    files = weight_files(manifest_weights_dir(manifest, read_manifest(manifest)))
    weights_bytes = sum(f.stat().st_size for f in files)
    print(f"prepare {setup['prepare_s']:.0f} s (peak anonymous memory +{setup['prepare_peak_anon_gib']:.2f} GiB), "
          f"build {setup['build_s']:.0f} s (+{setup['build_peak_anon_gib']:.2f} GiB); peak RSS so far "
          f"{_peak_rss_kb() / 2**20:.2f} GiB (file pages included: ONNX Runtime maps the model's data)")
    binary = native_binary()
    tmp = exp.root / "bench-tmp"
    tmp.mkdir(exist_ok=True)
    try:
        print_results("unlimited (page cache may hold everything)",
                      measure_all(binary, exp, manifest, files, None, tmp, args), weights_bytes)
        if args.memory_limit_gib > 0:
            limited_runs(binary, exp, manifest, files, tmp, args, weights_bytes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(exp.root, ignore_errors=True)
            print(f"deleted {exp.root}")
    return 0


def limited_runs(binary, exp, manifest, files, tmp, args, weights_bytes) -> None:
    limit = int(args.memory_limit_gib * GIB)
    try:
        cgroup = MemoryCgroup(limit)
    except OSError as e:
        print(f"\nmemory-limited runs skipped: {e}; compare anonymous RSS with the weights' size above instead")
        return
    try:
        print_results(f"in a memory cgroup (v{cgroup.version}) limited to {limit / GIB:.1f} GiB "
                      f"({limit / weights_bytes:.0%} of the weights)",
                      measure_all(binary, exp, manifest, files, cgroup, tmp, args), weights_bytes)
    finally:
        cgroup.remove()


if __name__ == "__main__":
    sys.exit(main())
