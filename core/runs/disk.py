"""Disk space for a run: the warning before the first step and the sentence for a failed save.

A run keeps two checkpoints (``latest.pt`` and ``best.pt``) and each save first writes a
temporary copy beside its target (:mod:`core.files.atomic`), so at its peak the folder needs
room for three. Torch-free: the sentences are plain text, the checkpoint size is measured by
the caller (:func:`core.files.checkpoint.estimate_checkpoint_bytes`).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

CHECKPOINTS_AT_PEAK = 3  # latest.pt, best.pt and the temporary file of the save under way


def format_bytes(n: float) -> str:
    """``512 bytes``, ``3.4 kB``, ``120 MB``, ``1.2 GB`` (powers of 1000, as disks are sold)."""
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if n < 100 else f"{n:.0f} {unit}"
    raise AssertionError("unreachable")


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the disk holding ``path`` (or its nearest existing parent, if it is
    gone); ``None`` when the system cannot say."""
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def low_space_warning(out: str | os.PathLike, checkpoint_bytes: int) -> str | None:
    """The warning for a folder with room for fewer than three checkpoints, else ``None``."""
    free = free_bytes(out)
    need = CHECKPOINTS_AT_PEAK * checkpoint_bytes
    if free is None or free >= need:
        return None
    return (
        f"only {format_bytes(free)} free for {out}, less than three checkpoints of about "
        f"{format_bytes(checkpoint_bytes)} (latest.pt, best.pt and the copy each save writes "
        "first); saving may fail: free some space or choose another output folder"
    )


def _reason(exc: OSError, out: Path) -> str:
    code = exc.errno
    if code == errno.ENOSPC:
        return "the disk is full"
    if code == getattr(errno, "EDQUOT", -1):
        return "the disk quota is used up"
    if code == errno.EROFS:
        return "the disk is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "the folder is not writable (permission denied)"
    if code == errno.ENOENT or not out.is_dir():
        return "the output folder was removed during the run"
    return (exc.strerror or str(exc)).rstrip(".").lower()


def save_failure_sentence(
    what: str,
    out: str | os.PathLike,
    exc: OSError,
    last_good: tuple[Path, int] | None,
) -> str:
    """One sentence for a failed save: what failed and why, the free space, and the last
    good checkpoint with its step (or that there is none)."""
    out = Path(out)
    free = free_bytes(out)
    room = f" ({format_bytes(free)} free)" if free is not None else ""
    if last_good is None:
        kept = "no checkpoint of this run was saved before"
    elif last_good[0].is_file():
        kept = f"the last good checkpoint is {last_good[0]}, from step {last_good[1]:,}"
    else:
        kept = (
            f"the last checkpoint saved, {last_good[0]} from step {last_good[1]:,}, "
            "is gone with the folder"
        )
    return f"could not save {what} in {out}: {_reason(exc, out)}{room}; {kept}"
