"""The render engine: the one explorer module that touches torch.

It owns the model and turns immutable :class:`RenderRequest` objects (numpy latents, one
array per level) into numpy ``uint8`` images, handed back by the ``frame_rendered`` signal.

- **Newest request wins.** A request waits in a one-slot mailbox; a newer one replaces it,
  so a slider dragged faster than frames can be drawn skips the stale positions instead of
  queueing them (napari's slicer does the same). A render already running is not aborted:
  during a drag that keeps frames coming.
- **Level cache.** Decoding runs coarse to fine, and the running tensor after handling
  levels ``>= j`` depends only on the latents of those levels. The engine keeps those
  tensors from the last frame; when only fine levels changed it restarts from the cached
  tensor of the coarsest unchanged level. The arithmetic is the same as a full decode, so
  the pixels are the same.
- **Draft frames.** A request made during a drag (``RenderRequest.draft``) is drawn by a
  copy with bf16 s/t networks (:func:`core.flow.inference.draft_copy`) where the render plan
  measured that copy faster and its frames within the draft test
  (:func:`core.training.precision.draft_passes`). When no newer request for the view follows
  within :data:`EXACT_AFTER_MS`, the exact float32 frame of the same latents replaces it
  (cut short by a newer request); a draft reads the float32 level cache but never writes it.
- **Targets.** Each request names its target view (``"samples"``, ``"strip"``, ...); newest
  wins per target, so the interpolation strip never drops a frame of the samples view, and
  each target keeps its own level cache. The samples view is served first.
- **Threads.** By default the work runs on a worker ``QThread``; ``threaded=False`` renders
  on the caller's thread when :meth:`RenderEngine.submit` is called (tests, screenshots).
  Either way ``frame_rendered`` is emitted on the engine's own (GUI) thread.
- **Inference copy.** Rendering and encoding use ``fold_for_inference(model)`` (weight and
  batch normalization folded into plain convolutions) under ``torch.inference_mode``; the
  original model is kept for bits/dim and the likelihood map, so the figure is exactly what
  ``realnvp encode`` prints (the map's total, ``RealNVP.bits_per_dim`` to float32 rounding).
- **Encoding** (:meth:`RenderEngine.encode`) and batch decoding (:meth:`RenderEngine.decode`)
  are synchronous and thread-safe: the image importer and the exporters call them from
  their own worker threads, and the model lock keeps them from racing a render. A
  one-image encode (a Draw answer, a dropped file) and a likelihood description are a
  person waiting, as a frame is: they run on the render thread as *answers*, which go
  before batch jobs and cut a plan-measurement decode short as a waiting frame does (in the
  first 15 s after launch, a Draw answer had waited 0.4-3.0 s for the measurement).

The engine never touches a widget; widgets never touch torch.

Beside this module (the render loop, its mailbox, the level cache, decoding and encoding):
:mod:`~explorer.engine.requests` (what crosses threads), :mod:`~explorer.engine.measure`
(the plan's measurement), :mod:`~explorer.engine.devices` (threads, the device race and the
out-of-memory fall-backs) and :mod:`~explorer.engine.compiled` (the decode steps, compiled
or hooked for preemption).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PySide6.QtCore import QObject, QThread, Signal, Slot

from core.files.checkpoint import load_checkpoint
from core.files.images import to_uint8
from core.flow.graphs import GraphedDecoder
from core.flow.inference import copy_model, fold_for_inference
from core.flow.model import FlowConfig, RealNVP, pixel_centres, preset, random_model
from core.stats.class_stats import META_KEY, ClassStats, ClassStatsError
from core.stats.typicality import TypicalityReference
from core.training.device import describe, pick_device
from explorer.engine.compiled import (
    CompiledSteps,
    add_preemption_hooks,
    compile_supported,
    step_function,
)
from explorer.engine.devices import (
    DeviceFallbacks,
    batch_threads,
    interactive_threads,
    set_thread_team,
    torch_threads,
)
from explorer.engine.likelihood import describe_pixel_batch, describe_pixels
from explorer.engine.measure import PlanMeasuring
from explorer.engine.plan import PlanMeasurement, RenderPlan, default_plan
from explorer.engine.requests import SAMPLES_TARGET, Frame, Preempted, RenderRequest
from explorer.state.gallery import EncodedImage
from explorer.state.likelihood import LikelihoodView
from explorer.state.state import ModelInfo

__all__ = [
    "RANDOM_MODEL_CONFIG",
    "SAMPLES_TARGET",
    "Frame",
    "RenderEngine",
    "RenderRequest",
    "compile_supported",
    "interactive_threads",
    "torch_threads",
]

# The architecture of the bundled model, used untrained when the bundled file is missing,
# so the app still shows the real level structure.
RANDOM_MODEL_CONFIG = preset("mnist-small")
# Batch sizes that get CUDA graphs: a single image, the default grid, and a few more that
# frames use (other grid sizes, progressive chunks); beyond that, eager.
MAX_GRAPH_BATCHES = 6
# After a draft frame, the exact frame starts once no newer request has come for this long:
# a drag's moves come every 10-20 ms, so an exact frame rarely starts (and is cut short)
# between two of them, and the draft's time, this and the exact frame (about 35 ms for the
# bundled model's 16 images on 2 cores) stay within the 150 ms after the last move.
EXACT_AFTER_MS = 30.0


def _class_stats_of(meta: dict[str, Any], model: RealNVP) -> tuple[ClassStats | None, str]:
    """A checkpoint's class statistics, or ``None`` and the reason, for the user."""
    if META_KEY not in meta:
        return None, (
            "This checkpoint has no class statistics: it was not trained on labelled data "
            "(MNIST, CIFAR-10, or a folder with a subfolder per class), or was saved before "
            "they existed. A model trained on labelled data on the Train page has them."
        )
    try:
        stats = ClassStats.from_meta(meta[META_KEY])
    except ClassStatsError as exc:
        return None, f"The checkpoint's class statistics cannot be used: {exc}"
    if stats.shapes != tuple(tuple(int(v) for v in s) for s in model.latent_shapes):
        return None, "The checkpoint's class statistics are for other latent shapes."
    return stats, ""


@dataclass
class _LevelCache:
    model_id: int
    latents: list[np.ndarray]  # the latents of the cached frame, finest first
    running: list[torch.Tensor]  # running[j]: tensor after handling levels >= j
    precision: str = "float32"  # of the model that made it; float32 work never uses bf16's


class _RenderThread(QThread):
    """Takes the newest request, renders it, reports back; between requests it runs the
    plan measurement a step at a time; sleeps when there is nothing to do."""

    rendered = Signal(object)
    failed = Signal(str)
    planned = Signal(object)

    def __init__(self, engine: RenderEngine) -> None:
        super().__init__()
        self._engine = engine

    def run(self) -> None:
        self._engine._render_ident = threading.get_ident()
        while (work := self._engine._next_work(block=True)) is not None:
            if work is _MEASURE:
                plan = self._engine._measure_step()
                if plan is not None:
                    self.planned.emit(plan)
                continue
            if isinstance(work, _ExactFrame):
                self.render(work.request, exact_after_draft=True)
                continue
            if isinstance(work, _Job):
                work.run()
                continue
            self.render(work)

    def render(self, request: RenderRequest, exact_after_draft: bool = False) -> None:
        """Render ``request`` here and report it (also from inside a measurement step that
        yielded to it)."""
        try:
            self._engine._render(request, self.rendered.emit, exact_after_draft)
        except Exception as exc:  # a bad frame must not kill the worker
            self.failed.emit(f"{type(exc).__name__}: {exc}")


_MEASURE = object()  # the render thread's work item for one plan-measurement step


@dataclass(frozen=True)
class _ExactFrame:
    """The render thread's work item for the exact frame that replaces a draft."""

    request: RenderRequest


@dataclass(eq=False)
class _Job:
    """A call another thread hands to the render thread (:meth:`RenderEngine._on_render_thread`);
    its result or exception reaches the caller waiting on ``future``."""

    call: Any
    future: Future = field(default_factory=Future)
    answer: bool = False  # someone waits for it now: goes first, preempts a measurement

    def run(self) -> None:
        try:
            self.future.set_result(self.call())
        except BaseException as exc:  # handed to the caller, never raised on the render thread
            self.future.set_exception(exc)


class RenderEngine(PlanMeasuring, DeviceFallbacks, QObject):
    """Owns the model; renders :class:`RenderRequest` objects into :class:`Frame` objects."""

    frame_rendered = Signal(object)  # Frame
    render_failed = Signal(str)
    plan_changed = Signal(object)  # RenderPlan, when a measurement step changes it
    render_notice = Signal(str)  # a fallback the user should hear of (status bar)

    def __init__(
        self,
        device: str = "auto",
        threaded: bool = True,
        num_threads: int | None = None,
        parent: QObject | None = None,
        compile: bool = False,
        plan: RenderPlan | None = None,
        measure_plan: bool | None = None,
        graphs: bool = True,
    ) -> None:
        """``compile``: build ``torch.compile``-d decode steps in the background for each
        model. Off by default: once built they made slider frames about a quarter faster on
        a 2-core CPU (bundled model, 1 thread: 1 image 10.5 -> 7.8 ms p50, 16 images 29.4 ->
        21.9 ms), but the build holds the interpreter lock for long stretches, and while it
        ran (about 100 s the first time, about 12 s once torch's on-disk cache has the code)
        16-image frames reached 620 ms at p95. Worth it for a long session, not for a look
        at a checkpoint (``realnvp-explorer --compile on``).

        ``num_threads``: CPU threads to render with; ``None`` lets the render plan decide by
        measurement per model (:mod:`explorer.engine.plan`). ``plan``: use this plan for
        every model instead (tests, benchmarks). ``measure_plan``: measure each model's plan
        on the render thread between frames (default: in threaded mode without ``plan``);
        synchronous engines measure when :meth:`measure_plan_now` is called.

        ``graphs``: on a CUDA device, capture the decode steps and encode as CUDA graphs
        for each model (:mod:`core.flow.graphs`) on the render thread between frames, and replay
        them once checked; any failure leaves rendering eager. ``device="auto"`` on a
        machine with a GPU also times the GPU against the CPU for each model (between
        frames) and renders on the faster one (:attr:`device_choice`)."""
        super().__init__(parent)
        # None picks the interactive default (see interactive_threads): oversubscription
        # costs far more than it gains for the small batches of a live view.
        self._threads = (
            max(1, int(num_threads)) if num_threads is not None else interactive_threads()
        )
        # The thread that renders, once it runs (synchronous mode: whoever calls); every
        # other thread does its torch work single-threaded (devices.set_thread_team says why).
        self._render_ident: int | None = None
        if threaded:  # this (GUI) thread, and threads not yet started, compute on one
            set_thread_team(1)
        self.device = pick_device(device)
        self.device_label = describe(self.device, self._threads)
        self.auto_device = device == "auto" and self.device.type == "cuda"
        self.use_graphs = graphs
        self._graphs: GraphedDecoder | None = None
        self._graph_job: Iterator[None] | None = None
        self._device_job: Iterator[None] | None = None
        self._cpu_model: RealNVP | None = None  # auto on a GPU: the CPU contender
        self.device_choice = ""  # auto: what was chosen and the figures, for a tooltip
        self._max_batch: int | None = None  # after running out of memory: smaller pieces
        self._graphs_note = ""  # why graphs are off, when they were turned off
        self.threaded = threaded
        self._forced_threads = num_threads is not None
        self._fixed_plan = plan
        self.measure_plans = (threaded and plan is None) if measure_plan is None else measure_plan
        self.plan: RenderPlan = plan or default_plan(
            self._threads, self._forced_threads, self.device.type
        )
        self._measurement: PlanMeasurement | None = None
        self.preempted = 0  # progressive grids cut short by a newer request
        self.measure_yields = 0  # plan-measurement decodes cut short by a waiting frame
        # The thread whose measurement decode may be cut short now (the render thread),
        # else None: another thread decoding with the same hooked model is never cut.
        self._measure_preemptible: int | None = None
        self._shown: dict[str, np.ndarray] = {}  # the last pixels sent per target
        self._abort_target: str | None = None  # set while a grid chunk may be preempted
        self.compile = compile and compile_supported()
        self.compile_batches: tuple[int, ...] = (1, 16)  # a single image, the default grid
        self._compiled: CompiledSteps | None = None
        self.cache_enabled = True
        self.dropped = 0
        self.rendered = 0
        self._model: RealNVP | None = None  # the inference copy: renders and encodes
        # Its copy with bf16 s/t networks, made by the precision measurement where bf16
        # convolutions are faster; frames use it where the plan says bf16.
        self._bf16_model: RealNVP | None = None
        # Its draft copy (a decode's first couplings float32), made on first use; a drag's
        # frames use it where the plan allows drafts.
        self._draft_model: RealNVP | None = None
        self.drafts_enabled = True  # off: drag frames are exact too (benchmarks compare)
        self.drafts_drawn = 0
        # Per target: the exact request to render once no newer one comes, and from when.
        self._exact_after: dict[str, tuple[RenderRequest, float]] = {}
        self._likelihood_model: RealNVP | None = None  # the original: bits/dim
        # channels_last copies of both for batched encodes (model id, inference, original)
        self._batch_copies: tuple[int, RealNVP, RealNVP] | None = None
        self._reference: TypicalityReference | None = None  # the checkpoint's test statistics
        self._info: ModelInfo | None = None
        self._model_ids = iter(range(1, 2**62))
        self._caches: dict[str, _LevelCache] = {}
        self._model_lock = threading.Lock()  # held while rendering or swapping the model
        self._mailbox = threading.Condition()
        self._pending: dict[str, RenderRequest] = {}
        self._jobs: collections.deque[_Job] = collections.deque()  # after frames, in order
        self._answers: collections.deque[_Job] = collections.deque()  # before _jobs
        self._held = 0
        self._stopping = False
        self._thread: _RenderThread | None = None
        if threaded:
            self._thread = _RenderThread(self)
            # The thread object lives on this (GUI) thread, so these queued connections
            # deliver frames here; listeners of frame_rendered never run on the worker.
            self._thread.rendered.connect(self._deliver)
            self._thread.failed.connect(self.render_failed)
            self._thread.planned.connect(self.plan_changed)
            self._thread.start()

    # -- the model -------------------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo | None:
        return self._info

    @property
    def model_id(self) -> int:
        return self._info.model_id if self._info else 0

    def _threads_here(self) -> None:
        """Give the calling thread its torch thread count: the plan's on the thread that
        renders (any caller of a synchronous engine), one on every other thread, so no
        second OpenMP team ever competes with the render thread's for the cores (the GUI
        thread loading a model, an importer encoding). See ``devices.set_thread_team``."""
        renders = self._thread is None or self._render_ident == threading.get_ident()
        set_thread_team(self.plan.threads if renders else 1)

    def open_checkpoint(self, path: str | os.PathLike) -> ModelInfo:
        """Load a checkpoint and make it current. Raises ``CheckpointError`` (a
        ``ValueError`` with a message for the user); the current model then stays."""
        self._threads_here()
        model, meta = load_checkpoint(path, map_location=self.device)
        test_bpd = meta.get("test_bpd")
        step = meta.get("step")
        stats, note = _class_stats_of(meta, model)
        return self._install(
            model,
            reference=TypicalityReference.from_meta(meta),
            source=str(Path(path)),
            untrained=False,
            dataset=str(meta["dataset"]) if meta.get("dataset") else None,
            test_bpd=float(test_bpd) if isinstance(test_bpd, (int, float)) else None,
            step=int(step) if isinstance(step, int) else None,
            class_stats=stats,
            class_note=note,
            data_dir=str(meta["data_dir"]) if meta.get("data_dir") else None,
        )

    def open_random(self, config: FlowConfig = RANDOM_MODEL_CONFIG, seed: int = 0) -> ModelInfo:
        """An untrained model with slightly perturbed weights, so it is not the identity
        (every coupling starts as one) and its samples show some structure."""
        self._threads_here()
        model = random_model(config, seed).to(self.device)
        return self._install(
            model,
            source=None,
            untrained=True,
            dataset=None,
            test_bpd=None,
            step=None,
            class_note="An untrained model has no classes.",
        )

    def _install(
        self, model: RealNVP, reference: TypicalityReference | None = None, **info: Any
    ) -> ModelInfo:
        folded = fold_for_inference(model)
        if not self.compile:
            # Compiled steps would guard on the hooks' state; they stay unhooked and are
            # preempted between levels only.
            add_preemption_hooks(folded, self._check_preempted)
        with self._mailbox:
            self._pending.clear()  # their latents fit the old model
            self._exact_after.clear()
            self._measurement = None
            self._graph_job = None
            self._device_job = None
        with self._model_lock:
            if self._graphs is not None:
                self._graphs.release()  # the old model's graphs and their memory
                self._graphs = None
            self._model = folded
            self._bf16_model = None
            self._draft_model = None
            self._likelihood_model = model.eval()
            self._batch_copies = None
            self._reference = reference
            self._caches.clear()
            self._shown.clear()
            self._max_batch = None
            self._cpu_model = None
            self._graphs_note = ""
            self.device_choice = ""
            threads = self.plan.threads if self._forced_threads else self._threads
            self.plan = self._fixed_plan or default_plan(
                threads, self._forced_threads, self.device.type
            )
            self._info = ModelInfo(
                model_id=next(self._model_ids),
                image_size=model.config.image_size,
                channels=model.config.in_channels,
                num_parameters=sum(p.numel() for p in model.parameters()),
                latent_shapes=tuple(tuple(int(v) for v in s) for s in model.latent_shapes),
                device=self.device_label,
                config=model.config.to_dict(),
                **info,
            )
            self._compiled = None
            if self.compile:
                # Built on its own thread while frames render eagerly.
                self._compiled = CompiledSteps(folded, self._info.model_id, self.compile_batches)
            info_now = self._info
            if self.device.type == "cuda" and self.use_graphs:
                self._graphs = GraphedDecoder(folded, batches=(1, 16))
                graph_job = self._graphs.build_steps()
            else:
                graph_job = None
            if self.auto_device:
                cpu = fold_for_inference(model).to("cpu")  # a copy: the model stays put
                if not self.compile:
                    add_preemption_hooks(cpu, self._check_preempted)
                self._cpu_model = cpu
        with self._mailbox:
            self._graph_job = graph_job
            if self._cpu_model is not None:
                self._device_job = self._device_race(info_now.model_id)
            self._mailbox.notify()
        if self.measure_plans:
            self._start_measurement()
        return info_now

    def _check_preempted(self) -> None:
        target = self._abort_target
        if target is not None and target in self._pending:
            raise Preempted
        if self._measure_preemptible == threading.get_ident() and (
            (self._pending and not self._held) or self._answers
        ):
            raise Preempted  # a measurement decode: the user's frame or answer goes first

    @property
    def render_status(self) -> str:
        """The frame-time tooltip: the render plan and the optional code paths."""
        lines = [self.plan.describe(), f"CUDA graphs: {self.graphs_status}"]
        lines.append(f"torch.compile: {self.compile_status}")
        if self.device_choice:
            lines.append(self.device_choice)
        return "\n".join(lines)

    # -- requests ----------------------------------------------------------------------------

    def submit(self, request: RenderRequest) -> None:
        """Queue ``request``, replacing (dropping) any request for the same target not yet
        started."""
        with self._mailbox:
            if request.target in self._pending:
                self.dropped += 1
            self._pending[request.target] = request
            self._exact_after.pop(request.target, None)  # the newer request replaces it
            self._mailbox.notify()
        if not self.threaded and not self._held:
            self.process_pending()

    def process_pending(self) -> Frame | None:
        """Synchronous mode: render the newest waiting request of every target now, on this
        thread (the samples first); returns the last frame rendered."""
        self._threads_here()
        frame = None
        while (work := self._next_request(block=False) or self._exact_frame()) is not None:
            exact = isinstance(work, _ExactFrame)
            request = work.request if exact else work
            parts: list[Frame] = []
            try:
                self._render(request, parts.append, exact)
            except Exception as exc:
                self.render_failed.emit(f"{type(exc).__name__}: {exc}")
            for part in parts:  # delivered outside the model lock: listeners may decode
                frame = part
                self._deliver(part)
        return frame

    def _exact_frame(self, now: float | None = None) -> _ExactFrame | None:
        """The exact frame that replaces a draft, taken from the waiting ones: the one due
        soonest (any, with ``now=None``), if it is due by ``now``."""
        with self._mailbox:
            if not self._exact_after or self._held or self._stopping:
                return None
            target = min(self._exact_after, key=lambda t: self._exact_after[t][1])
            request, due = self._exact_after[target]
            if now is not None and due > now:
                return None
            del self._exact_after[target]
            return _ExactFrame(request)

    @property
    def exact_frames_due(self) -> int:
        """How many drafts wait for their exact frame."""
        return len(self._exact_after)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Collect requests without rendering; on exit only the newest of each target is
        rendered."""
        with self._mailbox:
            self._held += 1
        try:
            yield
        finally:
            with self._mailbox:
                self._held -= 1
                self._mailbox.notify()
            if not self.threaded and not self._held:
                self.process_pending()

    def shutdown(self) -> None:
        """Stop the worker thread (waits for a render in progress)."""
        with self._mailbox:
            self._stopping = True
            self._pending.clear()
            self._exact_after.clear()
            self._measurement = None
            self._graph_job = None  # a capture in progress ends with its current step
            self._device_job = None
            jobs = [*self._answers, *self._jobs]
            self._jobs, self._answers = collections.deque(), collections.deque()
            self._mailbox.notify_all()
        for job in jobs:
            job.future.set_exception(RuntimeError("the render engine has stopped"))
        if self._thread is not None:
            self._thread.wait()
            self._thread = None

    @Slot(object)
    def _deliver(self, frame: Frame) -> None:
        self.rendered += 1
        self.frame_rendered.emit(frame)

    def _next_work(self, block: bool) -> RenderRequest | object | None:
        """The newest request (samples first), else an answer someone waits for, else the
        exact frame of a draft once it is due, else a job handed over by another thread
        (none while an exact frame is due soon: a batch would hold it back), else a
        plan-measurement step, else wait. Until the model's first figure is measured,
        frames and answers wait for that one decode. Holding the engine holds frames, not
        answers: whoever holds it may be waiting for one."""
        with self._mailbox:
            while block and not self._stopping:
                if self._answers or (not self._held and self._pending):
                    break
                if not self._held and self._exact_after:
                    due = min(d for _, d in self._exact_after.values())
                    wait = due - time.perf_counter()
                    if wait <= 0:
                        break
                    self._mailbox.wait(wait)  # a drag's next move, or the exact frame
                    continue
                if not self._held and (self._jobs or self.measuring):
                    break
                self._mailbox.wait()
            if self._stopping:
                return None
            frames = bool(self._pending) and not self._held
            if (frames or self._answers) and self._first_figure_due():
                return _MEASURE
            if frames:
                return self._pop_newest()
            if self._answers:
                return self._answers.popleft()
            if self._held:
                return None
            if self._exact_after:
                return self._exact_frame(time.perf_counter())
            if self._jobs:
                return self._jobs.popleft()
            return _MEASURE if self.measuring else None

    def _on_render_thread(self, call: Any, answer: bool = False) -> Any:
        """``call()`` on the thread that renders, and its result (or exception) here.
        ``answer``: someone waits for it now (see the module's *Encoding*).

        For batched work that computes with more than one thread: torch's OpenMP team
        belongs to the OS thread that computes, and a second team on another thread
        oversubscribes the cores (``devices.set_thread_team``). Measured on a 2-core Xeon
        with the bundled model, a 32-image batched encode cost 10.6 ms an image on a second
        thread's team against 6.2 ms on the one team. Frames waiting go first; a call waits
        for the frame in progress. A synchronous engine, or the render thread itself, calls
        at once."""
        if self._thread is None or self._render_ident == threading.get_ident():
            return call()
        job = _Job(call, answer=answer)
        with self._mailbox:
            if self._stopping:
                raise RuntimeError("the render engine has stopped")
            (self._answers if answer else self._jobs).append(job)
            self._mailbox.notify()
        return job.future.result()

    def _first_figure_due(self) -> bool:
        """Whether the plan measurement's first decode should run before a waiting frame:
        the model has no figure yet and nothing else (graphs, device race) comes first."""
        return (
            self._measurement is not None
            and not self.plan.decode_ms
            and self._graph_job is None
            and self._device_job is None
        )

    def _next_request(self, block: bool) -> RenderRequest | None:
        with self._mailbox:
            while block and not self._stopping and (not self._pending or self._held):
                self._mailbox.wait()
            if self._stopping or self._held or not self._pending:
                return None
            return self._pop_newest()

    def _next_answer(self) -> _Job | None:
        with self._mailbox:
            if self._stopping or not self._answers:
                return None
            return self._answers.popleft()

    def _pop_newest(self) -> RenderRequest:
        target = SAMPLES_TARGET if SAMPLES_TARGET in self._pending else next(iter(self._pending))
        return self._pending.pop(target)

    # -- rendering ------------------------------------------------------------------------------

    def _render(self, request: RenderRequest, emit: Any, exact_after_draft: bool = False) -> None:
        """Render ``request``, handing each finished frame (or part of one) to ``emit``;
        ``exact_after_draft``: the exact frame that replaces a draft of ``request``, cut
        short by a newer request for its target. Out of GPU memory, it falls back step by
        step (no CUDA graphs, then smaller batches, then the CPU), says so by
        ``render_notice``, and tries again."""
        while True:
            try:
                self._render_once(request, emit, exact_after_draft)
                return
            except torch.OutOfMemoryError:
                with self._model_lock:
                    message = self._fall_back_from_oom(request.latents[0].shape[0])
                if message is None:
                    raise
                self.render_notice.emit(message)

    def _frame_model(self, request: RenderRequest, n: int) -> tuple[RealNVP, str]:
        """The model a frame of ``n`` images for ``request`` renders with, and its
        precision: a draft during a drag where the plan allows, else the plan's precision.
        Under the model lock."""
        if request.draft and self.drafts_enabled and self.plan.draft_for(n):
            return self._model_in(self.model_id, "draft"), "draft"  # made on first use
        if self.plan.precision_for(n) == "bf16" and self._bf16_model is not None:
            return self._bf16_model, "bf16"
        return self._model, "float32"  # type: ignore[return-value]

    def _render_once(
        self, request: RenderRequest, emit: Any, exact_after_draft: bool = False
    ) -> None:
        if exact_after_draft:
            request = dataclasses.replace(request, draft=False)
        with self._model_lock:
            if self._model is None or request.model_id != self.model_id:
                return  # made for a model that has since been replaced
            if torch.get_num_threads() != self.plan.threads:
                torch.set_num_threads(self.plan.threads)  # this thread's own setting
            start = time.perf_counter()
            latents = request.latents
            self._check_latents(self._model, latents)
            n = latents[0].shape[0]
            model, precision = self._frame_model(request, n)
            first, cached = self._cache_start(latents, request.target, precision)
            fraction = (first + 1) / model.num_levels
            with torch.inference_mode():
                if self.plan.progressive(n, fraction) and request.target == SAMPLES_TARGET:
                    done = self._render_progressive(
                        model, request, first, cached, start, emit, precision
                    )
                    if done and precision == "draft":
                        self._exact_later(request)
                    return
                if exact_after_draft:  # a newer request makes it pointless
                    self._abort_target = request.target
                try:
                    running, images = self._decode_rows(model, latents, None, first, cached)
                except Preempted:
                    self.preempted += 1
                    return
                finally:
                    self._abort_target = None
                pixels = to_uint8(images.float().cpu().numpy())
            self._store_cache(request.target, latents, first, cached, running, precision)
            self._shown[request.target] = pixels
            elapsed = (time.perf_counter() - start) * 1000.0
        emit(
            Frame(
                request.request_id,
                request.model_id,
                pixels,
                elapsed,
                first + 1,
                self.dropped,
                request.target,
                precision=precision,
            )
        )
        if precision == "draft":
            self._exact_later(request)

    def _exact_later(self, request: RenderRequest) -> None:
        """After a draft of ``request``: its exact frame, unless a newer request for its
        target waits already or comes within :data:`EXACT_AFTER_MS`."""
        self.drafts_drawn += 1
        with self._mailbox:
            if request.target not in self._pending:
                due = time.perf_counter() + EXACT_AFTER_MS / 1000.0
                self._exact_after[request.target] = (request, due)
                self._mailbox.notify()

    def _render_progressive(
        self,
        model: RealNVP,
        request: RenderRequest,
        first: int,
        cached: list[torch.Tensor] | None,
        start: float,
        emit: Any,
        precision: str = "float32",
    ) -> bool:
        """The selected image first, then the rest of the grid in chunks, each shown as it
        completes. A newer request for the target preempts the chunks (between s/t network
        blocks); the level cache is updated only once the whole grid is done, so it always
        holds one consistent frame. Returns whether the whole grid was drawn."""
        latents, target = request.latents, request.target
        n = latents[0].shape[0]
        focus = min(max(request.focus, 0), n - 1)
        shown = self._shown.get(target)
        c, h, w = model.config.in_channels, model.config.image_size, model.config.image_size
        pixels = np.zeros((n, c, h, w), np.uint8)
        if shown is not None and shown.shape[1:] == pixels.shape[1:]:
            keep = min(n, len(shown))
            pixels[:keep] = shown[:keep]  # older pixels, shown dimmed until replaced
        rest = [i for i in range(n) if i != focus]
        size = self.plan.chunk_size(len(rest))
        size = math.ceil(len(rest) / math.ceil(len(rest) / size)) if rest else 1  # even chunks
        groups = [[focus]] + [rest[i : i + size] for i in range(0, len(rest), size)]
        parts: list[tuple[list[int], list[torch.Tensor]]] = []
        pending = set(range(n))
        first_ms = None
        for k, rows in enumerate(groups):
            if k == 1:
                self._abort_target = target  # the selected image is never preempted
            try:
                running, images = self._decode_rows(model, latents, rows, first, cached)
                pixels[rows] = to_uint8(images.float().cpu().numpy())
            except Preempted:
                self.preempted += 1
                self._shown[target] = pixels
                return False
            finally:
                self._abort_target = None
            parts.append((rows, running))
            pending.difference_update(rows)
            elapsed = (time.perf_counter() - start) * 1000.0
            first_ms = elapsed if first_ms is None else first_ms
            self._shown[target] = pixels
            emit(
                Frame(
                    request.request_id,
                    request.model_id,
                    pixels.copy(),
                    elapsed,
                    first + 1,
                    self.dropped,
                    target,
                    complete=not pending,
                    stale=tuple(sorted(pending)),
                    first_ms=first_ms,
                    precision=precision,
                )
            )
        # The whole grid's running tensors, in image order, for the level cache.
        order = torch.tensor([i for rows, _ in parts for i in rows])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n)
        running = [
            torch.cat([r[level] for _, r in parts])[inverse] if level <= first else None
            for level in range(model.num_levels)
        ]
        self._store_cache(target, latents, first, cached, running, precision)
        return True

    @staticmethod
    def _check_latents(model: RealNVP, latents: Sequence[np.ndarray]) -> None:
        num_levels = model.num_levels
        if len(latents) != num_levels:
            raise ValueError(f"expected {num_levels} latent levels, got {len(latents)}")
        for i, (z, shape) in enumerate(zip(latents, model.latent_shapes)):
            if z.ndim != 4 or z.shape[1:] != tuple(shape) or z.shape[0] != latents[0].shape[0]:
                raise ValueError(f"latent level {i} has shape {z.shape}, expected (N, {shape})")

    def _cache_start(
        self, latents: Sequence[np.ndarray], target: str | None, precision: str = "float32"
    ) -> tuple[int, list[torch.Tensor] | None]:
        """The coarsest level that differs from ``target``'s cached frame (all finer ones
        are redone) and that frame's running tensors; the top level and ``None`` when there
        is no usable cache. float32 work (an encoded image's reconstruction) never starts
        from tensors a bf16 frame made; bf16 frames and drafts may start from float32 ones
        (a draft never stores its own, see :meth:`_store_cache`)."""
        num_levels = len(latents)
        cache = self._caches.get(target) if self.cache_enabled and target is not None else None
        if cache is None or cache.model_id != self.model_id:
            return num_levels - 1, None
        if cache.precision != precision and cache.precision != "float32":
            return num_levels - 1, None
        for j in range(num_levels - 1, -1, -1):
            if not np.array_equal(latents[j], cache.latents[j]):
                return j, cache.running
        return -1, cache.running

    def _store_cache(
        self,
        target: str | None,
        latents: Sequence[np.ndarray],
        first: int,
        cached: list[torch.Tensor] | None,
        running: list[torch.Tensor | None],
        precision: str = "float32",
    ) -> None:
        if not self.cache_enabled or target is None or precision == "draft":
            return  # a draft's tensors never stand in for the exact frame's
        merged = [
            running[level] if level <= first else cached[level]  # type: ignore[index]
            for level in range(len(latents))
        ]
        self._caches[target] = _LevelCache(self.model_id, list(latents), merged, precision)  # type: ignore[arg-type]

    def _decode_rows(
        self,
        model: RealNVP,
        latents: Sequence[np.ndarray],
        rows: list[int] | None,
        first: int,
        cached: list[torch.Tensor] | None,
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        """Decode images ``rows`` (``None``: all) from level ``first`` down, starting from
        the ``cached`` running tensors of the coarser levels; returns the new running
        tensors (``None`` above ``first``) and the images. Same steps as ``RealNVP.decode``."""
        num_levels = model.num_levels
        count = latents[0].shape[0] if rows is None else len(rows)
        limit = self._max_batch
        if limit is not None and count > limit:  # after running out of memory: in pieces
            every = list(range(count)) if rows is None else rows
            parts = [
                self._decode_rows(model, latents, every[i : i + limit], first, cached)
                for i in range(0, count, limit)
            ]
            running_parts = [
                torch.cat([p[0][level] for p in parts]) if level <= first else None
                for level in range(num_levels)
            ]
            return running_parts, torch.cat([p[1] for p in parts])
        param = next(model.parameters())
        index = None if rows is None else torch.tensor(rows, device=param.device)
        running: list[torch.Tensor | None] = [None] * num_levels
        above = None
        if first < num_levels - 1:
            above = cached[first + 1]  # type: ignore[index]
            above = above if index is None else above[index]
        for level in range(first, -1, -1):
            self._check_preempted()
            z = latents[level] if rows is None else latents[level][rows]
            z = torch.tensor(z, device=param.device, dtype=param.dtype)
            if level == num_levels - 1:
                above = self._step(model, level, z)
            else:
                above = self._step(model, level, z, above)
            running[level] = above
        self._check_preempted()
        return running, self._step(model, -1, above)

    def _decode(
        self, model: RealNVP, latents: Sequence[np.ndarray], target: str | None
    ) -> tuple[torch.Tensor, int]:
        """Images for ``latents``, reusing the cached coarse levels of ``target`` (``None``:
        no cache); returns (images, levels decoded)."""
        self._check_latents(model, latents)
        first, cached = self._cache_start(latents, target)
        running, images = self._decode_rows(model, latents, None, first, cached)
        self._store_cache(target, latents, first, cached, running)
        return images, first + 1

    def _step(self, model: RealNVP, level: int, *args: torch.Tensor) -> torch.Tensor:
        """One decode step (level -1: ``to_image``): replayed from a CUDA graph when one is
        built for this model and batch size (a new batch size asks for one), compiled when
        that code is ready, eager otherwise (and from then on, if compiling fails)."""
        graphs = self._graphs
        if graphs is not None and graphs.built and graphs.model is model:
            out = graphs.step(level, *args)
            if out is not None:
                return out
            if len(graphs.batches) < MAX_GRAPH_BATCHES and graphs.want(args[0].shape[0]):
                with self._mailbox:
                    self._graph_job = graphs.build_steps()
        compiled = self._compiled
        if compiled is not None and compiled.model is model:
            try:
                out = compiled.run(level, *args)
            except Exception:  # e.g. an input the code was not built for: no compiling here
                self._compiled = None
                out = None
            if out is not None:
                return out
        return step_function(model, level)(*args)

    @property
    def compile_status(self) -> str:
        """``off``, ``building``, ``ready (N s)`` or ``failed: ...``, for the status bar and
        the benchmark."""
        c = self._compiled
        if not self.compile:
            return "off"
        if c is None:
            return "off (an input it was not built for)"
        if c.error:
            return f"failed: {c.error}"
        return f"ready ({c.seconds:.0f} s)" if c.ready else "building"

    def wait_for_compile(self, timeout: float | None = None) -> bool:
        """Block until the background compile of the current model ends; True if usable."""
        c = self._compiled
        return c.wait(timeout) if c is not None else False

    # -- encoding and batch decoding (synchronous, any thread) ------------------------------

    def encode(self, pixels: np.ndarray) -> EncodedImage:
        """Encode one ``uint8 (C, H, W)`` image of the model's channels and size.

        The latents are those of the pixel centres ``(k + 0.5) / 256``, so they are a pure
        function of the pixels; the reconstruction error is ``|decode(encode(x)) - x|`` in
        ``[0, 1]`` units. bits/dim is the likelihood map's total on the original model with
        the dequantization noise of :data:`core.flow.model.ENCODE_SEED`, one image alone: the
        figure ``realnvp encode`` prints, computed by the same function, and within float32
        rounding (about 1e-5) of ``RealNVP.bits_per_dim`` with that seed. A separate
        ``bits_per_dim`` pass cost a quarter of the encode (10 of 40 ms for the bundled model
        on one thread) and a Draw answer its frame budget. Raises ``ValueError`` for the
        wrong shape or no model.

        It runs on the render thread as an answer (a waiting frame's peer: it cuts a
        plan-measurement decode short, and goes before batch jobs).
        """
        pixels = np.asarray(pixels)
        return self._on_render_thread(lambda: self._encode_here(pixels), answer=True)

    def _encode_here(self, pixels: np.ndarray) -> EncodedImage:
        self._threads_here()
        with self._model_lock:
            model, original, info = self._model, self._likelihood_model, self._info
            if model is None or original is None or info is None:
                raise ValueError("no model is open")
            expected = (info.channels, info.image_size, info.image_size)
            if pixels.dtype != np.uint8 or pixels.shape != expected:
                raise ValueError(
                    f"expected uint8 pixels of shape {expected}, got {pixels.dtype} {pixels.shape}"
                )
            param = next(model.parameters())
            with torch.inference_mode():
                x8 = torch.from_numpy(np.ascontiguousarray(pixels))[None].to(param.device)
                x = pixel_centres(x8).to(param.dtype)  # (1, C, H, W)
                graphs = self._graphs
                replayed = graphs.encode(x) if graphs is not None and graphs.built else None
                encoded = model.encode(x) if replayed is None else replayed
                latents = [z.float().cpu().numpy() for z in encoded]
                # Decoded through the samples view's level cache: the image usually becomes
                # the view next, and its frame is then a full cache hit.
                recon, _ = self._decode(model, latents, SAMPLES_TARGET)
                error = (recon - x).abs()[0]  # (C, H, W)
                likelihood = describe_pixels(original, pixels, self._reference)
                result = EncodedImage(
                    model_id=info.model_id,
                    latents=tuple(z[0].copy() for z in latents),
                    reconstruction=to_uint8(recon[0].float().cpu().numpy()),
                    error=error.float().cpu().numpy(),
                    bits_per_dim=float(likelihood.bits_per_dim),
                    likelihood=likelihood,
                )
        return result

    def _checked(self, pixels: np.ndarray, model_id: int | None) -> ModelInfo:
        """The open model's info, once ``pixels`` are ``uint8 (N, C, H, W)`` images for it
        (``ValueError`` otherwise, or when ``model_id`` is no longer open). Model lock held."""
        info = self._info
        if self._model is None or self._likelihood_model is None or info is None:
            raise ValueError("no model is open")
        if model_id is not None and model_id != info.model_id:
            raise ValueError("the model has changed")
        expected = (info.channels, info.image_size, info.image_size)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(f"expected uint8 images of shape (N, {expected}), got {pixels.shape}")
        return info

    def encode_images(self, pixels: np.ndarray, model_id: int | None = None) -> list[EncodedImage]:
        """:meth:`encode` for many images at once, ``uint8 (N, C, H, W)``: latents,
        reconstructions and likelihood maps each in one batched pass (a folder import: at
        batch 64 an image costs about a fifth of its one-image passes on the bundled model).

        Same figures as :meth:`encode` to float rounding, whatever images share the batch:
        the latents and reconstructions are those of each image's pixel centres, and
        ``bits_per_dim`` is the likelihood map's total with the encode seed's noise, which
        is what ``realnvp encode`` prints. No level cache.

        It runs on the render thread (:meth:`_on_render_thread`: one OpenMP team in the
        process), after the frames waiting, with every core (``--threads`` if given), and
        on the CPU with channels_last copies of the models: oneDNN's convolutions run a
        64-image batch of the bundled model in about 0.7x the time there (measured on a
        2-core Xeon, 4.8 against 6.6 ms an image for the three passes). ``ValueError`` for
        the wrong shape, no model, or a model changed since ``model_id``."""
        pixels = np.asarray(pixels)
        return self._on_render_thread(lambda: self._encode_images_here(pixels, model_id))

    def _encode_images_here(self, pixels: np.ndarray, model_id: int | None) -> list[EncodedImage]:
        with self._model_lock:
            info = self._checked(pixels, model_id)
            model, original = self._batch_models(info.model_id)
            set_thread_team(self.plan.threads if self._forced_threads else batch_threads())
            try:
                param = next(model.parameters())
                with torch.inference_mode():
                    x8 = torch.from_numpy(np.ascontiguousarray(pixels)).to(param.device)
                    x = pixel_centres(x8).to(param.dtype)  # (N, C, H, W)
                    latents = [z.float().cpu().numpy() for z in model.encode(x)]
                    recon, _ = self._decode(model, latents, None)
                    errors = (recon - x).abs().float().cpu().numpy()
                    recon8 = to_uint8(recon.float().cpu().numpy())
                    views = describe_pixel_batch(original, pixels, self._reference)
            finally:
                self._threads_here()
            return [
                EncodedImage(
                    model_id=info.model_id,
                    latents=tuple(z[i].copy() for z in latents),
                    reconstruction=recon8[i],
                    error=errors[i],
                    bits_per_dim=float(view.bits_per_dim),
                    likelihood=view,
                )
                for i, view in enumerate(views)
            ]

    def _batch_models(self, model_id: int) -> tuple[RealNVP, RealNVP]:
        """The inference and original models for batched work: on the CPU, channels_last
        copies made at the first batch of each model (frames keep the NCHW models, whose
        one-image arithmetic the level cache and its tests rely on). Model lock held."""
        model, original = self._model, self._likelihood_model
        if next(model.parameters()).device.type != "cpu":
            return model, original
        copies = self._batch_copies
        if copies is None or copies[0] != model_id:
            copies = (
                model_id,
                copy_model(model).to(memory_format=torch.channels_last),
                copy_model(original).to(memory_format=torch.channels_last),
            )
            self._batch_copies = copies
        return copies[1], copies[2]

    def describe_likelihood(self, pixels: np.ndarray) -> LikelihoodView:
        """Likelihood map, per-level bits and typicality verdict of a uint8 ``(C, H, W)``
        image of the open model's shape (a sample, a dropped image). Call it off the GUI
        thread: it costs about one encode, on the render thread as an answer (as
        :meth:`encode`). ``ValueError`` without a model or for a wrong shape."""
        pixels = np.asarray(pixels)
        return self._on_render_thread(lambda: self._describe_here(pixels), answer=True)

    def _describe_here(self, pixels: np.ndarray) -> LikelihoodView:
        self._threads_here()
        with self._model_lock:
            original, info = self._likelihood_model, self._info
            if original is None or info is None:
                raise ValueError("no model is open")
            expected = (info.channels, info.image_size, info.image_size)
            if pixels.dtype != np.uint8 or pixels.shape != expected:
                raise ValueError(
                    f"expected uint8 pixels of shape {expected}, got {pixels.dtype} {pixels.shape}"
                )
            return describe_pixels(original, pixels, self._reference)

    def likelihood_model_copy(self, model_id: int | None = None) -> RealNVP:
        """A copy of the open model's original (unfolded, eval mode) for work that needs
        gradients and runs for seconds (completions): it runs on the copy without holding
        the model lock, so frames and encodes go on meanwhile. ``model_id``: refuse
        (``ValueError``) when the open model has changed."""
        with self._model_lock:
            original = self._likelihood_model
            if original is None or (model_id is not None and model_id != self.model_id):
                raise ValueError("the model has changed" if original else "no model is open")
            return copy_model(original).eval()

    def decode(self, latents: Sequence[np.ndarray], model_id: int | None = None) -> np.ndarray:
        """``uint8 (N, C, H, W)`` images for ``latents`` (finest first, each ``(N, C, H, W)``),
        without the level cache. ``model_id``: refuse (``ValueError``) when the open model
        has changed since the latents were made."""
        self._threads_here()
        with self._model_lock:
            model = self._model
            if model is None or (model_id is not None and model_id != self.model_id):
                raise ValueError("the model has changed")
            latents = [np.ascontiguousarray(z, dtype=np.float32) for z in latents]
            with torch.inference_mode():
                images, _ = self._decode(model, latents, None)
                return to_uint8(images.float().cpu().numpy())

    # -- batch encoding for the latent map (synchronous, any thread) --------------------------

    def encode_batch(self, pixels: np.ndarray, model_id: int | None = None) -> list[np.ndarray]:
        """Latents (finest first, each ``float32 (N, C, H, W)``) of ``uint8 (N, C, H, W)``
        images' pixel centres, as :meth:`encode` gives them but without bits/dim or the
        level cache. Callers pass small chunks: the model lock is held meanwhile, and frames
        wait. ``model_id``: refuse (``ValueError``) when the open model has changed."""
        self._threads_here()
        pixels = np.asarray(pixels)
        with self._model_lock:
            self._checked(pixels, model_id)
            model = self._model
            param = next(model.parameters())
            with torch.inference_mode():
                x8 = torch.from_numpy(np.ascontiguousarray(pixels)).to(param.device)
                return [
                    z.float().cpu().numpy() for z in model.encode(pixel_centres(x8).to(param.dtype))
                ]
