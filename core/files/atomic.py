"""Atomic file writes: a temporary file beside the target, flushed, fsynced, renamed.

A crash or a stop part-way leaves the previous file untouched and no temporary behind. The
file ends with the permissions a plain ``open(path, "wb")`` would give it: a new file gets
``0o666`` less the umask, a replaced file keeps its mode (``mkstemp`` alone would leave
``0o600``, which another user, a web server or a shared results folder cannot read).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's
    ``/proc/self/status``); elsewhere set and restored at once under a lock."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def plain_write_mode(path: str | os.PathLike) -> int:
    """The mode ``open(path, "wb")`` would leave: an existing file's own, else 0o666 less
    the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """``with atomic_path(path) as tmp: writer(tmp)``: for writers that take a file name.
    ``tmp`` is renamed to ``path`` (with :func:`plain_write_mode`) when the block ends
    without an exception, and removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = plain_write_mode(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:  # the file asked for, not a temporary name nobody chose
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if os.name != "nt":  # Windows has no such modes; its files inherit the folder's ACL
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: f.write(...)``; ``path`` appears only on success."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
