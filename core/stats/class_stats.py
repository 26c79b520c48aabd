"""Per-class latent statistics of a labelled data set, level by level.

For class ``k`` and latent level ``l``, over the training images ``x`` of that class::

    mean[k, l] = E[z_l(x)]                      (per element)
    std[k, l]  = sqrt(E[(z_l(x) - mean[k, l])^2])

with ``z = encode(pixel_centres(x))``, the latents that ``realnvp encode`` and the explorer
give an image. They make class directions (move a level's latent towards ``mean[k, l]``)
and class samples, as Glow's demo made attribute directions from labelled data.

**Class samples.** A class is not one blob in latent space (a 2 with a loop and a 2 without
one sit apart), so version 2 also keeps, per class, a mixture of ``M`` diagonal Gaussians
fitted to the class's latents by EM (:mod:`core.stats.mixture`): weights ``(K, M)`` and per
level ``(K, M, C, H, W)`` means and standard deviations. A class sample picks a component
by its weight, then draws each level from ``N(mean[k, m, l], (T * std[k, m, l])^2)``.
Version 1 files have no mixture; their samples come from the class's single diagonal
Gaussian ``N(mean[k, l], (T * std[k, l])^2)``, which is the one-component mixture.

**The sample.** The first ``per_class`` images of each class in the data set's order
(default :data:`DEFAULT_PER_CLASS`; ``None`` takes them all), so a rerun picks the same
images. A class with no images is left out and named in :attr:`ClassStats.skipped`.

**Storage.** A checkpoint keeps them in ``meta["class_stats"]`` as plain values (raw bytes,
lists, numbers; see :meth:`ClassStats.to_meta`), so ``torch.load(weights_only=True)`` reads
them. This module is the plain data and imports no torch: the explorer's torch-free models
use :class:`ClassStats` as it is. Computing them from a model is
:func:`core.stats.measure.compute_class_stats`.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config import DEFAULT_PER_CLASS  # noqa: F401 (re-exported)
from core.files.atomic import atomic_write
from core.stats.mixture import pick_components

STATS_FORMAT = "realnvp-class-stats"
STATS_VERSION = 2  # 2: with the per-class mixture; 1 (read still): means and stds only
META_KEY = "class_stats"
MAX_CLASSES = 1000
MAX_COMPONENTS = 256


class ClassStatsError(ValueError):
    """Class statistics that cannot be made or read; the message is meant for the user."""


@dataclass(frozen=True, eq=False)
class ClassStats:
    """Per-class latent means and standard deviations, finest level first.

    ``means[l]`` and ``stds[l]`` are ``float32 (K, C, H, W)`` for ``K`` classes named
    ``names``; ``counts[k]`` images of class ``k`` were used. The optional mixture:
    ``mixture_weights (K, M)`` (each row sums to 1; a class fitted with fewer components
    has zero weights at the end), ``mixture_means[l]`` and ``mixture_stds[l]``
    ``(K, M, C, H, W)``. Arrays are read-only.
    """

    names: tuple[str, ...]
    counts: tuple[int, ...]
    means: tuple[np.ndarray, ...]
    stds: tuple[np.ndarray, ...]
    source: str = ""  # what they were computed from, for the record
    skipped: tuple[str, ...] = field(default=())  # classes without images, left out
    mixture_weights: np.ndarray | None = None
    mixture_means: tuple[np.ndarray, ...] = field(default=())
    mixture_stds: tuple[np.ndarray, ...] = field(default=())

    def __post_init__(self) -> None:
        k = len(self.names)
        if not 1 <= k <= MAX_CLASSES or len(self.counts) != k or len(set(self.names)) != k:
            raise ClassStatsError(f"class statistics: {k} names for {len(self.counts)} counts")
        if not self.means or len(self.means) != len(self.stds):
            raise ClassStatsError("class statistics: means and stds need the same levels")
        frozen: dict[str, list[np.ndarray]] = {"means": [], "stds": []}
        for what in ("means", "stds"):
            for i, a in enumerate(getattr(self, what)):
                a = np.array(a, dtype=np.float32, copy=True)
                if a.ndim != 4 or a.shape[0] != k or a.shape != np.shape(self.means[i]):
                    raise ClassStatsError(f"class statistics: level {i} {what} of shape {a.shape}")
                if not np.isfinite(a).all() or (what == "stds" and (a < 0).any()):
                    raise ClassStatsError(f"class statistics: level {i} {what} are not finite")
                a.setflags(write=False)
                frozen[what].append(a)
        object.__setattr__(self, "means", tuple(frozen["means"]))
        object.__setattr__(self, "stds", tuple(frozen["stds"]))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))
        self._freeze_mixture()

    def _freeze_mixture(self) -> None:
        if self.mixture_weights is None:
            if self.mixture_means or self.mixture_stds:
                raise ClassStatsError("class statistics: mixture components without weights")
            return
        k = len(self.names)
        w = np.array(self.mixture_weights, dtype=np.float32, copy=True)
        if w.ndim != 2 or w.shape[0] != k or w.shape[1] < 1:
            raise ClassStatsError(f"class statistics: mixture weights of shape {w.shape}")
        sums = w.astype(np.float64).sum(axis=1)
        if not np.isfinite(w).all() or (w < 0).any() or not np.allclose(sums, 1.0, atol=1e-3):
            raise ClassStatsError("class statistics: mixture weights are not a distribution")
        m = w.shape[1]
        w.setflags(write=False)
        object.__setattr__(self, "mixture_weights", w)
        for what in ("mixture_means", "mixture_stds"):
            levels = []
            for i, a in enumerate(getattr(self, what)):
                a = np.array(a, dtype=np.float32, copy=True)
                if i >= len(self.means) or a.shape != (k, m, *self.means[i].shape[1:]):
                    raise ClassStatsError(f"class statistics: level {i} {what} of shape {a.shape}")
                if not np.isfinite(a).all() or (what == "mixture_stds" and (a < 0).any()):
                    raise ClassStatsError(f"class statistics: level {i} {what} are not finite")
                a.setflags(write=False)
                levels.append(a)
            if len(levels) != len(self.means):
                raise ClassStatsError(f"class statistics: {what} for {len(levels)} levels")
            object.__setattr__(self, what, tuple(levels))

    @property
    def num_components(self) -> int:
        """Mixture components per class (1: the class's single Gaussian)."""
        return 1 if self.mixture_weights is None else int(self.mixture_weights.shape[1])

    def components_used(self, k: int) -> int:
        """Components of class ``k`` with a weight above zero."""
        if self.mixture_weights is None:
            return 1
        return int((self.mixture_weights[k] > 0).sum())

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def shapes(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(tuple(int(v) for v in m.shape[1:]) for m in self.means)  # type: ignore[misc]

    def index(self, name_or_index: str | int) -> int:
        """The class index of a name (``"7"``, ``"cat"``) or of an index given as text."""
        text = str(name_or_index).strip()
        if text in self.names:
            return self.names.index(text)
        if text.lstrip("-").isdigit() and 0 <= int(text) < self.num_classes:
            return int(text)
        raise ClassStatsError(f"no class {text!r}; the classes are {', '.join(self.names)}")

    def sample_latents(
        self,
        k: int,
        noise: Sequence[np.ndarray],
        temperature: float,
        levels: Sequence[int] | None = None,
        pick: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Latents of class ``k``. ``noise[l]`` is ``(N, C, H, W)`` standard normal noise;
        with a mixture, ``pick`` is ``(N,)`` uniform numbers in ``[0, 1)`` that choose each
        sample's component by its weight (one component for all of a sample's levels).

        Level ``l`` in ``levels`` (default: all) is ``mean + temperature * std * noise[l]``
        with the component's (or, without a mixture, the class's) mean and std; any other
        level is ``temperature * noise[l]``, a draw from the prior.
        """
        chosen = set(range(len(self.means)) if levels is None else levels)
        n = len(noise[0]) if len(noise) else 0
        if self.mixture_weights is not None:
            if pick is None or np.shape(pick) != (n,):
                raise ValueError(f"a class mixture needs pick: {n} uniform numbers")
            comp = pick_components(self.mixture_weights[k], pick)
            means = [m[k][comp] for m in self.mixture_means]
            stds = [s[k][comp] for s in self.mixture_stds]
        else:
            means = [m[k] for m in self.means]
            stds = [s[k] for s in self.stds]
        out = []
        t = np.float32(temperature)
        for i, e in enumerate(noise):
            e = np.asarray(e, dtype=np.float32)
            if i in chosen:
                out.append(means[i] + t * stds[i] * e)
            else:
                out.append(t * e)
        return out

    # -- plain values for a checkpoint and an .npz file ------------------------------------

    def to_meta(self, dtype: str = "float32") -> dict[str, Any]:
        """Plain values (no numpy, no torch) for a checkpoint's ``meta``."""
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {dtype}")
        data = {
            "format": STATS_FORMAT,
            "version": STATS_VERSION if self.mixture_weights is not None else 1,
            "names": list(self.names),
            "counts": list(self.counts),
            "shapes": [list(s) for s in self.shapes],
            "dtype": dtype,
            "means": [m.astype(dtype).tobytes() for m in self.means],
            "stds": [s.astype(dtype).tobytes() for s in self.stds],
            "source": self.source,
            "skipped": list(self.skipped),
        }
        if self.mixture_weights is not None:
            data["components"] = self.num_components
            data["mixture_weights"] = self.mixture_weights.astype(np.float32).tobytes()
            data["mixture_means"] = [m.astype(dtype).tobytes() for m in self.mixture_means]
            data["mixture_stds"] = [s.astype(dtype).tobytes() for s in self.mixture_stds]
        return data

    @classmethod
    def from_meta(cls, data: Any) -> ClassStats:
        """Read :meth:`to_meta`'s values back; raises :class:`ClassStatsError`."""
        try:
            if data.get("format") != STATS_FORMAT or data.get("version") not in (1, 2):
                raise ClassStatsError(
                    f"class statistics of an unknown kind ({data.get('format')!r}, "
                    f"version {data.get('version')!r})"
                )
            dtype = np.dtype(str(data["dtype"]))
            if dtype not in (np.float32, np.float16):
                raise ClassStatsError(f"class statistics stored as {dtype}")
            names = [str(n) for n in data["names"]]
            k = len(names)
            arrays: dict[str, list[np.ndarray]] = {"means": [], "stds": []}
            for what in arrays:
                for shape, raw in zip(data["shapes"], data[what], strict=True):
                    shape = (k, *(int(v) for v in shape))
                    if len(shape) != 4 or len(raw) != math.prod(shape) * dtype.itemsize:
                        raise ClassStatsError(f"class statistics: damaged {what}")
                    arrays[what].append(np.frombuffer(raw, dtype=dtype).reshape(shape))
            mixture: dict[str, Any] = {}
            if data["version"] == 2:
                m = int(data["components"])
                raw = data["mixture_weights"]
                if not 1 <= m <= MAX_COMPONENTS or len(raw) != k * m * 4:
                    raise ClassStatsError("class statistics: damaged mixture weights")
                mixture["mixture_weights"] = np.frombuffer(raw, np.float32).reshape(k, m)
                for what in ("mixture_means", "mixture_stds"):
                    levels = []
                    for shape, raw in zip(data["shapes"], data[what], strict=True):
                        shape = (k, m, *(int(v) for v in shape))
                        if len(raw) != math.prod(shape) * dtype.itemsize:
                            raise ClassStatsError(f"class statistics: damaged {what}")
                        levels.append(np.frombuffer(raw, dtype=dtype).reshape(shape))
                    mixture[what] = tuple(levels)
            return cls(
                tuple(names),
                tuple(int(c) for c in data["counts"]),
                tuple(arrays["means"]),
                tuple(arrays["stds"]),
                str(data.get("source", "")),
                tuple(str(n) for n in data.get("skipped", ())),
                **mixture,
            )
        except ClassStatsError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ClassStatsError(f"damaged class statistics ({exc})") from None

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write as ``.npz`` of plain arrays (``mean_<l>``, ``std_<l>``, ``counts``, ...)."""
        arrays: dict[str, np.ndarray] = {
            "format": np.array(STATS_FORMAT),
            "version": np.array(STATS_VERSION),
            "names": np.array(self.names, dtype=str),
            "counts": np.array(self.counts, dtype=np.int64),
            "source": np.array(self.source),
            "skipped": np.array(self.skipped, dtype=str),
        }
        for i, (m, s) in enumerate(zip(self.means, self.stds)):
            arrays[f"mean_{i}"] = m
            arrays[f"std_{i}"] = s
        if self.mixture_weights is not None:
            arrays["mixture_weights"] = self.mixture_weights
            for i, (m, s) in enumerate(zip(self.mixture_means, self.mixture_stds)):
                arrays[f"mixture_mean_{i}"] = m
                arrays[f"mixture_std_{i}"] = s
        else:
            arrays["version"] = np.array(1)
        path = Path(path)
        with atomic_write(path) as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> ClassStats:
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data.files or str(data["format"]) != STATS_FORMAT:
                    raise ClassStatsError(f"{path}: not a class statistics file")
                levels = sum(1 for n in data.files if n.startswith("mean_"))
                mixture: dict[str, Any] = {}
                if "mixture_weights" in data.files:
                    mixture["mixture_weights"] = data["mixture_weights"]
                    for what, name in (("mixture_means", "mean"), ("mixture_stds", "std")):
                        mixture[what] = tuple(data[f"mixture_{name}_{i}"] for i in range(levels))
                return cls(
                    tuple(str(n) for n in data["names"]),
                    tuple(int(c) for c in data["counts"]),
                    tuple(data[f"mean_{i}"] for i in range(levels)),
                    tuple(data[f"std_{i}"] for i in range(levels)),
                    str(data["source"]),
                    tuple(str(n) for n in data["skipped"]),
                    **mixture,
                )
        except ClassStatsError:
            raise
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ClassStatsError(f"{path}: damaged class statistics file ({exc})") from None


LEVEL_MASKS = ("coarse", "fine", "all")


def level_mask(spec: str, num_levels: int) -> tuple[int, ...]:
    """Levels named by ``spec``: ``all``; ``fine``, the finest level (0) alone; ``coarse``,
    every level but the finest (the global shape, where a digit's class lives); or indices
    such as ``1,2``."""
    spec = spec.strip().lower()
    if spec == "all" or (spec == "coarse" and num_levels == 1):
        return tuple(range(num_levels))
    if spec == "fine":
        return (0,)
    if spec == "coarse":
        return tuple(range(1, num_levels))
    try:
        levels = sorted({int(v) for v in spec.split(",") if v.strip()})
    except ValueError:
        levels = []
    if not levels or not all(0 <= v < num_levels for v in levels):
        raise ClassStatsError(
            f"levels {spec!r}: give coarse, fine, all or indices from 0 to {num_levels - 1}"
        )
    return tuple(levels)


def stats_from_meta(meta: dict[str, Any]) -> ClassStats | None:
    """A checkpoint meta's class statistics, or ``None`` when it has none or they are
    damaged (every consumer copes with their absence)."""
    data = meta.get(META_KEY)
    if not isinstance(data, dict):
        return None
    try:
        return ClassStats.from_meta(data)
    except ClassStatsError:
        return None


def sample_indices(labels: np.ndarray, num_classes: int, per_class: int | None) -> np.ndarray:
    """The documented sample: the first ``per_class`` images of each class (all when
    ``None``), in data set order; images labelled ``-1`` are never taken."""
    labels = np.asarray(labels)
    keep = np.zeros(len(labels), dtype=bool)
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)
        keep[idx if per_class is None else idx[:per_class]] = True
    return np.flatnonzero(keep)


def summarize_class_meta(data: Any) -> str:
    """One line for ``realnvp info`` instead of the raw bytes: ``10 classes, 1,000 images
    each (first 1,000 training images per class)``."""
    try:
        stats = ClassStats.from_meta(data)
    except ClassStatsError as exc:
        return f"unreadable ({exc})"
    lo, hi = min(stats.counts), max(stats.counts)
    each = f"{lo:,} images each" if lo == hi else f"{lo:,} to {hi:,} images each"
    line = f"{stats.num_classes} classes, {each}"
    if stats.mixture_weights is not None:
        line += f", a mixture of up to {stats.num_components} Gaussians each"
    if stats.skipped:
        line += f"; without images: {', '.join(stats.skipped)}"
    return f"{line} ({stats.source})" if stats.source else line
