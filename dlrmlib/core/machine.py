"""What a measurement ran on: the machine, the runtimes' versions, the command, and the
machine's measured peaks (for rooflines). Every result carries these, so a number can be
traced to the CPU and software that produced it."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
import time
from importlib import metadata

import numpy as np

from dlrmlib.core.target import cpu_description, cpuinfo_field

# The packages whose versions change a number in this project's results.
VERSIONED_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "onnxruntime", "openvino", "torch", "numpy", "onnx")
# CPU flags that matter for these kernels; the full list is kept too.
KEY_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16", "f16c")


def cpu_flags() -> list[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return (cpuinfo_field("flags") or "").split()


def precision_isa(precision: str, flags: list[str] | None = None) -> str | None:
    """The instruction set a build of `precision` uses on a CPU with these flags (this one's by
    default); None when the CPU cannot run that precision's kernels. int8: AMX tiles (tdpbusd)
    where the CPU has amx_int8 and Linux grants the tile state, else VNNI (vpdpbusd), else AVX2
    (vpmaddwd on the 8-bit values widened to int16); bf16: AMX
    tiles (tdpbf16ps) likewise, else bf16 weights widened to fp32 in registers (any AVX2/AVX-512 CPU)."""
    have = set(cpu_flags() if flags is None else flags)
    vector = "avx512f" if "avx512f" in have else "avx2" if "avx2" in have else None
    if precision == "int8":
        if {"amx_tile", "amx_int8", "avx512bw"} <= have and (flags is not None or amx_permitted()):
            return "amx_int8"
        return "avx512_vnni" if {"avx512_vnni", "avx512bw"} <= have else "avx2" if "avx2" in have else None
    if precision == "bf16":
        if {"amx_tile", "amx_bf16"} <= have and (flags is not None or amx_permitted()):
            return "amx_bf16"
        return f"bf16 storage + {vector} fp32 FMA" if vector else None
    return vector or "x86-64"


def amx_permitted() -> bool:
    """Whether Linux gives this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM for
    XFEATURE_XTILEDATA; kernels before 5.16 cannot): without it a tile instruction is SIGILL."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18) == 0
    except (OSError, AttributeError):
        return False


def machine_info() -> dict:
    """CPU model, core counts and flags, memory, OS: enough to tell two machines apart."""
    flags = cpu_flags()
    info = {
        "cpu": cpu_description(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(usable_cores()),
        "key_flags": [f for f in KEY_FLAGS if f in flags],
        "flags": flags,
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        # Other processes' load when the measurement started: on a shared machine it moves numbers.
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["physical_cores"] = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    return info


def versions() -> dict[str, str | None]:
    """Installed versions of the runtimes and libraries behind the numbers (None: not installed)."""
    found = {}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def utc_now() -> str:
    """Now, as the ISO time (UTC, seconds) every record of this project carries."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def invocation(call: str | None = None) -> dict:
    """How the result was made: the shell command (or that a notebook kernel ran it), the
    Python call with its arguments, and when."""
    argv = sys.argv or [""]
    in_kernel = "ipykernel" in argv[0] or "papermill" in argv[0]
    command = "notebook kernel" if in_kernel else shlex.join([os.path.basename(argv[0]), *argv[1:]])
    return {"command": command, "call": call,
            "started": utc_now()}


def provenance(call: str | None = None) -> dict:
    """Machine, versions and invocation in one block, stored with every result."""
    return {"machine": machine_info(), "versions": versions(), "invocation": invocation(call)}


def usable_cores() -> set[int]:
    """The CPUs this process may run on (all of them unless someone pinned it)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


ALLOWED_CPUS = usable_cores()  # at import, before any runtime could pin this thread


def tvm_pool_threads() -> int:
    """How many threads TVM's CPU pool runs: it takes TVM_NUM_THREADS once, when it starts (set
    to the usable cores by `import dlrmlib` unless the user set it), and ignores later resizing
    (`runtime.config_threadpool` changed nothing measurable, and it pins the calling thread)."""
    return int(os.environ.get("TVM_NUM_THREADS") or len(usable_cores()))


def caption(prov: dict) -> str:
    """A one-line chart caption: exact CPU, cores, key flags and versions."""
    m, v = prov["machine"], prov["versions"]
    runtimes = ", ".join(f"{k} {val}" for k, val in v.items() if val and k not in ("numpy", "onnx", "apache-tvm-ffi"))
    load = f", load average {m['load_average'][0]:.1f} at the start" if m.get("load_average") else ""
    return (f"{m['cpu']}, {m['logical_cores']} logical cores ({' '.join(m['key_flags']) or 'no AVX'}{load}); "
            f"{runtimes}")


# -- the machine's limits, for rooflines ------------------------------------------------------

def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: page faults, BLAS thread start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Practical fp32 compute peak: a large numpy sgemm (the BLAS numpy ships), best of runs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    seconds = _best_seconds(lambda: np.matmul(a, b, out=out), repeats)
    return 2.0 * n ** 3 / seconds / 1e9


def precision_peaks(n: int = 2048, repeats: int = 3) -> dict[str, dict]:
    """This machine's practical peak per precision, now: precision -> {"gops": G multiply-adds x 2
    per second, "how": what was timed}. fp32: numpy's sgemm; int8: PyTorch's quantised Linear
    on oneDNN (u8 x s8 -> s32, n x n x n); bf16: a bf16 torch.matmul (oneDNN) where the CPU has
    bf16 arithmetic (avx512_bf16, amx_bf16), else the fp32 peak: a bf16 build there widens to
    fp32 and runs fp32 FMAs (PyTorch's bf16 matmul falls back to a scalar loop, 0.3 GFLOP/s on Zen 3)."""
    flops = 2.0 * n ** 3
    fp32 = measure_peak_gflops(n, repeats)
    peaks = {"fp32": {"gops": fp32, "how": f"numpy sgemm {n}^3"}}
    try:
        import torch
    except ImportError:
        return peaks
    threads = torch.get_num_threads()
    torch.set_num_threads(len(usable_cores()))
    try:
        peaks["int8"] = {"gops": flops / _best_seconds(_int8_gemm(torch, n), repeats) / 1e9,
                         "how": f"torch quantized.linear (oneDNN, u8 x s8) {n}^3"}
        if {"avx512_bf16", "amx_bf16"} & set(cpu_flags()):
            a, b = (torch.randn(n, n).bfloat16() for _ in range(2))
            peaks["bf16"] = {"gops": flops / _best_seconds(lambda: torch.matmul(a, b), repeats) / 1e9,
                             "how": f"torch.matmul bf16 (oneDNN) {n}^3"}
        else:
            peaks["bf16"] = {"gops": fp32, "how": "no bf16 arithmetic on this CPU: the fp32 sgemm peak"}
    finally:
        torch.set_num_threads(threads)
    return peaks


def _int8_gemm(torch, n: int):
    """A call running one n x n x n int8 GEMM through PyTorch's quantised Linear on oneDNN."""
    import warnings

    torch.backends.quantized.engine = "onednn" if "onednn" in torch.backends.quantized.supported_engines else "x86"
    with warnings.catch_warnings():  # PyTorch deprecates its quantised tensors (not the GEMM they run)
        warnings.simplefilter("ignore")
        x = torch.quantize_per_tensor(torch.randn(n, n), 0.05, 128, torch.quint8)
        w = torch.quantize_per_channel(torch.randn(n, n), torch.full((n,), 0.02), torch.zeros(n, dtype=torch.long),
                                       0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, None)
    return lambda: torch.ops.quantized.linear(x, packed, 0.1, 128)


def measure_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Practical memory bandwidth: a large memcpy (bytes read + bytes written), best of runs."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    seconds = _best_seconds(lambda: np.copyto(dst, src), repeats)
    return 2.0 * src.nbytes / seconds / 1e9


def machine_peaks(quick: bool = False) -> dict:
    """Measured fp32 GFLOP/s and GB/s; `quick` uses smaller problems (for tests)."""
    return {"peak_gflops": measure_peak_gflops(1024 if quick else 3072, 3 if quick else 10),
            "bandwidth_gbs": measure_bandwidth_gbs(64 if quick else 512, 3 if quick else 10),
            "gemm": "numpy sgemm (float32), best of runs", "copy": "numpy copyto, read + write bytes",
            "numpy_blas": _blas_name()}


def _blas_name() -> str:
    try:
        config = np.show_config(mode="dicts")
        return config["Build Dependencies"]["blas"]["name"]
    except Exception:  # the config layout differs between numpy versions
        return "unknown"


# -- memory ------------------------------------------------------------------------------------

def anon_bytes() -> int:
    """Resident memory that is not file-backed (Linux: RSS minus shared = RssAnon): a mapped
    weights folder does not count, a copy of it would."""
    import psutil

    info = psutil.Process().memory_info()
    return info.rss - info.shared


class PeakAnon:
    """The highest anonymous resident memory seen while the block runs, sampled every 10 ms."""

    def __enter__(self):
        import threading

        self.start = self.peak = anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, anon_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start
