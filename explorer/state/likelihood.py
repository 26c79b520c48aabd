"""What the explorer shows about an image's likelihood: plain numpy, no Qt, no torch.

The engine (:mod:`explorer.engine.likelihood`) fills a :class:`LikelihoodView` from
``core.flow.likelihood.describe_image``; the likelihood panel only draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOTAL = "total"
PREPROCESSING = "preprocessing"


def level_key(level: int) -> str:
    return f"level {level}"


@dataclass(frozen=True, eq=False)
class LikelihoodView:
    """One image's bits: breakdown, heat maps and its typicality verdict."""

    bits_per_dim: float
    prior_bits_per_dim: tuple[float, ...]  # per level, finest first
    logdet_bits_per_dim: tuple[float, ...]
    preprocess_bits_per_dim: float
    # (H, W, 3) uint8 colour maps: TOTAL, level_key(i) for each level, PREPROCESSING
    heat: dict[str, np.ndarray]
    heat_range: dict[str, tuple[float, float]]  # bits per pixel at the two ends of the scale
    verdict: str
    reason: str
    percentile: float | None = None
    p_value: float | None = None
    complexity_score: float | None = None
    complexity_p_value: float | None = None
    reference_bits: np.ndarray | None = None  # sorted per-image test bits/dim
    reference_dataset: str = ""

    @property
    def reference_images(self) -> int | None:
        """How many test images the verdict was judged against (None: no reference)."""
        return None if self.reference_bits is None else len(self.reference_bits)

    @property
    def num_levels(self) -> int:
        return len(self.prior_bits_per_dim)

    @property
    def level_bits_per_dim(self) -> tuple[float, ...]:
        return tuple(p + d for p, d in zip(self.prior_bits_per_dim, self.logdet_bits_per_dim))

    @property
    def p_min(self) -> float | None:
        """The smaller two-sided p-value (the one the verdict rests on); None without
        reference data."""
        if self.p_value is None or self.complexity_p_value is None:
            return None
        return min(self.p_value, self.complexity_p_value)

    @property
    def map_names(self) -> list[str]:
        return [TOTAL, *(level_key(i) for i in range(self.num_levels)), PREPROCESSING]


def sort_by_p_value(p: float | None) -> float:
    """Sort key: most atypical (smallest p-value) first, images without one last."""
    return p if p is not None and math.isfinite(p) else math.inf


def overlay(pixels: np.ndarray, heat: np.ndarray, opacity: float) -> np.ndarray:
    """``uint8 (3, H, W)``: the heat map ``(H, W, 3)`` blended over ``uint8 (C, H, W)``."""
    rgb = np.repeat(pixels, 3, 0) if pixels.shape[0] == 1 else pixels
    heat_chw = heat.transpose(2, 0, 1).astype(np.float32)
    out = rgb.astype(np.float32) * (1.0 - opacity) + heat_chw * opacity
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
