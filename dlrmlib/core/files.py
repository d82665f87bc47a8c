"""Atomic writes: a crash or a full disk leaves the old file or the new one, never half a file; and
the file helpers around them (links, copies, a library copy to load)."""
from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.chmod(0o644)  # mkstemp's 0600 would make results unreadable to colleagues
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:  # a write error names no file: say which one
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yields a temporary folder beside `path`; renames it onto `path` if the block succeeds
    (an existing `path` is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:  # a write error names no file: say which folder
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> dict:

    path = Path(path)
    if not path.is_file():
        raise DlrmError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DlrmError(f"{path} is not valid JSON: {e}") from None


def read_jsonl(path: str | os.PathLike) -> list:
    """Every complete JSON line of an append-only log (a torn line from a kill is skipped)."""
    path = Path(path)
    items = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return items


def append_jsonl(path: str | os.PathLike, items: list, durable: bool = False) -> None:
    """Append one JSON line per item to an append-only log in one write. A torn last line (a kill
    mid-write) is closed first, so it never swallows the new lines; `durable` waits for the disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        torn = f.seek(0, os.SEEK_END) > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"
        text = "".join(json.dumps(item, sort_keys=True) + "\n" for item in items)
        f.write((("\n" if torn else "") + text).encode())
        f.flush()
        if durable:
            os.fsync(f.fileno())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when both sit on one file system (ONNX refuses symlinked data), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def loadable_copy(path: str | os.PathLike) -> Path:
    """The path to load a shared library from, as the file is now. The dynamic loader keeps one
    library per path name for the life of a process, so a library rebuilt at the same path (a
    second build with the same tag and other knobs) would load as the first one, and its weights
    be packed and checked against the old code. So each content is loaded through a name of its
    own (its checksum), copied into a private folder that goes at exit."""
    path = Path(path)
    if not path.is_file():
        return path  # the loader says what is wrong with it
    copy = _library_copies() / f"{sha256_file(path)[:16]}-{path.name}"
    if not copy.exists():
        with atomic_path(copy) as tmp:
            shutil.copyfile(path, tmp)
    return copy


@functools.cache
def _library_copies() -> Path:
    """This process's private folder of library copies, made on first use, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="dlrm-libraries-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


FICLONE = 0x40049409  # Linux's ioctl to share a file's blocks (Btrfs, XFS, bcachefs): a copy in no time


def clone_or_copy(src: Path, dst: Path) -> None:
    """A file of its own at `dst`: ONNX (and so every tool built on it) refuses external data
    with several hard links or behind a symbolic link. A reflink where the file system can
    share blocks, else a full copy."""
    with atomic_path(dst) as tmp:
        try:
            with open(src, "rb") as source, open(tmp, "wb") as target:
                fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
        except OSError:
            shutil.copyfile(src, tmp)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
