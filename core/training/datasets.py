"""What data sets there are and which files they read: names, geometry, the folder listing,
the held-out split and the error a view shows. No torch: the training form and the importer
use these; the loaders that hand out tensors are in :mod:`core.training.data`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from core.config import DATASETS, dataset_geometry  # noqa: F401 (re-exported)
from core.files.images import IMAGE_SUFFIXES


class DatasetError(ValueError):
    """A data set that cannot be loaded; the message is meant for the user."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, recursively, sorted, hidden files left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def is_held_out(path: Path, fraction: float) -> bool:
    """A stable split: the same file lands on the same side on every run and machine."""
    digest = hashlib.sha1(path.name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def folder_classes(folder: str | os.PathLike, paths: list[Path]) -> tuple[str, ...]:
    """Class names of a folder data set: its first-level subfolders that hold images, when
    there are two or more (sorted); otherwise ``()``, an unlabelled folder."""
    folder = Path(folder)
    names = {p.relative_to(folder).parts[0] for p in paths if len(p.relative_to(folder).parts) > 1}
    return tuple(sorted(names)) if len(names) >= 2 else ()


SKIPPED_NAMES_SHOWN = 5


def describe_skipped(names: list[str]) -> str:
    """``3 unreadable files skipped: a.jpg, b.png, notes.gif`` (the first few named, then
    ``and 12 more``), for the command line's warning and the form's data check."""
    shown = ", ".join(names[:SKIPPED_NAMES_SHOWN])
    more = len(names) - SKIPPED_NAMES_SHOWN
    rest = f" and {more:,} more" if more > 0 else ""
    noun = "file" if len(names) == 1 else "files"
    return f"{len(names):,} unreadable {noun} skipped: {shown}{rest}"
