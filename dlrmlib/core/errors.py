"""One error type for everything a user can get wrong, so the CLI and notebooks can show a
clear message instead of a traceback from deep inside TVM or ONNX; and the words for what the
machine refused (a full disk, a read-only folder, memory)."""
import errno
import os

_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space, or set DLRM_EXPERIMENTS_DIR to a larger disk",
    errno.EDQUOT: "disk quota exceeded: free some space, or set DLRM_EXPERIMENTS_DIR to another disk",
    errno.EFBIG: "file too large for this process's limit (`ulimit -f`) or the file system",
    errno.EROFS: "read-only file system: set DLRM_EXPERIMENTS_DIR to a writable folder",
    errno.EACCES: "permission denied: make it writable, or set DLRM_EXPERIMENTS_DIR to a folder of yours",
    errno.EPERM: "operation not permitted: make it writable, or set DLRM_EXPERIMENTS_DIR to a folder of yours",
    errno.ENOTDIR: "a path on the way is a file, not a folder",
    errno.ENOMEM: "out of memory",
}
MEMORY_ADVICE = ("out of memory: free memory or raise the limit (`ulimit -v`), or use a smaller preset or batch "
                 "size")


class DlrmError(Exception):
    """A problem with the user's input or environment, with a message that says what is
    wrong, which file, and what was expected."""


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: what the system said, about which file, and what to do."""
    where = " -> ".join(os.fsdecode(f) for f in (e.filename, e.filename2) if f is not None)
    advice = _OS_ADVICE.get(e.errno, e.strerror or str(e))
    return f"{where}: {advice}" if where else advice
