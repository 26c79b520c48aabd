"""Heat maps of per-pixel bits as RGB images (numpy only; used by the CLI and the explorer).

The colour scale is a perceptually ordered dark-to-bright ramp (inferno's anchor colours):
black-purple for the pixels the model codes in the fewest bits, yellow-white for the most.
Bits are placed on it by ``asinh`` (linear near zero, logarithmic for large values): an
out-of-distribution image can spend a hundred bits on a few pixels and ten on the rest,
and a linear scale would show only the few.
"""

from __future__ import annotations

import numpy as np

# Anchor colours of matplotlib's "inferno" at 0, 1/6, ..., 1 (public domain colour map).
_INFERNO = np.array(
    [
        (0, 0, 4),
        (40, 11, 84),
        (101, 21, 110),
        (159, 42, 99),
        (212, 72, 66),
        (245, 125, 21),
        (250, 193, 39),
        (252, 255, 164),
    ],
    dtype=np.float64,
)


def bits_range(bits: np.ndarray) -> tuple[float, float]:
    """``(lo, hi)`` of a colour scale: the smallest and largest finite value; never an
    empty range."""
    finite = np.asarray(bits, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def colorize(bits: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``uint8 (H, W, 3)`` colours of per-pixel bits ``(H, W)`` or ``(C, H, W)`` (channels
    summed: the bits of a colour pixel), on the asinh scale from ``lo`` to ``hi``."""
    arr = np.asarray(bits, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr.sum(0)
    if arr.ndim != 2:
        raise ValueError(f"expected (H, W) or (C, H, W) bits, got shape {arr.shape}")
    if lo is None or hi is None:
        auto_lo, auto_hi = bits_range(arr)
        lo = auto_lo if lo is None else lo
        hi = auto_hi if hi is None else hi
    a_lo, a_hi = np.arcsinh(lo), np.arcsinh(hi)
    t = (np.arcsinh(np.nan_to_num(arr, nan=lo)) - a_lo) / max(a_hi - a_lo, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    pos = t * (len(_INFERNO) - 1)
    i = np.minimum(pos.astype(np.int64), len(_INFERNO) - 2)
    frac = (pos - i)[..., None]
    rgb = _INFERNO[i] * (1 - frac) + _INFERNO[i + 1] * frac
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def upscale(image: np.ndarray, min_side: int = 112) -> np.ndarray:
    """Nearest-neighbour enlargement of ``(H, W, ...)`` so the short side is at least
    ``min_side`` pixels (pixels stay visible as squares)."""
    factor = max(1, -(-min_side // min(image.shape[0], image.shape[1])))
    return image.repeat(factor, 0).repeat(factor, 1)
