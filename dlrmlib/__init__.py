"""dlrmlib: DLRM inference on CPU with Apache TVM, side by side with other runtimes."""
import os as _os

# TVM's CPU thread pool takes its size from TVM_NUM_THREADS when it starts, and ignores later
# resizing for already-running pools; its default is half the logical CPUs on x86 (1 on a
# 2-vCPU machine). Every core this process may use, unless the user says otherwise.
if hasattr(_os, "sched_getaffinity"):
    _os.environ.setdefault("TVM_NUM_THREADS", str(len(_os.sched_getaffinity(0))))
