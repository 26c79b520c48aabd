"""The explorer's own ``.npz`` files (latent views, directions): plain arrays only.

Written atomically (temporary file, rename), read with ``allow_pickle=False``, and checked
for their format tag and version before any field is used.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from core.files.atomic import atomic_write


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Save ``arrays`` to ``path`` atomically; a failed write leaves the old file."""
    path = Path(path)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def read_npz(
    path: str | os.PathLike, fmt: str, version: int, error: type[Exception], what: str
) -> dict[str, np.ndarray]:
    """All arrays of a file tagged ``format == fmt`` and ``version``; anything else raises
    ``error`` with a message naming ``what`` the file should have been."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise error(f"{path}: not a readable {what} file ({exc})") from None
    if str(arrays.get("format", "")) != fmt:
        raise error(f"{path}: not a {what} file of the Real NVP explorer")
    if int(arrays.get("version", -1)) != version:
        raise error(f"{path}: {what} version {arrays.get('version')} unsupported")
    return arrays
