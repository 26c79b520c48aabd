"""How the engine renders one model: its render plan, decided by measurement after loading.

A :class:`RenderPlan` holds what the engine measured for the open model and what it chose
from that: CPU threads, whether a grid renders progressively (the selected image first, then
the rest in chunks) and in chunks of how many, and the numeric precision. The engine starts
each model with :func:`default_plan` and replaces it as :class:`PlanMeasurement` steps
(one timed decode each, run on the render thread between frames, never on the GUI thread)
bring figures in.

Extension point: a later measurement (precision, device) adds a field here, a step to
:class:`PlanMeasurement`, and a line to :meth:`RenderPlan.describe`; the engine reads the
plan, never the figures.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from core.training.precision import (
    DRAFT_GREY_LEVELS,
    DRAFT_MAX_GREY_LEVELS,
    DRAFT_SHARE,
    MARGIN,
    describe_draft_error,
    draft_passes,
)

# A frame that would take longer than this renders progressively: 50 ms is 20 frames a
# second, about where a dragged slider stops feeling attached to the image. The bundled
# model's 16-image frames (about 30 ms decoding on 2 cores) stay whole frames.
FRAME_BUDGET_MS = 50.0
# Progressive chunks aim at this many budgets each: bigger chunks decode more images per
# second (a batch of 16 costs about 9 single images for the cifar10 preset), smaller ones
# show progress sooner. A newer request preempts a chunk part-way, so this does not delay it.
CHUNK_BUDGETS = 4.0
# Batch sizes the plan is measured at: one image (the selected one) and the default grid.
PLAN_BATCHES = (1, 16)
# More threads are taken only when measured this much faster: the GUI thread shares the
# cores while frames render, which the idle measurement does not see.
THREAD_MARGIN = 0.9


def thread_candidates(cores: int | None = None) -> tuple[int, ...]:
    """The thread counts worth measuring: one, and every core."""
    cores = max(1, cores if cores is not None else os.cpu_count() or 1)
    return (1,) if cores == 1 else (1, cores)


@dataclass(frozen=True)
class RenderPlan:
    """How to render the open model, from figures measured on this machine.

    ``decode_ms[threads][batch]``: median milliseconds of a full decode of ``batch`` images
    with ``threads`` CPU threads (all figures measured so far). ``threads`` is the count the
    engine renders with. ``precisions[batch]``: ``"float32"`` or ``"bf16"``, what frames of
    that many images decode in (see :meth:`precision_for`; float32 until measured), with
    ``precision_note`` saying why and ``precision_ms[batch]`` the figures behind it.
    ``measured``: every planned figure is in; ``forced_threads``: ``--threads`` chose.

    Draft frames (drawn while something is dragged, replaced by the exact float32 frame once
    it stops): ``drafts[batch]`` whether frames of that many images may be drafts (see
    :meth:`draft_for`), ``draft_note`` why, ``draft_error`` the draft test's figures
    (:func:`~core.training.precision.draft_error`) and ``draft_ms[batch]`` the interleaved
    decode times behind it.
    """

    threads: int
    decode_ms: Mapping[int, Mapping[int, float]] = field(default_factory=dict)
    budget_ms: float = FRAME_BUDGET_MS
    precisions: Mapping[int, str] = field(default_factory=dict)
    precision_note: str = "not measured yet"
    precision_ms: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    measured: bool = False
    forced_threads: bool = False
    device: str = "cpu"
    drafts: Mapping[int, bool] = field(default_factory=dict)
    draft_note: str = "not measured yet"
    draft_error: Mapping[str, float] = field(default_factory=dict)
    draft_ms: Mapping[int, Mapping[str, float]] = field(default_factory=dict)

    def predict_ms(self, n: int, fraction: float = 1.0) -> float | None:
        """Predicted milliseconds to decode ``n`` images with the chosen threads, linear
        between the measured batch sizes; ``fraction``: the share of the levels decoded
        (a level-cache hit redoes only the finer ones). ``None`` before any figure."""
        figures = self.decode_ms.get(self.threads, {})
        if not figures:
            return None
        batches = sorted(figures)
        if len(batches) == 1 or n <= batches[0]:
            b = batches[0]
            per_image = figures[b] / b
            return fraction * (figures[b] if n <= b else per_image * n)
        lo, hi = batches[0], batches[-1]
        for a, b in itertools.pairwise(batches):
            if n <= b:
                lo, hi = a, b
                break
        slope = (figures[hi] - figures[lo]) / (hi - lo)
        return fraction * max(0.0, figures[lo] + slope * (n - lo))

    @property
    def precision(self) -> str:
        """The precision of a grid of the largest planned batch (reports, benchmarks)."""
        return self.precision_for(PLAN_BATCHES[-1])

    def precision_for(self, n: int) -> str:
        """The precision a frame of ``n`` images decodes in: that of the largest measured
        batch size up to ``n`` (the smallest for fewer), float32 before any."""
        if not self.precisions:
            return "float32"
        batches = sorted(self.precisions)
        below = [b for b in batches if b <= n]
        return self.precisions[below[-1] if below else batches[0]]

    def draft_for(self, n: int) -> bool:
        """Whether a frame of ``n`` images drawn during a drag may be a draft: as measured
        for the largest batch size up to ``n`` (the smallest for fewer); never before."""
        if not self.drafts:
            return False
        batches = sorted(self.drafts)
        below = [b for b in batches if b <= n]
        return self.drafts[below[-1] if below else batches[0]]

    def progressive(self, n: int, fraction: float = 1.0) -> bool:
        """Whether ``n`` images render the selected one first, then the rest in chunks."""
        predicted = self.predict_ms(n, fraction)
        return n > 1 and predicted is not None and predicted > self.budget_ms

    def chunk_size(self, n: int) -> int:
        """Images per chunk after the selected one (at least one)."""
        one = self.predict_ms(1) or 0.0
        target = max(CHUNK_BUDGETS * self.budget_ms, 2.0 * one)
        size = 1
        while size < n and (self.predict_ms(size + 1) or 0.0) <= target:
            size += 1
        return size

    def describe(self) -> str:
        """Lines for the frame-time tooltip: the choice and the figures behind it."""
        how = "set by --threads" if self.forced_threads else "measured" if self.measured else ""
        if not self.measured and not self.forced_threads:
            how = "measuring" if self.decode_ms else "default, not measured yet"
        lines = [f"Render threads: {self.threads} ({how})"]
        for threads, figures in sorted(self.decode_ms.items()):
            shown = ", ".join(f"{b} image{'s' * (b > 1)} {ms:.1f} ms" for b, ms in figures.items())
            lines.append(f"  {threads} thread{'s' * (threads > 1)}: {shown}")
        one = self.predict_ms(1)
        grid = self.predict_ms(PLAN_BATCHES[-1])
        if grid is not None and self.progressive(PLAN_BATCHES[-1]):
            lines.append(
                f"Progressive: frames over {self.budget_ms:.0f} ms show the selected image "
                f"first ({one:.0f} ms), then the grid in chunks of "
                f"{self.chunk_size(PLAN_BATCHES[-1] - 1)}"
            )
        elif grid is not None:
            lines.append(
                f"Whole frames: a {PLAN_BATCHES[-1]}-image grid is within {self.budget_ms:.0f} ms"
            )
        chosen = sorted(self.precisions.items())
        if chosen and len({p for _, p in chosen}) == 1:
            lines.append(f"Precision: {chosen[0][1]} ({self.precision_note})")
        elif chosen:
            shown = ", ".join(f"{b} image{'s' * (b > 1)} {p}" for b, p in chosen)
            lines.append(f"Precision: {shown} ({self.precision_note})")
        else:
            lines.append(f"Precision: float32 ({self.precision_note})")
        lines += _figure_lines(self.precision_ms)
        drawn = [b for b, on in sorted(self.drafts.items()) if on]
        if drawn:
            shown = ", ".join(f"{b} image{'s' * (b > 1)}" for b in drawn)
            lines.append(f"Drafts while dragging: bf16 for {shown} ({self.draft_note})")
        else:
            lines.append(f"Drafts while dragging: none ({self.draft_note})")
        lines += _figure_lines(self.draft_ms)
        return "\n".join(lines)


def _figure_lines(figures: Mapping[int, Mapping[str, float]]) -> list[str]:
    """``  16 images: float32 35.6 ms, bf16 17.0 ms``, one line per batch size."""
    return [
        f"  {b} image{'s' * (b > 1)}: " + ", ".join(f"{p} {v:.1f} ms" for p, v in ms.items())
        for b, ms in sorted(figures.items())
    ]


def default_plan(threads: int, forced: bool = False, device: str = "cpu") -> RenderPlan:
    """The plan before anything is measured: whole frames with ``threads``."""
    return RenderPlan(threads=threads, forced_threads=forced, device=device)


def choose_threads(
    decode_ms: Mapping[int, Mapping[int, float]], worst_ms: Mapping[int, float] | None = None
) -> int:
    """The fewest threads unless more are clearly faster (by :data:`THREAD_MARGIN`) for the
    measured batches together, and no slower in their slowest decodes (``worst_ms``)."""

    def cost(threads: int) -> float:
        return sum(decode_ms[threads].values())

    measured = [t for t in sorted(decode_ms) if decode_ms[t]]
    if not measured:
        return min(decode_ms) if decode_ms else 1
    best = measured[0]
    for threads in measured[1:]:
        if set(decode_ms[threads]) != set(decode_ms[best]):
            continue
        steadier = worst_ms is None or worst_ms[threads] <= worst_ms[best]
        if cost(threads) < THREAD_MARGIN * cost(best) and steadier:
            best = threads
    return best


@dataclass(frozen=True)
class PrecisionMeasurement:
    """What measuring a model's render precision needs from the engine (see
    :mod:`core.training.precision`): ``probe()``, median ms of a bf16 and a float32 convolution of
    the model's width; ``picture(batch)``, whether a bf16 frame of ``batch`` images shows
    the same picture as the float32 one (:func:`core.training.precision.same_picture`) and the
    share of pixels within one grey level; ``decode(batch, threads, precision)``, ms of
    one full decode (``precision`` also ``"draft"``); ``draft(batch)``, the draft test's
    figures (:func:`~core.training.precision.draft_error`) of a draft frame of ``batch``
    images, or ``None`` for no draft measurement."""

    probe: Callable[[], Mapping[str, float]]
    picture: Callable[[int], tuple[bool, float]]
    decode: Callable[[int, int, str], float]
    repeats: int = 2
    draft: Callable[[int], Mapping[str, float]] | None = None


class PlanMeasurement:
    """The measurement of one model's plan as small steps: each ``next()`` runs one timed
    decode (through ``decode(batch, threads) -> ms``) and returns the plan so far. With
    ``precision``, then the render precision at the chosen thread count: the convolution
    probe, and only where bf16 was faster there the picture test at the largest batch and
    interleaved decodes in both precisions at each batch size, one step each.

    The engine runs a step only when no frame is waiting, so a user's frame waits at most
    one decode; for the cifar10 preset on 2 cores the whole measurement is about 20 decodes.
    """

    def __init__(
        self,
        start: RenderPlan,
        decode: Callable[[int, int], float],
        threads: tuple[int, ...] | None = None,
        batches: tuple[int, ...] = PLAN_BATCHES,
        repeats: Mapping[int, int] | None = None,
        precision: PrecisionMeasurement | None = None,
    ) -> None:
        self.plan = start
        self._decode = decode
        self._precision = precision
        self._threads = (start.threads,) if start.forced_threads else threads or thread_candidates()
        # The current thread count first, so a provisional plan exists early.
        self._threads = tuple(sorted(set(self._threads), key=lambda t: t != start.threads))
        self._batches = batches
        self._repeats = {1: 5} if repeats is None else dict(repeats)
        self._steps = self._run()

    def __iter__(self) -> Iterator[RenderPlan]:
        return self._steps

    def __next__(self) -> RenderPlan:
        return next(self._steps)

    def _run(self) -> Iterator[RenderPlan]:
        # Thread counts alternate decode by decode, so both see the same load from the rest
        # of the machine (on a shared machine an oversubscribed thread team can be ten
        # times slower for a while).
        figures: dict[int, dict[int, float]] = {t: {} for t in self._threads}
        worst: dict[int, float] = dict.fromkeys(self._threads, 0.0)
        for batch in self._batches:
            # One warm-up, then a few (fewer for big batches: they are slow and steadier).
            repeats = self._repeats.get(batch, 2)
            times: dict[int, list[float]] = {t: [] for t in self._threads}
            for i in range(1 + repeats):
                for threads in self._threads:
                    ms = self._decode(batch, threads)
                    if i == 0 and not self.plan.decode_ms:
                        # A first figure from a warm decode: the engine runs these two
                        # decodes before the model's first frame, so even that frame can
                        # render progressively.
                        ms = self._decode(batch, threads)
                        self.plan = replace(self.plan, decode_ms={threads: {batch: round(ms, 2)}})
                    if i:
                        times[threads].append(ms)
                    yield self.plan
            for threads, samples in times.items():
                figures[threads][batch] = round(statistics.median(samples), 2)
                worst[threads] += max(samples)
            self.plan = replace(
                self.plan,
                threads=choose_threads(figures, worst)
                if not self.plan.forced_threads
                else self.plan.threads,
                decode_ms={t: dict(f) for t, f in figures.items()},
            )
        if self._precision is not None:
            yield from self._measure_precision(self._precision)
        self.plan = replace(self.plan, measured=True)
        yield self.plan

    def _measure_precision(self, m: PrecisionMeasurement) -> Iterator[RenderPlan]:
        float32 = dict.fromkeys(self._batches, "float32")
        probe = m.probe()
        yield self.plan
        if not probe["bf16"] < probe["float32"]:
            ratio = probe["bf16"] / probe["float32"]
            note = f"bf16 convolutions {ratio:.1f}x slower here"
            self.plan = replace(self.plan, precisions=float32, precision_note=note, draft_note=note)
            return
        grid = max(self._batches)
        same, share = m.picture(grid)
        yield self.plan
        if not same:
            note = (
                f"a bf16 frame is not the same picture: {100 * share:.2f}% of pixels "
                "within one grey level"
            )
            self.plan = replace(self.plan, precisions=float32, precision_note=note)
            if m.draft is not None:
                yield from self._measure_drafts(m)
            return
        threads = self.plan.threads
        chosen: dict[int, str] = {}
        figures: dict[int, dict[str, float]] = {}
        decode_ms = {t: dict(f) for t, f in self.plan.decode_ms.items()}
        for batch in self._batches:
            times: dict[str, list[float]] = {"float32": [], "bf16": []}
            for i in range(1 + m.repeats):  # one warm-up round, then alternating
                for p in ("float32", "bf16"):
                    ms = m.decode(batch, threads, p)
                    if i:
                        times[p].append(ms)
                    yield self.plan
            medians = {p: round(statistics.median(t), 2) for p, t in times.items()}
            figures[batch] = medians
            chosen[batch] = "bf16" if medians["bf16"] < MARGIN * medians["float32"] else "float32"
            decode_ms.setdefault(threads, {})[batch] = medians[chosen[batch]]
        note = f"bf16 frames are the same picture ({100 * share:.2f}% within one grey level)"
        if "bf16" in chosen.values():
            draft_note = "frames are bf16 already where it is faster"
        else:  # the convolution probe said faster, whole decodes did not
            draft_note = "bf16 decodes were no faster than float32 here"
        self.plan = replace(
            self.plan,
            precisions=chosen,
            precision_note=note,
            precision_ms=figures,
            decode_ms=decode_ms,
            draft_note=draft_note,
        )

    def _measure_drafts(self, m: PrecisionMeasurement) -> Iterator[RenderPlan]:
        """The draft test on a grid, then (only if it passes) interleaved decodes of the
        exact and the draft model at each batch size: drafts where they are faster."""
        assert m.draft is not None
        error = dict(m.draft(max(self._batches)))
        yield self.plan
        if not draft_passes(error):
            note = (
                f"refused: {describe_draft_error(error)}; the test asks for "
                f"{100 * DRAFT_SHARE:g}% within {DRAFT_GREY_LEVELS} and at most "
                f"{DRAFT_MAX_GREY_LEVELS} off"
            )
            self.plan = replace(
                self.plan,
                drafts=dict.fromkeys(self._batches, False),
                draft_note=note,
                draft_error=error,
            )
            return
        drafts: dict[int, bool] = {}
        figures: dict[int, dict[str, float]] = {}
        for batch in self._batches:
            times: dict[str, list[float]] = {"float32": [], "draft": []}
            for i in range(1 + m.repeats):  # one warm-up round, then alternating
                for p in ("float32", "draft"):
                    ms = m.decode(batch, self.plan.threads, p)
                    if i:
                        times[p].append(ms)
                    yield self.plan
            figures[batch] = {p: round(statistics.median(t), 2) for p, t in times.items()}
            drafts[batch] = figures[batch]["draft"] < MARGIN * figures[batch]["float32"]
        self.plan = replace(
            self.plan,
            drafts=drafts,
            draft_note=f"the draft test passed: {describe_draft_error(error)}",
            draft_error=error,
            draft_ms=figures,
        )
