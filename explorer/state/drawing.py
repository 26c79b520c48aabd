"""The drawing canvas: pixels at the model's resolution, strokes, undo and the erased mask.

No Qt, no torch: the draw panel turns mouse events into :meth:`Canvas.begin_stroke`,
:meth:`Canvas.stroke_to` and :meth:`Canvas.end_stroke` calls in the canvas's own pixel
coordinates (floats; ``(0.5, 0.5)`` is the centre of the top-left pixel), and reads
:attr:`Canvas.pixels` back.

- **Brush.** A round stamp of radius ``size / 2`` pixels whose edge fades over ``softness``
  of the radius. A stroke stamps along its path every quarter pixel; within one stroke a
  pixel takes the strongest coverage any stamp gave it (so a slow stroke is not darker than
  a fast one), blended over the pixels the stroke started from.
- **Eraser** paints the background (black) and marks what it touched in :attr:`mask`, the
  region a completion fills; **rectangle** erases and marks a box.
- **Undo and redo per stroke.** Every edit (stroke, rectangle, clear, "start from" an
  image) pushes the pixels and mask it replaced; undo brings them back exactly.
- :class:`BitsTrace` keeps the bits/dim answer after each edit, for the small trace plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from explorer.state.classes import NearestClass
from explorer.state.gallery import EncodedImage

BRUSH, ERASER, RECTANGLE = "brush", "eraser", "rectangle"
TOOLS = (BRUSH, ERASER, RECTANGLE)
MASK_THRESHOLD = 0.25  # an eraser coverage above this marks the pixel for completion
STAMP_SPACING = 0.25  # pixels between stamps along a stroke
MAX_HISTORY = 200


@dataclass(frozen=True)
class Brush:
    """Brush settings: ``size`` (diameter, pixels), ``softness`` (0 hard .. 1 soft edge),
    ``colour`` (RGB in ``[0, 1]``; a grey model uses its mean)."""

    size: float = 2.5
    softness: float = 0.5
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.size) and self.size > 0):
            raise ValueError(f"brush size must be positive, got {self.size}")
        if not 0.0 <= self.softness <= 1.0:
            raise ValueError(f"brush softness must lie in [0, 1], got {self.softness}")
        if len(self.colour) != 3 or not all(0.0 <= c <= 1.0 for c in self.colour):
            raise ValueError(f"brush colour must be three values in [0, 1], got {self.colour}")


def stamp(shape: tuple[int, int], x: float, y: float, brush: Brush) -> np.ndarray:
    """Coverage ``float32 (H, W)`` in ``[0, 1]`` of one stamp centred at ``(x, y)``."""
    h, w = shape
    radius = max(brush.size / 2.0, 0.5)
    rows = np.arange(h, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(w, dtype=np.float32)[None, :] + 0.5
    dist = np.sqrt((rows - y) ** 2 + (cols - x) ** 2)
    fade = max(radius * brush.softness, 0.5)  # at least half a pixel: no jagged edge
    return np.clip((radius - dist) / fade + 0.5, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True, eq=False)
class _Snapshot:
    pixels: np.ndarray
    mask: np.ndarray


class Canvas:
    """Pixels ``float32 (C, H, W)`` in ``[0, 1]``, the completion mask ``bool (H, W)`` and
    the undo history. See the module docstring."""

    def __init__(self, channels: int, size: int) -> None:
        if channels not in (1, 3) or size < 1:
            raise ValueError(
                f"a canvas needs 1 or 3 channels and a positive size, got {channels}, {size}"
            )
        self.channels, self.size = channels, size
        self.pixels = np.zeros((channels, size, size), np.float32)
        self.mask = np.zeros((size, size), bool)
        self.brush = Brush()
        self.tool = BRUSH
        self.edits = 0  # edits made (undo and redo count too): the answer's key
        self._undo: list[_Snapshot] = []
        self._redo: list[_Snapshot] = []
        self._stroke: _Snapshot | None = None  # what the stroke in progress started from
        self._coverage: np.ndarray | None = None
        self._last: tuple[float, float] | None = None
        self._rect_start: tuple[float, float] | None = None

    # -- reading -------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def uint8(self) -> np.ndarray:
        """The pixels as the model sees them: ``uint8 (C, H, W)``, ``floor(256 x)`` as
        ``core.files.images.to_uint8`` quantizes."""
        return np.clip(np.floor(self.pixels * 256.0), 0, 255).astype(np.uint8)

    @property
    def drawing(self) -> bool:
        """A stroke or rectangle is in progress."""
        return self._stroke is not None

    @property
    def can_undo(self) -> bool:
        return bool(self._undo) and not self.drawing

    @property
    def can_redo(self) -> bool:
        return bool(self._redo) and not self.drawing

    @property
    def rectangle(self) -> tuple[float, float, float, float] | None:
        """The rectangle being dragged: ``(x0, y0, x1, y1)`` in canvas pixels, or None."""
        if self._rect_start is None or self._last is None:
            return None
        (x0, y0), (x1, y1) = self._rect_start, self._last
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    # -- strokes ---------------------------------------------------------------------------

    def begin_stroke(self, x: float, y: float) -> None:
        """Start a stroke (brush, eraser) or a rectangle at ``(x, y)`` with the current tool."""
        if self.drawing:
            self.end_stroke()
        self._stroke = self._snapshot()
        self._coverage = np.zeros((self.size, self.size), np.float32)
        self._last = (x, y)
        if self.tool == RECTANGLE:
            self._rect_start = (x, y)
            return
        self._stamp_at(x, y)
        self._apply()

    def stroke_to(self, x: float, y: float) -> None:
        """Continue the stroke to ``(x, y)``: stamps along the segment from the last point."""
        if not self.drawing or self._last is None:
            return
        if self.tool == RECTANGLE:
            self._last = (x, y)
            return
        x0, y0 = self._last
        steps = max(1, math.ceil(math.hypot(x - x0, y - y0) / STAMP_SPACING))
        for i in range(1, steps + 1):
            t = i / steps
            self._stamp_at(x0 + (x - x0) * t, y0 + (y - y0) * t)
        self._last = (x, y)
        self._apply()

    def end_stroke(self) -> bool:
        """Finish the stroke; returns whether it changed anything (then it can be undone)."""
        if self._stroke is None:
            return False
        before = self._stroke
        if self.tool == RECTANGLE and self.rectangle is not None:
            self._erase_box(self.rectangle, before)
        self._stroke, self._coverage, self._last, self._rect_start = None, None, None, None
        changed = not (
            np.array_equal(before.pixels, self.pixels) and np.array_equal(before.mask, self.mask)
        )
        if changed:
            self._push(before)
        return changed

    def cancel_stroke(self) -> None:
        """Drop the stroke in progress: the canvas as it was before it."""
        if self._stroke is not None:
            self._restore(self._stroke)
        self._stroke, self._coverage, self._last, self._rect_start = None, None, None, None

    def _stamp_at(self, x: float, y: float) -> None:
        assert self._coverage is not None
        np.maximum(
            self._coverage, stamp((self.size, self.size), x, y, self.brush), out=self._coverage
        )

    def _apply(self) -> None:
        """Pixels = the stroke's start blended towards the stroke colour by its coverage."""
        assert self._stroke is not None and self._coverage is not None
        cover = self._coverage[None]  # (1, H, W)
        colour = self._colour()[:, None, None]  # (C, 1, 1)
        self.pixels = (self._stroke.pixels * (1.0 - cover) + colour * cover).astype(np.float32)
        if self.tool == ERASER:
            self.mask = self._stroke.mask | (self._coverage > MASK_THRESHOLD)
            self.pixels[:, self.mask] = 0.0  # what is marked reads as erased

    def _colour(self) -> np.ndarray:
        if self.tool != BRUSH:
            return np.zeros(self.channels, np.float32)  # the background
        rgb = np.asarray(self.brush.colour, np.float32)
        return rgb if self.channels == 3 else rgb.mean(keepdims=True)

    def _erase_box(self, box: tuple[float, float, float, float], before: _Snapshot) -> None:
        """Erase and mark every pixel whose centre lies in ``box`` (at least the one under
        a click)."""
        x0, y0, x1, y1 = box
        c0, c1 = _span(x0, x1, self.size)
        r0, r1 = _span(y0, y1, self.size)
        self.pixels = before.pixels.copy()
        self.mask = before.mask.copy()
        self.pixels[:, r0:r1, c0:c1] = 0.0
        self.mask[r0:r1, c0:c1] = True

    # -- whole-canvas edits -------------------------------------------------------------------

    def clear(self) -> bool:
        """Black canvas, empty mask (undoable). False when it was already so."""
        return self._replace(np.zeros_like(self.pixels), np.zeros_like(self.mask))

    def clear_mask(self) -> bool:
        """Forget the erased region (the pixels stay; undoable)."""
        return self._replace(self.pixels.copy(), np.zeros_like(self.mask))

    def set_image(self, pixels: np.ndarray, keep_mask: bool = False) -> bool:
        """Replace the canvas with ``uint8 (C, H, W)`` pixels ("start from" an image, or a
        completion taken): undoable. The mask is cleared unless ``keep_mask``."""
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.shape != self.shape:
            raise ValueError(f"expected uint8 pixels of shape {self.shape}, got {pixels.shape}")
        # Pixel centres: uint8() gives back exactly these values.
        values = ((pixels.astype(np.float32) + 0.5) / 256.0).astype(np.float32)
        mask = self.mask.copy() if keep_mask else np.zeros_like(self.mask)
        return self._replace(values, mask)

    def _replace(self, pixels: np.ndarray, mask: np.ndarray) -> bool:
        self.cancel_stroke()
        if np.array_equal(pixels, self.pixels) and np.array_equal(mask, self.mask):
            return False
        self._push(self._snapshot())
        self.pixels, self.mask = pixels.astype(np.float32), mask
        return True

    # -- history -------------------------------------------------------------------------------

    def undo(self) -> bool:
        if not self.can_undo:
            return False
        self._redo.append(self._snapshot())
        self._restore(self._undo.pop())
        self.edits += 1
        return True

    def redo(self) -> bool:
        if not self.can_redo:
            return False
        self._undo.append(self._snapshot())
        self._restore(self._redo.pop())
        self.edits += 1
        return True

    def _push(self, before: _Snapshot) -> None:
        self._undo.append(before)
        del self._undo[:-MAX_HISTORY]
        self._redo.clear()
        self.edits += 1

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(self.pixels.copy(), self.mask.copy())

    def _restore(self, snap: _Snapshot) -> None:
        self.pixels, self.mask = snap.pixels.copy(), snap.mask.copy()


def _span(a: float, b: float, size: int) -> tuple[int, int]:
    """Pixel indices whose centres lie in ``[a, b]``, at least the pixel under ``a``."""
    lo = max(0, math.ceil(a - 0.5))
    hi = min(size, math.floor(b - 0.5) + 1)
    if hi <= lo:
        lo = min(max(0, math.floor(a)), size - 1)
        hi = lo + 1
    return lo, hi


class BitsTrace:
    """Bits/dim after each edit, in order: ``(edit number, bits/dim)`` pairs. An answer for
    an edit already traced (undo back to it, a repeated request) replaces it."""

    def __init__(self, limit: int = 500) -> None:
        self.limit = limit
        self.points: list[tuple[int, float]] = []

    def add(self, edit: int, bits_per_dim: float) -> None:
        if self.points and self.points[-1][0] == edit:
            self.points[-1] = (edit, bits_per_dim)
        else:
            self.points.append((edit, bits_per_dim))
            del self.points[: -self.limit]

    def clear(self) -> None:
        self.points.clear()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``: the answer's position in the trace and its bits/dim."""
        y = np.array([b for _e, b in self.points], np.float64)
        return np.arange(len(y), dtype=np.float64), y


@dataclass(frozen=True, eq=False)
class DrawingAnswer:
    """What the model says about the canvas after edit ``edit``: the encoding (bits/dim,
    likelihood map and verdict, reconstruction), the nearest class per level (empty without
    class statistics), how long it took and on which thread (tests check it is not the
    GUI's)."""

    edit: int
    model_id: int
    pixels: np.ndarray  # uint8 (C, H, W): what was encoded
    encoded: EncodedImage
    nearest: tuple[NearestClass, ...]
    elapsed_ms: float
    thread_id: int
