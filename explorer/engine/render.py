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

:class:`RenderEngine` is the render loop, frames and encoding; it composes two halves:
:mod:`~explorer.engine.scheduler` (what runs next: the mailbox, targets, exact-after-draft,
answers and jobs, preemption, idle-time work, the level cache) and
:mod:`~explorer.engine.model_set` (the model's copies: exact, bf16, draft, channels_last,
the CPU contender, CUDA graphs and compiled steps; decoding with them). Beside them:
:mod:`~explorer.engine.requests` (what crosses threads), :mod:`~explorer.engine.measure`
(the plan's measurement), :mod:`~explorer.engine.devices` (threads, the device race and the
out-of-memory fall-backs) and :mod:`~explorer.engine.compiled` (the decode steps, compiled
or hooked for preemption).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PySide6.QtCore import QObject, QThread, Signal, Slot

from core.files.checkpoint import load_checkpoint
from core.files.images import to_uint8
from core.flow.model import FlowConfig, RealNVP, preset, random_model
from core.stats.class_stats import META_KEY, ClassStats, ClassStatsError
from core.stats.typicality import TypicalityReference
from core.training.device import describe, pick_device
from explorer.engine.compiled import compile_supported
from explorer.engine.devices import (
    DeviceFallbacks,
    interactive_threads,
    set_thread_team,
    torch_threads,
)
from explorer.engine.encoding import ImageEncoding
from explorer.engine.measure import PlanMeasuring
from explorer.engine.model_set import ModelSet
from explorer.engine.plan import RenderPlan, default_plan
from explorer.engine.requests import SAMPLES_TARGET, Frame, Preempted, RenderRequest
from explorer.engine.scheduler import EXACT_AFTER_MS, MEASURE, ExactFrame, Job, RenderScheduler
from explorer.state.state import ModelInfo

__all__ = [
    "EXACT_AFTER_MS",
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


class _RenderThread(QThread):
    """Takes the newest request, renders it, reports back; between requests it runs the
    idle-time work a step at a time; sleeps when there is nothing to do."""

    rendered = Signal(object)
    failed = Signal(str)
    planned = Signal(object)

    def __init__(self, engine: RenderEngine) -> None:
        super().__init__()
        self._engine = engine

    def run(self) -> None:
        engine = self._engine
        engine._render_ident = threading.get_ident()
        while (work := engine.scheduler.next_work(True, engine.plan.decode_ms)) is not None:
            if work is MEASURE:
                plan = engine._measure_step()
                if plan is not None:
                    self.planned.emit(plan)
                continue
            if isinstance(work, ExactFrame):
                self.render(work.request, exact_after_draft=True)
                continue
            if isinstance(work, Job):
                work.run()
                continue
            self.render(work)  # type: ignore[arg-type]

    def render(self, request: RenderRequest, exact_after_draft: bool = False) -> None:
        """Render ``request`` here and report it (also from inside a measurement step that
        yielded to it)."""
        try:
            self._engine._render(request, self.rendered.emit, exact_after_draft)
        except Exception as exc:  # a bad frame must not kill the worker
            self.failed.emit(f"{type(exc).__name__}: {exc}")


class RenderEngine(PlanMeasuring, DeviceFallbacks, ImageEncoding, QObject):
    """Owns the model; renders :class:`RenderRequest` objects into :class:`Frame` objects.

    It composes a :class:`~explorer.engine.scheduler.RenderScheduler` (``scheduler``: what
    runs next, and the level cache) and a :class:`~explorer.engine.model_set.ModelSet`
    (``models``: the open model's copies, graphs and compiled steps); the plan's
    measurement, the device fall-backs and the synchronous encodes are its mixed-in halves
    (:mod:`~explorer.engine.measure`, :mod:`~explorer.engine.devices`,
    :mod:`~explorer.engine.encoding`)."""

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
        self.scheduler = RenderScheduler()
        self.models = ModelSet(
            self.scheduler.check_preempted,
            self._want_graph_job,
            compile=compile and compile_supported(),
            graphs=graphs,
        )
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
        self.device_choice = ""  # auto: what was chosen and the figures, for a tooltip
        self.threaded = threaded
        self._forced_threads = num_threads is not None
        self._fixed_plan = plan
        self.measure_plans = (threaded and plan is None) if measure_plan is None else measure_plan
        self.plan: RenderPlan = plan or default_plan(
            self._threads, self._forced_threads, self.device.type
        )
        self.preempted = 0  # progressive grids cut short by a newer request
        self.measure_yields = 0  # plan-measurement decodes cut short by a waiting frame
        self._shown: dict[str, np.ndarray] = {}  # the last pixels sent per target
        self.rendered = 0
        self.drafts_enabled = True  # off: drag frames are exact too (benchmarks compare)
        self.drafts_drawn = 0
        self._thread: _RenderThread | None = None
        if threaded:
            self._thread = _RenderThread(self)
            # The thread object lives on this (GUI) thread, so these queued connections
            # deliver frames here; listeners of frame_rendered never run on the worker.
            self._thread.rendered.connect(self._deliver)
            self._thread.failed.connect(self.render_failed)
            self._thread.planned.connect(self.plan_changed)
            self._thread.start()

    # -- what the halves hold ----------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo | None:
        return self.models.info

    @property
    def model_id(self) -> int:
        return self.models.model_id

    @property
    def compile(self) -> bool:
        return self.models.compile

    @property
    def use_graphs(self) -> bool:
        return self.models.use_graphs

    @property
    def compile_batches(self) -> tuple[int, ...]:
        return self.models.compile_batches

    @compile_batches.setter
    def compile_batches(self, batches: tuple[int, ...]) -> None:
        self.models.compile_batches = batches

    @property
    def cache_enabled(self) -> bool:
        return self.scheduler.caches.enabled

    @cache_enabled.setter
    def cache_enabled(self, enabled: bool) -> None:
        self.scheduler.caches.enabled = enabled

    @property
    def dropped(self) -> int:
        return self.scheduler.dropped

    @property
    def exact_frames_due(self) -> int:
        """How many drafts wait for their exact frame."""
        return len(self.scheduler.exact_after)

    @property
    def compile_status(self) -> str:
        """``off``, ``building``, ``ready (N s)`` or ``failed: ...``, for the status bar and
        the benchmark."""
        return self.models.compile_status

    def wait_for_compile(self, timeout: float | None = None) -> bool:
        """Block until the background compile of the current model ends; True if usable."""
        c = self.models.compiled
        return c.wait(timeout) if c is not None else False

    @property
    def render_status(self) -> str:
        """The frame-time tooltip: the render plan and the optional code paths."""
        lines = [self.plan.describe(), f"CUDA graphs: {self.graphs_status}"]
        lines.append(f"torch.compile: {self.compile_status}")
        if self.device_choice:
            lines.append(self.device_choice)
        return "\n".join(lines)

    def _want_graph_job(self, job: Iterator[None]) -> None:
        with self.scheduler.mailbox:
            self.scheduler.graph_job = job

    def _threads_here(self) -> None:
        """Give the calling thread its torch thread count: the plan's on the thread that
        renders (any caller of a synchronous engine), one on every other thread, so no
        second OpenMP team ever competes with the render thread's for the cores (the GUI
        thread loading a model, an importer encoding). See ``devices.set_thread_team``."""
        renders = self._thread is None or self._render_ident == threading.get_ident()
        set_thread_team(self.plan.threads if renders else 1)

    # -- the model -------------------------------------------------------------------------

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
        folded = self.models.folded(model)
        self.scheduler.forget()  # the waiting requests' latents fit the old model
        with self.models.lock:
            self.scheduler.caches.clear()
            self._shown.clear()
            self.device_choice = ""
            threads = self.plan.threads if self._forced_threads else self._threads
            self.plan = self._fixed_plan or default_plan(
                threads, self._forced_threads, self.device.type
            )
            graph_job = self.models.install(
                model,
                folded,
                self.device,
                self.device_label,
                reference,
                contender=self.auto_device,
                **info,
            )
            info_now = self.models.info
        with self.scheduler.mailbox:
            self.scheduler.graph_job = graph_job
            if self.models.cpu is not None:
                self.scheduler.device_job = self._device_race(info_now.model_id)
            self.scheduler.mailbox.notify()
        if self.measure_plans:
            self._start_measurement()
        return info_now  # type: ignore[return-value]

    # -- requests ----------------------------------------------------------------------------

    def submit(self, request: RenderRequest) -> None:
        """Queue ``request``, replacing (dropping) any request for the same target not yet
        started."""
        self.scheduler.submit(request)
        if not self.threaded and not self.scheduler.held:
            self.process_pending()

    def process_pending(self) -> Frame | None:
        """Synchronous mode: render the newest waiting request of every target now, on this
        thread (the samples first); returns the last frame rendered."""
        self._threads_here()
        frame = None
        scheduler = self.scheduler
        while (work := scheduler.next_request(block=False) or scheduler.exact_frame()) is not None:
            exact = isinstance(work, ExactFrame)
            request = work.request if exact else work
            parts: list[Frame] = []
            try:
                self._render(request, parts.append, exact)  # type: ignore[arg-type]
            except Exception as exc:
                self.render_failed.emit(f"{type(exc).__name__}: {exc}")
            for part in parts:  # delivered outside the model lock: listeners may decode
                frame = part
                self._deliver(part)
        return frame

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Collect requests without rendering; on exit only the newest of each target is
        rendered."""
        self.scheduler.hold(1)
        try:
            yield
        finally:
            self.scheduler.hold(-1)
            if not self.threaded and not self.scheduler.held:
                self.process_pending()

    def shutdown(self) -> None:
        """Stop the worker thread (waits for a render in progress)."""
        for job in self.scheduler.stop():
            job.future.set_exception(RuntimeError("the render engine has stopped"))
        if self._thread is not None:
            self._thread.wait()
            self._thread = None

    @Slot(object)
    def _deliver(self, frame: Frame) -> None:
        self.rendered += 1
        self.frame_rendered.emit(frame)

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
        job = Job(call, answer=answer)
        self.scheduler.hand_over(job)
        return job.future.result()

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
                with self.models.lock:
                    message = self._fall_back_from_oom(request.latents[0].shape[0])
                if message is None:
                    raise
                self.render_notice.emit(message)

    def _frame_model(self, request: RenderRequest, n: int) -> tuple[RealNVP, str]:
        """The model a frame of ``n`` images for ``request`` renders with, and its
        precision: a draft during a drag where the plan allows, else the plan's precision.
        Under the model lock."""
        models = self.models
        if request.draft and self.drafts_enabled and self.plan.draft_for(n):
            return models.model_in(self.model_id, "draft"), "draft"  # made on first use
        if self.plan.precision_for(n) == "bf16" and models.bf16 is not None:
            return models.bf16, "bf16"
        return models.exact, "float32"  # type: ignore[return-value]

    def _render_once(
        self, request: RenderRequest, emit: Any, exact_after_draft: bool = False
    ) -> None:
        if exact_after_draft:
            request = dataclasses.replace(request, draft=False)
        scheduler = self.scheduler
        with self.models.lock:
            if self.models.exact is None or request.model_id != self.model_id:
                return  # made for a model that has since been replaced
            if torch.get_num_threads() != self.plan.threads:
                torch.set_num_threads(self.plan.threads)  # this thread's own setting
            start = time.perf_counter()
            latents = request.latents
            self.models.check_latents(self.models.exact, latents)
            n = latents[0].shape[0]
            model, precision = self._frame_model(request, n)
            first, cached = scheduler.caches.start(
                latents, request.target, self.model_id, precision
            )
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
                    scheduler.abort_target = request.target
                try:
                    running, images = self.models.decode_rows(model, latents, None, first, cached)
                except Preempted:
                    self.preempted += 1
                    return
                finally:
                    scheduler.abort_target = None
                pixels = to_uint8(images.float().cpu().numpy())
            scheduler.caches.store(
                request.target, self.model_id, latents, first, cached, running, precision
            )
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
        self.scheduler.exact_later(request)

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
                self.scheduler.abort_target = target  # the selected image is never preempted
            try:
                running, images = self.models.decode_rows(model, latents, rows, first, cached)
                pixels[rows] = to_uint8(images.float().cpu().numpy())
            except Preempted:
                self.preempted += 1
                self._shown[target] = pixels
                return False
            finally:
                self.scheduler.abort_target = None
            parts.append((rows, running))  # type: ignore[arg-type]
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
        self.scheduler.caches.store(
            target, self.model_id, latents, first, cached, running, precision
        )
        return True

    def _decode(
        self, model: RealNVP, latents: Sequence[np.ndarray], target: str | None
    ) -> tuple[torch.Tensor, int]:
        """Images for ``latents``, reusing the cached coarse levels of ``target`` (``None``:
        no cache); returns (images, levels decoded)."""
        self.models.check_latents(model, latents)
        caches = self.scheduler.caches
        first, cached = caches.start(latents, target, self.model_id)
        running, images = self.models.decode_rows(model, latents, None, first, cached)
        caches.store(target, self.model_id, latents, first, cached, running)
        return images, first + 1
