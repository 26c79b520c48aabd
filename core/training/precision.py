"""float32 or bf16: which precision a step runs in, chosen by measurement on the CPU.

A CPU with bf16 matrix units (``amx_bf16``, ``avx512_bf16``) runs bf16 convolutions several
times faster than float32; one without them emulates bf16 and runs it many times slower (an
AMD EPYC of the Zen 3 family: a 3x3 convolution of 64 channels at 16x16, channels_last,
17 against 145 GFLOP/s in float32, and a 16-image decode of the ``cifar10`` preset 50x
slower in plain NCHW). How much a model gains also depends on its widths and the batch, so
``auto`` measures:

1. a probe of one 3x3 convolution of the model's width and size in both precisions (well
   under a second). Where bf16 is not faster there, float32 is chosen without timing the
   real work, which in emulated bf16 can take minutes;
2. otherwise the real work (a training step, a decode) in both precisions, interleaved, and
   bf16 only if it is at least :data:`MARGIN` faster.

The flow's arithmetic never changes precision: bf16 is only ever the s/t networks' matrix
work (see :func:`core.training.step.step_autocast` and :func:`core.flow.inference.bf16_copy`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.config import PRECISIONS
from core.training import timing

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
# bf16 is chosen only when it is at least this much faster: within noise float32 stays,
# being the exact reference.
MARGIN = 0.95
# The picture test of a bf16 frame: at most one grey level (of 255) from the float32 frame
# on at least this share of the pixels.
SAME_PICTURE_GREY_LEVELS = 1
SAME_PICTURE_SHARE = 0.999
# The draft test, looser than the picture test (same_picture below): a
# draft frame (shown only while something is dragged, replaced by the exact frame when it
# stops) may differ from the float32 frame by up to 16 grey levels (of 255, a 6% step no one
# sees on an image in motion) on all but half a percent of its pixels, and by no more than
# 64 anywhere (a quarter of the range: an edge may move by a fraction of a pixel, nothing
# turns from black to white). It looks at a 16-image frame of standard-normal latents.
DRAFT_GREY_LEVELS = 16
DRAFT_SHARE = 0.995
DRAFT_MAX_GREY_LEVELS = 64
# The shares of a draft's pixels reported within this many grey levels of the exact frame.
DRAFT_ERROR_LEVELS = (1, 4, 16)


def bf16_units(cpuinfo: str | None = None) -> list[str]:
    """The CPU's bf16 matrix-unit flags (``amx_bf16``, ``avx512_bf16``; ``bf16`` on Arm).
    Shown in reports; the choice itself is measured, since flags do not say how fast."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return sorted(flags & {"amx_bf16", "avx512_bf16", "bf16"})


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a model runs in and why: ``precision`` is ``float32`` or ``bf16``;
    ``reason`` is one line for people (the ``start`` event, the progress bar, tooltips);
    ``float32_ms`` / ``bf16_ms`` are the figures behind a measured choice."""

    precision: str
    reason: str
    requested: str = "auto"
    float32_ms: float | None = None
    bf16_ms: float | None = None

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return name


def interleaved_ms(
    run: Callable[[str], object],
    repeats: int = 2,
    warmup: int = 1,
    budget_s: float | None = None,
) -> dict[str, float]:
    """Median milliseconds of ``run(precision)`` for float32 and bf16, alternating so that a
    change in the machine's load falls on both (:func:`core.training.timing.interleaved_ms`).
    ``budget_s``: fewer repeats (at least one) where the warm-up calls say they would take
    longer."""
    calls = {p: (lambda p=p: run(p)) for p in ("float32", "bf16")}
    times, _ = timing.interleaved_ms(calls, repeats, warmup=warmup, budget_s=budget_s)
    return {p: timing.p50(t) for p, t in times.items()}


def conv_probe_ms(channels: int, size: int, batch: int, repeats: int = 3) -> dict[str, float]:
    """A 3x3 convolution of ``channels`` at ``size`` x ``size`` in both precisions,
    channels_last (oneDNN's preferred layout for bf16), batch trimmed so one float32 call
    is about 0.2 GFLOP: a fraction of a second even where bf16 is emulated."""
    flops_per_image = 2 * channels * channels * 9 * size * size
    batch = max(1, min(batch, int(2e8 // flops_per_image)))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g)
    w = torch.randn(channels, channels, 3, 3, generator=g) / (3 * channels**0.5)
    inputs = {
        p: (
            x.to(dt).contiguous(memory_format=torch.channels_last),
            w.to(dt).contiguous(memory_format=torch.channels_last),
        )
        for p, dt in DTYPES.items()
    }

    def run(p: str) -> None:
        with torch.inference_mode():
            F.conv2d(*inputs[p], padding=1)

    return interleaved_ms(run, repeats=repeats)


Measure = Callable[[], dict[str, float]]


def choose_precision(
    requested: str,
    device: torch.device,
    probe: Measure,
    measure: Measure,
    what: str = "step",
) -> PrecisionChoice:
    """The precision to run in. ``requested``: ``auto``, ``float32`` or ``bf16``.

    On the CPU ``auto`` runs ``probe()`` (see :func:`conv_probe_ms`) and, only where bf16
    was faster there, ``measure()``: both return median milliseconds per precision (see
    :func:`interleaved_ms`). On CUDA ``auto`` is bf16 (the GPU's tensor cores; the trainer's
    recipe); elsewhere (MPS) float32.
    """
    check_precision(requested)
    if requested != "auto":
        return PrecisionChoice(requested, f"{requested} (asked for)", requested)
    if device.type == "cuda":
        return PrecisionChoice("bf16", "bf16 (auto: CUDA)", requested)
    if device.type != "cpu":
        return PrecisionChoice("float32", f"float32 (auto: bf16 not used on {device.type})")
    probe_ms = probe()
    f32, bf16 = probe_ms["float32"], probe_ms["bf16"]
    if not bf16 < f32:
        units = ", ".join(bf16_units()) or "no bf16 units"
        return PrecisionChoice(
            "float32",
            f"float32 (auto: bf16 convolutions {bf16 / f32:.1f}x slower here; {units})",
            requested,
            round(f32, 3),
            round(bf16, 3),
        )
    ms = measure()
    f32, bf16 = ms["float32"], ms["bf16"]
    if bf16 < MARGIN * f32:
        reason = f"bf16 (auto: {what} {f32 / bf16:.2f}x faster than float32)"
        chosen = "bf16"
    else:
        reason = f"float32 (auto: bf16 {what} {f32 / bf16:.2f}x, not faster)"
        chosen = "float32"
    return PrecisionChoice(chosen, reason, requested, round(f32, 3), round(bf16, 3))


def same_picture(reference: np.ndarray, other: np.ndarray) -> tuple[bool, float]:
    """Whether two ``uint8`` frames show the same picture: at most
    :data:`SAME_PICTURE_GREY_LEVELS` apart on at least :data:`SAME_PICTURE_SHARE` of the
    pixels. Returns (same, share within)."""
    if reference.shape != other.shape:
        raise ValueError(f"frames of shapes {reference.shape} and {other.shape}")
    diff = np.abs(reference.astype(np.int16) - other.astype(np.int16))
    share = float((diff <= SAME_PICTURE_GREY_LEVELS).mean()) if diff.size else 1.0
    return share >= SAME_PICTURE_SHARE, share


def draft_error(reference: np.ndarray, draft: np.ndarray) -> dict[str, float]:
    """How far a ``uint8`` draft frame is from the exact one: ``within_K`` (the share of
    pixels at most K grey levels apart, for K in :data:`DRAFT_ERROR_LEVELS`) and ``max``."""
    if reference.shape != draft.shape:
        raise ValueError(f"frames of shapes {reference.shape} and {draft.shape}")
    diff = np.abs(reference.astype(np.int16) - draft.astype(np.int16))
    if not diff.size:
        return {**{f"within_{k}": 1.0 for k in DRAFT_ERROR_LEVELS}, "max": 0.0}
    shares = {f"within_{k}": round(float((diff <= k).mean()), 5) for k in DRAFT_ERROR_LEVELS}
    return {**shares, "max": float(diff.max())}


def draft_passes(error: Mapping[str, float]) -> bool:
    """The draft test: at least :data:`DRAFT_SHARE` of the pixels within
    :data:`DRAFT_GREY_LEVELS` and none beyond :data:`DRAFT_MAX_GREY_LEVELS`."""
    return (
        error[f"within_{DRAFT_GREY_LEVELS}"] >= DRAFT_SHARE
        and error["max"] <= DRAFT_MAX_GREY_LEVELS
    )


def describe_draft_error(error: Mapping[str, float]) -> str:
    """``99.95% within 16 grey levels (97.1% within 1), at most 31 off``."""
    return (
        f"{100 * error[f'within_{DRAFT_GREY_LEVELS}']:.2f}% within {DRAFT_GREY_LEVELS} grey "
        f"levels ({100 * error['within_1']:.1f}% within 1), at most {error['max']:.0f} off"
    )
