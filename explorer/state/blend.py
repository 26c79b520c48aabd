"""Interpolation and level mixing between two images' latents (numpy only).

Each latent level is blended on its own, with its own weight ``t`` (0 = A, 1 = B):
interpolation gives every level the slider's ``t``; level mixing pins a level to A or B
(``t`` = 0 or 1), so coarse structure from one image meets fine detail from the other.

Spherical interpolation (slerp) treats a level's latent as one vector of ``D`` numbers.
Gaussian latents of dimension ``D`` live near the sphere of radius ``sqrt(D)``; the straight
line between two of them passes closer to the origin (a blurrier, more "average" image half
way), slerp stays near the sphere. Both give A and B exactly at ``t`` = 0 and 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np

LINEAR, SPHERICAL = "linear", "spherical"
MODES = (LINEAR, SPHERICAL)


class LevelSource(str, Enum):
    """Where a level's latent comes from during interpolation."""

    A = "A"
    SLIDER = "t"
    B = "B"


def lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """``(1 - t) a + t b`` in float64, returned as float32; exactly ``a`` or ``b`` at the ends."""
    if t == 0.0:
        return np.array(a, dtype=np.float32, copy=True)
    if t == 1.0:
        return np.array(b, dtype=np.float32, copy=True)
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((1.0 - t) * a64 + t * b64).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of ``a`` and ``b`` seen as vectors (Shoemake 1985); falls
    back to :func:`lerp` when they are (nearly) parallel or one of them is zero."""
    if t in (0.0, 1.0):
        return lerp(a, b, t)
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0.0 or nb == 0.0:
        return lerp(a, b, t)
    cos = float(np.clip(a64 @ b64 / (na * nb), -1.0, 1.0))
    omega = np.arccos(cos)
    if omega < 1e-6 or np.pi - omega < 1e-6:
        # Parallel: the great circle is the line. Antiparallel: no unique great circle.
        return lerp(a, b, t)
    s = np.sin(omega)
    out = (np.sin((1.0 - t) * omega) / s) * a64 + (np.sin(t * omega) / s) * b64
    return out.reshape(np.shape(a)).astype(np.float32)


def level_weights(
    t: float, sources: Sequence[LevelSource | str], num_levels: int | None = None
) -> list[float]:
    """Each level's blend weight: 0 for A, 1 for B, ``t`` for levels that follow the slider."""
    if num_levels is not None and len(sources) != num_levels:
        raise ValueError(f"need one source per level ({num_levels}), got {len(sources)}")
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must lie in [0, 1], got {t}")
    weights = []
    for source in sources:
        source = LevelSource(source)
        weights.append(0.0 if source is LevelSource.A else 1.0 if source is LevelSource.B else t)
    return weights


def blend(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    weights: Sequence[float],
    mode: str = LINEAR,
) -> list[np.ndarray]:
    """Per-level blend of two images' latents (each level ``(C, H, W)`` or ``(N, C, H, W)``
    with N = 1) with one weight per level; returns ``(C, H, W)`` float32 per level."""
    if mode not in MODES:
        raise ValueError(f"unknown interpolation {mode!r}; choose one of {MODES}")
    if not len(a) == len(b) == len(weights):
        raise ValueError("A, B and the weights need the same number of levels")
    mix = slerp if mode == SPHERICAL else lerp
    out = []
    for za, zb, w in zip(a, b, weights):
        za, zb = np.asarray(za), np.asarray(zb)
        if za.shape != zb.shape:
            raise ValueError(f"A and B latents differ in shape: {za.shape} vs {zb.shape}")
        out.append(mix(za, zb, float(w)))
    return out


def strip(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    frames: int,
    sources: Sequence[LevelSource | str],
    mode: str = LINEAR,
) -> list[np.ndarray]:
    """``frames`` evenly spaced blends from ``t = 0`` to ``t = 1``, stacked per level:
    each level ``(frames, C, H, W)`` float32."""
    if frames < 2:
        raise ValueError(f"a strip has at least 2 frames, got {frames}")
    steps = [blend(a, b, level_weights(k / (frames - 1), sources), mode) for k in range(frames)]
    return [np.stack(level) for level in zip(*steps)]
