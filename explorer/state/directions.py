"""Directions from examples, as in OpenAI's Glow demo (numpy only).

Given two groups of images, say without and with glasses, the direction is the mean latent
of the second group minus the mean latent of the first, per level::

    d_l = mean_{x in B} z_l(x) - mean_{x in A} z_l(x)

Adding ``s * d`` to an image's latents (``s`` the slider) moves it from looking like group A
towards group B; ``s = 1`` adds the whole mean difference. A direction is saved as ``.npz``
of plain arrays and read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explorer.state.npz_files import read_npz, write_npz

DIRECTION_FORMAT = "realnvp-explorer-direction"
DIRECTION_VERSION = 1
MAX_NAME = 80


class DirectionFileError(ValueError):
    """A direction file that cannot be used; the message is meant for the user."""


@dataclass(frozen=True, eq=False)
class Direction:
    """A named per-level latent direction; arrays read-only, finest level first."""

    name: str
    vectors: tuple[np.ndarray, ...]  # each (C, H, W) float32
    count_a: int = 0  # images in each group, for the record
    count_b: int = 0

    def __post_init__(self) -> None:
        frozen = []
        for v in self.vectors:
            v = np.array(v, dtype=np.float32, copy=True)
            v.setflags(write=False)
            frozen.append(v)
        object.__setattr__(self, "vectors", tuple(frozen))
        object.__setattr__(self, "name", clean_name(self.name))

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(v.shape for v in self.vectors)


def clean_name(name: str) -> str:
    name = " ".join(str(name).split())[:MAX_NAME]
    return name or "direction"


def direction_from_groups(
    name: str, group_a: Sequence[np.ndarray], group_b: Sequence[np.ndarray]
) -> Direction:
    """``mean(B) - mean(A)`` per level; each group is one ``(N, C, H, W)`` array per level."""
    if len(group_a) != len(group_b) or not group_a:
        raise ValueError("both groups need latents for the same levels")
    vectors = []
    for i, (za, zb) in enumerate(zip(group_a, group_b)):
        za, zb = np.asarray(za, np.float64), np.asarray(zb, np.float64)
        if za.ndim != 4 or zb.ndim != 4 or za.shape[1:] != zb.shape[1:]:
            raise ValueError(f"level {i}: group latents of shapes {za.shape} and {zb.shape}")
        if not len(za) or not len(zb):
            raise ValueError("each group needs at least one image")
        vectors.append((zb.mean(axis=0) - za.mean(axis=0)).astype(np.float32))
    return Direction(name, tuple(vectors), len(group_a[0]), len(group_b[0]))


def save_direction(direction: Direction, path: str | os.PathLike) -> Path:
    """Write ``direction`` as ``.npz`` of plain arrays, atomically."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(DIRECTION_FORMAT),
        "version": np.array(DIRECTION_VERSION),
        "name": np.array(direction.name),
        "shapes": np.array(direction.shapes, dtype=np.int64).reshape(-1, 3),
        "counts": np.array([direction.count_a, direction.count_b], dtype=np.int64),
    }
    for i, v in enumerate(direction.vectors):
        arrays[f"level_{i}"] = v
    return write_npz(path, arrays)


def is_direction_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ``.npz`` written by :func:`save_direction` (never raises)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "format" in data.files and str(data["format"]) == DIRECTION_FORMAT
    except Exception:
        return False


def load_direction(path: str | os.PathLike) -> Direction:
    """Read a file written by :func:`save_direction`; raises :class:`DirectionFileError`."""
    arrays = read_npz(path, DIRECTION_FORMAT, DIRECTION_VERSION, DirectionFileError, "direction")
    try:
        shapes = [tuple(int(v) for v in row) for row in arrays["shapes"]]
        vectors = []
        for i, shape in enumerate(shapes):
            v = np.asarray(arrays[f"level_{i}"], dtype=np.float32)
            if v.shape != shape:
                raise DirectionFileError(f"{path}: level {i} does not have shape {shape}")
            if not np.isfinite(v).all():
                raise DirectionFileError(f"{path}: level {i} contains NaN or infinite values")
            vectors.append(v)
        counts = [int(c) for c in arrays["counts"]]
        name = str(arrays["name"])
    except DirectionFileError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DirectionFileError(f"{path}: damaged direction file ({exc})") from None
    if not vectors:
        raise DirectionFileError(f"{path}: damaged direction file (no levels)")
    return Direction(name, tuple(vectors), *counts[:2])
