"""TVM's C++ log lines that are noise for this workflow, kept out of the user's terminal.

TVM writes warnings straight to file descriptor 2, so Python's warnings filters cannot catch
them; `quiet_tvm_log` redirects the descriptor while TVM works and replays every other line.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager

# Known, understood warnings: the fast gather's bounds warning (dlrmlib and dlrm_infer check
# every id before a kernel runs) and LLVM codegen's unknown-pragma note (harmless).
NOISE = re.compile(r"Fast mode segfaults when there are out-of-bounds indices|Unknown pragma pragma_scope")


@contextmanager
def quiet_tvm_log():
    """Hide NOISE lines TVM writes to stderr inside the block; everything else still shows."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not NOISE.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
