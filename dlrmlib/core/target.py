"""The compilation target: this machine's real CPU.

TVM 0.27 refuses target strings and, without an explicit triple, silently emits generic
x86-64 code (see the TVM notes), so the target is a dict with the host's triple and CPU.
"""
from __future__ import annotations

import os
import platform


def host_target(num_cores: int | None = None) -> dict:
    """This machine's CPU as a TVM target dict (JSON-serialisable, for the manifest)."""
    from tvm.target import codegen

    machine = platform.machine()
    return {
        "kind": "llvm",
        "mtriple": f"{machine}-linux-gnu" if platform.system() == "Linux" else codegen.llvm_get_system_triple(),
        "mcpu": codegen.llvm_get_system_cpu(),
        "num-cores": int(num_cores or os.cpu_count() or 1),
    }


def cpuinfo_field(name: str) -> str | None:
    """The first `name : value` line of /proc/cpuinfo (None where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_description() -> str:
    """The CPU's model name, for captions and manifests."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def machine_kind() -> str:
    """The folder name shipped kernel logs are kept under: CPU vendor and family, then LLVM's
    name for the core (e.g. amd-epyc-znver4); a log applies to the instruction set it was
    measured on."""
    import re

    from tvm.target import codegen

    words = re.sub(r"\(.*?\)", "", cpu_description()).lower().split()[:2]
    return "-".join(re.sub(r"[^a-z0-9]+", "", w) for w in [*words, codegen.llvm_get_system_cpu()] if w)
