"""What the render thread does next, and what it may reuse: the scheduling half of
:class:`~explorer.engine.render.RenderEngine` (the models are the other,
:mod:`explorer.engine.model_set`).

- **Mailbox and targets.** One slot per target view (``"samples"``, ``"strip"``, ...): a
  newer request replaces the one waiting for its target, and the samples view is served
  first.
- **Exact after draft.** A draft frame is followed by the exact frame of its latents once
  no newer request for its target has come for :data:`EXACT_AFTER_MS`.
- **Answers and jobs.** Calls other threads hand to the render thread: answers (someone
  waits now) before frames' leftovers, jobs (batch work) after every frame.
- **Preemption.** A progressive grid's chunks, and a plan-measurement decode, are cut
  short (:class:`~explorer.engine.requests.Preempted`) by a newer request.
- **Idle-time work.** The CUDA graph build, the device race and the plan measurement,
  run a step at a time when nothing else waits.
- **Level cache.** Per target, the running tensors of the last exact frame, so a frame
  whose coarse levels did not change restarts from them (:class:`LevelCaches`).

Everything here is guarded by one condition variable, :attr:`RenderScheduler.mailbox`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from explorer.engine.plan import PlanMeasurement
from explorer.engine.requests import SAMPLES_TARGET, Preempted, RenderRequest

# After a draft frame, the exact frame starts once no newer request has come for this long:
# a drag's moves come every 10-20 ms, so an exact frame rarely starts (and is cut short)
# between two of them, and the draft's time, this and the exact frame (about 35 ms for the
# bundled model's 16 images on 2 cores) stay within the 150 ms after the last move.
EXACT_AFTER_MS = 30.0

MEASURE = object()  # the render thread's work item for one idle-time step


@dataclass(frozen=True)
class ExactFrame:
    """The render thread's work item for the exact frame that replaces a draft."""

    request: RenderRequest


@dataclass(eq=False)
class Job:
    """A call another thread hands to the render thread; its result or exception reaches
    the caller waiting on ``future``."""

    call: Any
    future: Future = field(default_factory=Future)
    answer: bool = False  # someone waits for it now: goes first, preempts a measurement

    def run(self) -> None:
        try:
            self.future.set_result(self.call())
        except BaseException as exc:  # handed to the caller, never raised on the render thread
            self.future.set_exception(exc)


@dataclass
class LevelCache:
    model_id: int
    latents: list[np.ndarray]  # the latents of the cached frame, finest first
    running: list[torch.Tensor]  # running[j]: tensor after handling levels >= j
    precision: str = "float32"  # of the model that made it; float32 work never uses bf16's


class LevelCaches(dict[str, LevelCache]):
    """The level cache of each target. Decoding runs coarse to fine, and the running tensor
    after handling levels ``>= j`` depends only on the latents of those levels, so a frame
    whose coarse levels match the cached frame's restarts from the cached tensor of the
    coarsest unchanged level: the same arithmetic as a full decode, the same pixels."""

    enabled = True

    def start(
        self,
        latents: Sequence[np.ndarray],
        target: str | None,
        model_id: int,
        precision: str = "float32",
    ) -> tuple[int, list[torch.Tensor] | None]:
        """The coarsest level that differs from ``target``'s cached frame (all finer ones
        are redone) and that frame's running tensors; the top level and ``None`` when there
        is no usable cache. float32 work (an encoded image's reconstruction) never starts
        from tensors a bf16 frame made; bf16 frames and drafts may start from float32 ones
        (a draft never stores its own, see :meth:`store`)."""
        num_levels = len(latents)
        cache = self.get(target) if self.enabled and target is not None else None
        if cache is None or cache.model_id != model_id:
            return num_levels - 1, None
        if cache.precision != precision and cache.precision != "float32":
            return num_levels - 1, None
        for j in range(num_levels - 1, -1, -1):
            if not np.array_equal(latents[j], cache.latents[j]):
                return j, cache.running
        return -1, cache.running

    def store(
        self,
        target: str | None,
        model_id: int,
        latents: Sequence[np.ndarray],
        first: int,
        cached: list[torch.Tensor] | None,
        running: Sequence[torch.Tensor | None],
        precision: str = "float32",
    ) -> None:
        """Keep the running tensors of a frame decoded from level ``first`` down (the
        coarser ones came from ``cached``)."""
        if not self.enabled or target is None or precision == "draft":
            return  # a draft's tensors never stand in for the exact frame's
        merged = [
            running[level] if level <= first else cached[level]  # type: ignore[index]
            for level in range(len(latents))
        ]
        self[target] = LevelCache(model_id, list(latents), merged, precision)  # type: ignore[arg-type]


class RenderScheduler:
    """The render thread's queue: newest request per target, answers, jobs, the exact
    frames that replace drafts, the idle-time work and what may cut a decode short."""

    def __init__(self) -> None:
        self.mailbox = threading.Condition()
        self.pending: dict[str, RenderRequest] = {}
        # Per target: the exact request to render once no newer one comes, and from when.
        self.exact_after: dict[str, tuple[RenderRequest, float]] = {}
        self.jobs: collections.deque[Job] = collections.deque()  # after frames, in order
        self.answers: collections.deque[Job] = collections.deque()  # before jobs
        self.held = 0
        self.stopping = False
        self.dropped = 0  # requests replaced before they started
        self.abort_target: str | None = None  # set while a grid chunk may be preempted
        # The thread whose measurement decode may be cut short now (the render thread),
        # else None: another thread decoding with the same hooked model is never cut.
        self.measure_preemptible: int | None = None
        # Idle-time work, a step at a time: CUDA graph capture, device race, plan.
        self.graph_job: Iterator[None] | None = None
        self.device_job: Iterator[None] | None = None
        self.measurement: PlanMeasurement | None = None
        self.caches = LevelCaches()

    # -- requests --------------------------------------------------------------------------

    def submit(self, request: RenderRequest) -> None:
        """Queue ``request``, replacing (dropping) any request for its target not yet
        started, and the exact frame its target waited for."""
        with self.mailbox:
            if request.target in self.pending:
                self.dropped += 1
            self.pending[request.target] = request
            self.exact_after.pop(request.target, None)  # the newer request replaces it
            self.mailbox.notify()

    def forget(self) -> None:
        """A new model: the waiting requests' latents fit the old one, and its idle-time
        work is over."""
        with self.mailbox:
            self.pending.clear()
            self.exact_after.clear()
            self.measurement = None
            self.graph_job = None
            self.device_job = None

    def stop(self) -> list[Job]:
        """Stop handing out work; returns the jobs that will never run."""
        with self.mailbox:
            self.stopping = True
            self.forget()
            jobs = [*self.answers, *self.jobs]
            self.jobs, self.answers = collections.deque(), collections.deque()
            self.mailbox.notify_all()
        return jobs

    def hold(self, by: int) -> None:
        """Hold frames (``by=1``) or release one hold (``by=-1``)."""
        with self.mailbox:
            self.held += by
            self.mailbox.notify()

    def hand_over(self, job: Job) -> None:
        """Queue a call for the render thread (``RuntimeError`` once stopped)."""
        with self.mailbox:
            if self.stopping:
                raise RuntimeError("the render engine has stopped")
            (self.answers if job.answer else self.jobs).append(job)
            self.mailbox.notify()

    @property
    def measuring(self) -> bool:
        """Whether idle-time work (graphs, device race, plan) is still to come."""
        return (
            self.measurement is not None
            or self.graph_job is not None
            or self.device_job is not None
        )

    def first_figure_due(self, decode_ms: Any) -> bool:
        """Whether the plan measurement's first decode should run before a waiting frame:
        the model has no figure yet (``decode_ms`` empty) and nothing else (graphs, device
        race) comes first."""
        return (
            self.measurement is not None
            and not decode_ms
            and self.graph_job is None
            and self.device_job is None
        )

    def next_work(self, block: bool, decode_ms: Any) -> RenderRequest | object | None:
        """The newest request (samples first), else an answer someone waits for, else the
        exact frame of a draft once it is due, else a job handed over by another thread
        (none while an exact frame is due soon: a batch would hold it back), else an
        idle-time step (:data:`MEASURE`), else wait. Until the model's first figure is
        measured (``decode_ms``, the plan's), frames and answers wait for that one decode.
        Holding holds frames, not answers: whoever holds may be waiting for one."""
        with self.mailbox:
            while block and not self.stopping:
                if self.answers or (not self.held and self.pending):
                    break
                if not self.held and self.exact_after:
                    due = min(d for _, d in self.exact_after.values())
                    wait = due - time.perf_counter()
                    if wait <= 0:
                        break
                    self.mailbox.wait(wait)  # a drag's next move, or the exact frame
                    continue
                if not self.held and (self.jobs or self.measuring):
                    break
                self.mailbox.wait()
            if self.stopping:
                return None
            frames = bool(self.pending) and not self.held
            if (frames or self.answers) and self.first_figure_due(decode_ms):
                return MEASURE
            if frames:
                return self.pop_newest()
            if self.answers:
                return self.answers.popleft()
            if self.held:
                return None
            if self.exact_after:
                return self.exact_frame(time.perf_counter())
            if self.jobs:
                return self.jobs.popleft()
            return MEASURE if self.measuring else None

    def next_request(self, block: bool) -> RenderRequest | None:
        with self.mailbox:
            while block and not self.stopping and (not self.pending or self.held):
                self.mailbox.wait()
            if self.stopping or self.held or not self.pending:
                return None
            return self.pop_newest()

    def next_answer(self) -> Job | None:
        with self.mailbox:
            if self.stopping or not self.answers:
                return None
            return self.answers.popleft()

    def pop_newest(self) -> RenderRequest:
        target = SAMPLES_TARGET if SAMPLES_TARGET in self.pending else next(iter(self.pending))
        return self.pending.pop(target)

    # -- exact after draft -----------------------------------------------------------------

    def exact_frame(self, now: float | None = None) -> ExactFrame | None:
        """The exact frame that replaces a draft, taken from the waiting ones: the one due
        soonest (any, with ``now=None``), if it is due by ``now``."""
        with self.mailbox:
            if not self.exact_after or self.held or self.stopping:
                return None
            target = min(self.exact_after, key=lambda t: self.exact_after[t][1])
            request, due = self.exact_after[target]
            if now is not None and due > now:
                return None
            del self.exact_after[target]
            return ExactFrame(request)

    def exact_later(self, request: RenderRequest) -> None:
        """After a draft of ``request``: its exact frame, unless a newer request for its
        target waits already or comes within :data:`EXACT_AFTER_MS`."""
        with self.mailbox:
            if request.target not in self.pending:
                due = time.perf_counter() + EXACT_AFTER_MS / 1000.0
                self.exact_after[request.target] = (request, due)
                self.mailbox.notify()

    # -- preemption ------------------------------------------------------------------------

    def check_preempted(self) -> None:
        """Raise :class:`Preempted` where the decode running on this thread should stop: a
        grid chunk whose target has a newer request, or a measurement decode while a frame
        or an answer waits. The models' preemption hooks call it between layers."""
        target = self.abort_target
        if target is not None and target in self.pending:
            raise Preempted
        if self.measure_preemptible == threading.get_ident() and (
            (self.pending and not self.held) or self.answers
        ):
            raise Preempted  # a measurement decode: the user's frame or answer goes first
