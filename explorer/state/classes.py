"""Directions from the data's labels: class sliders, nearest classes and class samples.

A checkpoint trained on labelled data carries per-class latent means and standard
deviations per level (:mod:`core.stats.class_stats`). From them, with numpy alone:

- **Class sliders.** One amount ``a_k`` per class moves the chosen levels of whatever the
  view shows from its own latent towards the class means::

      z_l  ->  z_l + sum_k a_k * (mean[k, l] - z_l)        for l in the level mask

  ``a_k = 1`` (the others 0) puts level ``l`` at the class mean; levels outside the mask
  are not touched, bit for bit. Because Real NVP's latent is multi-scale, moving the
  coarse levels changes a digit's class while its finest level keeps the stroke.
- **Nearest class per level**: the class whose mean is nearest (Euclidean) to the level's
  latent, with every distance, in RMS units ``||z_l - mean[k, l]|| / sqrt(D_l)`` so that
  levels of different sizes read alike.
- **Class samples**: a component of the class's mixture picked by its weight, then each
  level drawn from that component's diagonal Gaussian, ``mean[k, m, l] + T * std[k, m, l]
  * eps`` (the class's single Gaussian for statistics without a mixture;
  :meth:`core.stats.class_stats.ClassStats.sample_latents`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.stats.class_stats import LEVEL_MASKS, ClassStats, level_mask

CLASS_AMOUNT_RANGE = (0.0, 1.0)
DEFAULT_MASK = "coarse"


@dataclass(frozen=True, eq=False)
class ClassMove:
    """The class sliders of a view: class names and means, one amount per class, and the
    levels they move (``mask``: ``coarse``, ``fine`` or ``all``)."""

    names: tuple[str, ...]
    means: tuple[np.ndarray, ...]  # per level, (K, C, H, W) float32, read-only
    amounts: tuple[float, ...]
    mask: str = DEFAULT_MASK

    def __post_init__(self) -> None:
        if self.mask not in LEVEL_MASKS:
            raise ValueError(f"level mask must be one of {', '.join(LEVEL_MASKS)}")
        if len(self.amounts) != len(self.names):
            raise ValueError(f"{len(self.amounts)} amounts for {len(self.names)} classes")
        for a in self.amounts:
            if not math.isfinite(a):
                raise ValueError(f"a class amount must be finite, got {a}")
        frozen = []
        for m in self.means:
            m = np.asarray(m, dtype=np.float32)
            if m.ndim != 4 or m.shape[0] != len(self.names):
                raise ValueError(f"class means of shape {m.shape} for {len(self.names)} classes")
            if m.flags.writeable:
                m = m.copy()
                m.setflags(write=False)
            frozen.append(m)
        object.__setattr__(self, "means", tuple(frozen))
        object.__setattr__(self, "amounts", tuple(float(a) for a in self.amounts))

    @classmethod
    def from_stats(cls, stats: ClassStats, mask: str = DEFAULT_MASK) -> ClassMove:
        return cls(stats.names, stats.means, (0.0,) * stats.num_classes, mask)

    @property
    def levels(self) -> tuple[int, ...]:
        return level_mask(self.mask, len(self.means))

    @property
    def active(self) -> bool:
        return any(self.amounts)

    def apply(self, index: int, z: np.ndarray) -> np.ndarray:
        """Level ``index``'s latent ``z`` (``(N, C, H, W)``) moved by the sliders; ``z``
        itself when the level is outside the mask or every amount is 0."""
        if not self.active or index not in self.levels:
            return z
        moved = z.copy()
        for k, a in enumerate(self.amounts):
            if a:
                moved += np.float32(a) * (self.means[index][k] - z)
        moved.setflags(write=False)
        return moved

    def with_amount(self, k: int, value: float) -> ClassMove:
        amounts = list(self.amounts)
        amounts[k] = float(value)
        return replace(self, amounts=tuple(amounts))

    def cleared(self) -> ClassMove:
        return replace(self, amounts=(0.0,) * len(self.names)) if self.active else self

    def same_effect(self, other: ClassMove | None) -> bool:
        """Whether ``other`` moves the latents exactly as this one does."""
        if other is None:
            return not self.active
        if not self.active and not other.active:
            return True
        return (
            self.amounts == other.amounts
            and self.levels == other.levels
            and all(a is b or np.array_equal(a, b) for a, b in zip(self.means, other.means))
        )


@dataclass(frozen=True)
class NearestClass:
    """One level's nearest class and the RMS distance to every class mean."""

    level: int
    index: int
    name: str
    distances: tuple[float, ...]


def nearest_classes(
    latents: Sequence[np.ndarray], names: Sequence[str], means: Sequence[np.ndarray]
) -> list[NearestClass]:
    """Per level, the class whose mean is nearest to ``latents[l]`` (one image,
    ``(C, H, W)``), with RMS distances ``||z - mean_k|| / sqrt(D)``."""
    out = []
    for level, (z, m) in enumerate(zip(latents, means)):
        z = np.asarray(z, dtype=np.float64).reshape(1, -1)
        m = np.asarray(m, dtype=np.float64).reshape(len(names), -1)
        d = np.sqrt(((m - z) ** 2).mean(axis=1))
        k = int(np.argmin(d))
        out.append(NearestClass(level, k, str(names[k]), tuple(float(v) for v in d)))
    return out


def class_sample(
    stats: ClassStats,
    k: int,
    n: int,
    temperature: float,
    seed: int,
    mask: str = "all",
) -> list[np.ndarray]:
    """``n`` latents of class ``k``, a pure function of ``seed``: the levels in ``mask``
    from the class's Gaussians (a component of its mixture per sample), the others from
    the prior (both at ``temperature``)."""
    rng = np.random.default_rng([seed, k, 0x5EED])
    noise = [rng.standard_normal((n, *shape), dtype=np.float32) for shape in stats.shapes]
    pick = rng.random(n) if stats.mixture_weights is not None else None
    return stats.sample_latents(k, noise, temperature, level_mask(mask, len(stats.shapes)), pick)
