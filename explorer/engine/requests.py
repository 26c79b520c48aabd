"""What crosses between the GUI and the render thread: an immutable :class:`RenderRequest`
in, a :class:`Frame` of numpy pixels out (:mod:`explorer.engine.render` turns one into the
other)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLES_TARGET = "samples"


@dataclass(frozen=True, eq=False)
class RenderRequest:
    """One frame to draw. The latents are copied and made read-only on construction, so
    a request can cross threads and nothing can change it while it waits."""

    request_id: int
    model_id: int
    latents: tuple[np.ndarray, ...]  # finest first, each (N, C, H, W) float32
    target: str = SAMPLES_TARGET  # which view the frame is for; newest wins per target
    focus: int = 0  # the selected image: rendered first when the frame renders progressively
    # Part of a drag: may be drawn as a draft (bf16) where the render plan allows, and is
    # then replaced by the exact frame once no newer request follows it.
    draft: bool = False

    def __post_init__(self) -> None:
        frozen = []
        for z in self.latents:
            z = np.array(z, dtype=np.float32, copy=True, order="C")
            z.setflags(write=False)
            frozen.append(z)
        object.__setattr__(self, "latents", tuple(frozen))


@dataclass(frozen=True, eq=False)
class Frame:
    """A rendered frame: ``images`` is ``uint8 (N, C, H, W)``."""

    request_id: int
    model_id: int
    images: np.ndarray
    elapsed_ms: float
    levels_decoded: int  # how many levels were decoded; fewer than all = cache hit
    dropped: int  # requests skipped so far because newer ones replaced them
    target: str = SAMPLES_TARGET
    # Progressive frames come in parts: the selected image first, then chunks of the grid.
    # ``stale``: images still showing an older frame's pixels; ``complete``: the last part.
    complete: bool = True
    stale: tuple[int, ...] = ()
    first_ms: float | None = None  # progressive: milliseconds to the selected image
    # What the pixels were computed in: "float32" (exact), "bf16" (the plan's frame
    # precision, the same picture) or "draft" (during a drag; the exact frame follows).
    precision: str = "float32"

    @property
    def draft(self) -> bool:
        return self.precision == "draft"


class Preempted(Exception):
    """Raised inside a decode when a newer request makes the rest of a grid pointless."""
