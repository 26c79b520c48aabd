"""Is this image like the model's test data? A two-sided answer, without torch.

A flow's bits/dim alone is a trap: flows give some out-of-distribution images *fewer*
bits/dim than their own test data (a blank image, a simpler data set; Nalisnick et al.,
"Do deep generative models know what they don't know?", ICLR 2019), so a one-sided
threshold calls them typical. Two remedies are combined here:

* **Typicality, two-sided.** An image is compared with the distribution of per-image test
  bits/dim; being far *below* it is as suspicious as being far above it.
* **Input complexity** (Serrà et al., "Input complexity and out-of-distribution detection
  with likelihood-based generative models", ICLR 2020). The score ``S = bits/dim under the
  model - bits/dim under a lossless general-purpose compressor`` removes most of what
  simply makes an image easy to code (flat areas), leaving how much better or worse the
  model codes it than its complexity explains; it is compared two-sidedly too.

The compressor is PNG through Pillow (``compress_level=9``): its per-row filters predict
each pixel from its left and upper neighbours, so it measures two-dimensional image
complexity, which is what Serrà et al. found to work (they used PNG, JPEG2000 and FLIF);
``lzma`` sees the image as a byte stream and misses vertical structure. The PNG container's
fixed ~57 bytes of headers are included: they shift every score by the same amount, which
the comparison with the test set's own scores cancels.

A checkpoint's ``meta["typicality"]`` (written by ``realnvp eval``, ``realnvp export
--data-dir`` and the trainer's last evaluation) holds the sorted per-image test bits/dim
and complexity scores; :func:`judge` places any image against them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

META_KEY = "typicality"
FORMAT_VERSION = 1
COMPRESSOR = "png"
# Two-sided p-values below these call an image unusual / out of distribution. With two
# scores, a test image is flagged unusual at most 2 * 2% of the time by construction.
UNUSUAL_P = 0.02
OUT_OF_DISTRIBUTION_P = 0.002
MIN_REFERENCE_IMAGES = 20
# A two-sided empirical p-value is at least 2 / (n + 1) (see :func:`place`): below these many
# reference images a p-value cannot reach UNUSUAL_P / OUT_OF_DISTRIBUTION_P at all, so the
# verdict rests on "beyond every reference image" and says how far that evidence goes.
IMAGES_FOR_UNUSUAL = math.ceil(2 / UNUSUAL_P)  # 100
IMAGES_FOR_OUT_OF_DISTRIBUTION = math.ceil(2 / OUT_OF_DISTRIBUTION_P)  # 1,000
ADD_REFERENCE_HINT = (
    "add it with `realnvp export CHECKPOINT OUT.pt --data-dir DATA_DIR` (or `realnvp eval "
    "CHECKPOINT --data-dir DATA_DIR --save`)"
)

IN_DISTRIBUTION = "in distribution"
UNUSUAL = "unusual"
OUT_OF_DISTRIBUTION = "out of distribution"
NO_REFERENCE = "no reference data"


def compressed_bits_per_dim(pixels: np.ndarray) -> float:
    """Bits/dim of a uint8 ``(C, H, W)`` image as a PNG (Pillow, level 9)."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"expected uint8 (C, H, W) pixels with 1 or 3 channels, got {arr.shape}")
    image = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    return 8.0 * len(buffer.getvalue()) / arr.size


def complexity_scores(bits_per_dim: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """``S = bits/dim - PNG bits/dim`` for each of ``N`` images, pixels ``(N, C, H, W)``."""
    bpd = np.asarray(bits_per_dim, dtype=np.float64).reshape(-1)
    if len(bpd) != len(pixels):
        raise ValueError(f"{len(bpd)} bits/dim values for {len(pixels)} images")
    return bpd - np.array([compressed_bits_per_dim(p) for p in pixels], dtype=np.float64)


@dataclass(frozen=True)
class Placement:
    """Where one value falls in a reference sample."""

    percentile: float  # 0-100: share of the reference below it (ties count half)
    p_value: float  # two-sided, from the empirical distribution; never 0
    below_all: bool
    above_all: bool


def place(value: float, sorted_reference: np.ndarray) -> Placement:
    """Percentile and two-sided empirical p-value ``min(1, 2 min(F-, F+))`` with
    ``F- = (#ref <= v + 1) / (n + 1)`` and ``F+ = (#ref >= v + 1) / (n + 1)``; the
    ``+1`` makes the smallest possible p-value ``2 / (n + 1)``, never 0."""
    ref = sorted_reference
    n = len(ref)
    lo = int(np.searchsorted(ref, value, side="left"))  # < value
    hi = int(np.searchsorted(ref, value, side="right"))  # <= value
    at_or_below, at_or_above = hi, n - lo
    p = min(1.0, 2.0 * min(at_or_below + 1, at_or_above + 1) / (n + 1))
    return Placement(
        percentile=100.0 * (lo + 0.5 * (hi - lo)) / n,
        p_value=p,
        below_all=hi == 0,
        above_all=lo == n,
    )


@dataclass(frozen=True)
class TypicalityReference:
    """Sorted per-image test bits/dim and complexity scores of a model's test set."""

    dataset: str
    bits_per_dim: np.ndarray  # (N,) sorted
    complexity: np.ndarray  # (N,) sorted
    compressor: str = COMPRESSOR
    note: str = ""

    @property
    def images(self) -> int:
        return len(self.bits_per_dim)

    @classmethod
    def from_scores(
        cls, dataset: str, bits_per_dim: np.ndarray, pixels: np.ndarray, note: str = ""
    ) -> TypicalityReference:
        """From per-image bits/dim and the uint8 ``(N, C, H, W)`` images they belong to."""
        bpd = np.asarray(bits_per_dim, dtype=np.float64).reshape(-1)
        if len(bpd) < MIN_REFERENCE_IMAGES:
            raise ValueError(
                f"a typicality reference needs at least {MIN_REFERENCE_IMAGES} test images, "
                f"got {len(bpd)}"
            )
        if not np.isfinite(bpd).all():
            raise ValueError("the test bits/dim contain NaN or infinite values")
        return cls(dataset, np.sort(bpd), np.sort(complexity_scores(bpd, pixels)), note=note)

    def to_meta(self) -> dict[str, Any]:
        """Plain values for a checkpoint's ``meta`` (rounded to 1e-5 bits/dim)."""
        return {
            "version": FORMAT_VERSION,
            "dataset": self.dataset,
            "images": self.images,
            "compressor": self.compressor,
            "note": self.note,
            "bits_per_dim": [round(float(v), 5) for v in self.bits_per_dim],
            "complexity": [round(float(v), 5) for v in self.complexity],
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> TypicalityReference | None:
        """The reference a checkpoint's ``meta`` carries, or ``None`` when it has none
        (or one this version cannot read)."""
        data = (meta or {}).get(META_KEY)
        if not isinstance(data, Mapping) or data.get("version") != FORMAT_VERSION:
            return None
        try:
            bpd = np.sort(np.asarray(data["bits_per_dim"], dtype=np.float64))
            cx = np.sort(np.asarray(data["complexity"], dtype=np.float64))
        except (KeyError, TypeError, ValueError):
            return None
        if bpd.ndim != 1 or len(bpd) < MIN_REFERENCE_IMAGES or len(cx) != len(bpd):
            return None
        if data.get("compressor", COMPRESSOR) != COMPRESSOR:
            return None
        return cls(str(data.get("dataset", "")), bpd, cx, note=str(data.get("note", "")))

    def histogram(
        self, bins: int = 40, which: str = "bits_per_dim"
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` of the bits/dim (or ``"complexity"``) sample, for a plot."""
        values = self.bits_per_dim if which == "bits_per_dim" else self.complexity
        return np.histogram(values, bins=bins)


def summarize_meta(data: Any) -> str:
    """One line for ``realnvp info`` instead of thousands of numbers."""
    ref = TypicalityReference.from_meta({META_KEY: data})
    if ref is None:
        return "unreadable"
    q = np.percentile(ref.bits_per_dim, [1, 50, 99])
    return (
        f"{ref.images} {ref.dataset} test images; bits/dim 1%/50%/99%: "
        f"{q[0]:.3f}/{q[1]:.3f}/{q[2]:.3f}; complexity score ({ref.compressor}) median "
        f"{np.median(ref.complexity):.3f}"
    )


@dataclass(frozen=True)
class Verdict:
    """Where an image stands against its model's test set."""

    label: str  # IN_DISTRIBUTION, UNUSUAL, OUT_OF_DISTRIBUTION or NO_REFERENCE
    reason: str
    bits_per_dim: float
    complexity_score: float
    percentile: float | None = None
    p_value: float | None = None
    complexity_percentile: float | None = None
    complexity_p_value: float | None = None
    reference_images: int | None = None  # the size of the test sample it was judged against

    @property
    def p_min(self) -> float | None:
        """The smaller of the two p-values (what the label is decided on)."""
        if self.p_value is None or self.complexity_p_value is None:
            return None
        return min(self.p_value, self.complexity_p_value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "percentile": self.percentile,
            "p_value": self.p_value,
            "complexity_score": self.complexity_score,
            "complexity_percentile": self.complexity_percentile,
            "complexity_p_value": self.complexity_p_value,
            "verdict": self.label,
            "reason": self.reason,
            "reference_images": self.reference_images,
        }


def percent_text(pct: float) -> str:
    """``pct`` (0-100) with one decimal, or as many more as it takes not to read 0 or 100
    when it is neither: 99.96 is ``99.96``, never ``100.0``."""
    for decimals in range(1, 6):
        text = f"{pct:.{decimals}f}"
        if (0.0 < pct < 100.0) == (0.0 < float(text) < 100.0):
            return text
    return text


def _ordinal(pct: float) -> str:
    # Strictly inside the sample reads 1st-99th: "100th percentile" means beyond all of it.
    n = round(pct)
    if 0.0 < pct < 100.0:
        n = min(max(n, 1), 99)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _bits_reason(place_: Placement, n: int) -> str:
    if place_.below_all:
        return f"fewer bits/dim than all {n:,} test images: simpler than anything in the test set"
    if place_.above_all:
        return f"more bits/dim than all {n:,} test images: far less likely than the test set"
    if place_.percentile < 50:
        return (
            f"fewer bits/dim than {percent_text(100 - place_.percentile)}% of the test set: "
            "simpler than almost all of it"
        )
    return (
        f"more bits/dim than {percent_text(place_.percentile)}% of the test set: "
        "less likely than almost all of it"
    )


def _complexity_reason(place_: Placement, n: int) -> str:
    if place_.percentile >= 50:
        extreme = (
            "any test image"
            if place_.above_all
            else f"{percent_text(place_.percentile)}% of the test set"
        )
        return (
            f"complexity-corrected score higher than {extreme}: the model codes it worse "
            "than its PNG size explains"
        )
    extreme = (
        "any test image"
        if place_.below_all
        else f"{percent_text(100 - place_.percentile)}% of the test set"
    )
    return (
        f"complexity-corrected score lower than {extreme}: the model codes it better "
        "than its PNG size explains"
    )


def judge(
    reference: TypicalityReference | None, bits_per_dim: float, complexity_score: float
) -> Verdict:
    """The verdict for one image: out of distribution when either two-sided p-value is
    below :data:`OUT_OF_DISTRIBUTION_P`, unusual below :data:`UNUSUAL_P`, else in
    distribution; the reason names the score(s) responsible, in words."""
    if not math.isfinite(bits_per_dim):
        return Verdict(
            OUT_OF_DISTRIBUTION,
            "the model gives it no finite likelihood",
            bits_per_dim,
            complexity_score,
        )
    if reference is None:
        return Verdict(
            NO_REFERENCE,
            "this checkpoint carries no test-set statistics to compare with; " + ADD_REFERENCE_HINT,
            bits_per_dim,
            complexity_score,
        )
    n = reference.images
    bits = place(bits_per_dim, reference.bits_per_dim)
    cx = place(complexity_score, reference.complexity)
    p_min = min(bits.p_value, cx.p_value)
    bits_beyond = bits.below_all or bits.above_all
    cx_beyond = cx.below_all or cx.above_all
    beyond = bits_beyond or cx_beyond
    if p_min < UNUSUAL_P or beyond:
        # Beyond every reference image is never "in distribution", however few they are.
        label = OUT_OF_DISTRIBUTION if p_min < OUT_OF_DISTRIBUTION_P else UNUSUAL
        reasons = []
        if bits.p_value < UNUSUAL_P or bits_beyond:
            reasons.append(_bits_reason(bits, n))
        if cx.p_value < UNUSUAL_P or cx_beyond:
            reasons.append(_complexity_reason(cx, n))
        if label == UNUSUAL and beyond and n < IMAGES_FOR_OUT_OF_DISTRIBUTION:
            reasons.append(
                f"beyond all {n:,} reference images it is unusual, but they are too few to "
                f"call it out of distribution (that takes {IMAGES_FOR_OUT_OF_DISTRIBUTION:,})"
            )
        reason = "; ".join(reasons)
    else:
        label = IN_DISTRIBUTION
        reason = (
            f"bits/dim at the {_ordinal(bits.percentile)} percentile of the {n:,} "
            f"{reference.dataset} test images, complexity score at the "
            f"{_ordinal(cx.percentile)}"
        )
    return Verdict(
        label,
        reason,
        bits_per_dim,
        complexity_score,
        percentile=bits.percentile,
        p_value=bits.p_value,
        complexity_percentile=cx.percentile,
        complexity_p_value=cx.p_value,
        reference_images=n,
    )


def judge_pixels(
    reference: TypicalityReference | None, bits_per_dim: float, pixels: np.ndarray
) -> Verdict:
    """:func:`judge` for a uint8 ``(C, H, W)`` image, computing its complexity score."""
    return judge(reference, bits_per_dim, bits_per_dim - compressed_bits_per_dim(pixels))
