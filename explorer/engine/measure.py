"""The render plan's measurement, run by the engine a step at a time on the render thread
between frames: thread counts, then precision (the bf16 convolution probe, the picture
test, interleaved decodes; where bf16 frames fail that test, the draft test and interleaved
draft decodes). :class:`PlanMeasuring` is mixed into
:class:`~explorer.engine.render.RenderEngine` and uses its model set, scheduler and decode; the
plan itself and its decisions live in :mod:`explorer.engine.plan`.

**A measurement never makes the user wait.** Steps already run only between frames, but
one step is a whole decode (16 images, perhaps in bf16 or with a thread count that turns
out slow), which on a loaded 2-core machine took up to 3 s; a grid change that arrived
meanwhile waited for it, for the ~20 s the measurement lasts. So a measurement decode
(after the model's first figure, which the first frame needs) yields to a waiting frame:
the preemption hooks that cut a progressive grid short cut it short too, the frame
renders, and the decode starts again. Its figure is thus never a decode that shared the
machine with a frame, and the measurement pauses while the user interacts and goes on
when they stop. (Measuring on less work would make every figure less like a frame, and
smaller slices are what the hooks already give.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from core.files.images import to_uint8
from core.flow.model import RealNVP
from core.training.device import describe
from core.training.precision import conv_probe_ms, draft_error, same_picture
from explorer.engine.plan import PlanMeasurement, PrecisionMeasurement, RenderPlan
from explorer.engine.requests import Preempted

T = TypeVar("T")


class PlanMeasuring:
    """The plan-measurement half of :class:`~explorer.engine.render.RenderEngine`."""

    def _start_measurement(self) -> None:
        model_id = self.model_id
        precision = None
        if self.device.type == "cpu" and self._fixed_plan is None:
            precision = PrecisionMeasurement(
                probe=lambda: self._precision_probe(model_id),
                picture=lambda batch: self._same_picture(model_id, batch),
                decode=lambda batch, threads, p: self._timed_decode(
                    model_id, batch, threads, precision=p
                ),
                draft=lambda batch: self._draft_error(model_id, batch),
            )
        measurement = PlanMeasurement(
            self.plan,
            lambda batch, threads: self._timed_decode(model_id, batch, threads),
            # On a GPU the CPU threads do not render: only the frame times are measured.
            threads=(self.plan.threads,) if self.device.type != "cpu" else None,
            precision=precision,
        )
        with self.scheduler.mailbox:
            self.scheduler.measurement = measurement
            self.scheduler.mailbox.notify()

    def _yielding(self, model_id: int, work: Callable[[], T]) -> T:
        """``work()`` (a measurement's decodes), cut short by a frame that waits once the
        model has its first figure: the frame renders, then ``work`` runs again."""
        while True:
            preemptible = self.threaded and bool(self.plan.decode_ms)
            self.scheduler.measure_preemptible = threading.get_ident() if preemptible else None
            try:
                return work()
            except Preempted:
                if not preemptible or model_id != self.model_id:
                    raise  # the model changed: this measurement is over
            finally:
                self.scheduler.measure_preemptible = None
            self.measure_yields += 1
            self._serve_frames()

    def _serve_frames(self) -> None:
        """Render the waiting requests, then run the waiting answers (one-image encodes
        someone waits for), now, on the render thread (a measurement step yielded to them)."""
        thread = self._thread
        while thread is not None and (request := self.scheduler.next_request(False)) is not None:
            thread.render(request)
        while thread is not None and (answer := self.scheduler.next_answer()) is not None:
            answer.run()
            while (request := self.scheduler.next_request(False)) is not None:
                thread.render(request)

    def _timed_decode(
        self,
        model_id: int,
        batch: int,
        threads: int,
        model: RealNVP | None = None,
        precision: str = "float32",
    ) -> float:
        """Milliseconds of one full decode of ``batch`` random images with ``threads``
        (``model``: another copy than the rendering one, e.g. the CPU contender; else the
        rendering one in ``precision``); a waiting frame goes first (:meth:`_yielding`)."""
        return self._yielding(
            model_id, lambda: self._timed_decode_once(model_id, batch, threads, model, precision)
        )

    def _timed_decode_once(
        self,
        model_id: int,
        batch: int,
        threads: int,
        model: RealNVP | None,
        precision: str,
    ) -> float:
        with self.models.lock:
            if model is None:
                model = self.models.model_in(model_id, precision)
            elif model_id != self.model_id:
                raise Preempted  # the model changed: this measurement is over
            latents = self._plan_latents(model, batch)
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                start = time.perf_counter()
                with torch.inference_mode():
                    images, _ = self._decode(model, latents, None)
                    images.float().cpu()  # waits for a GPU as a frame does
                return (time.perf_counter() - start) * 1000.0
            finally:
                torch.set_num_threads(previous)

    @staticmethod
    def _plan_latents(model: RealNVP, batch: int) -> list[np.ndarray]:
        rng = np.random.default_rng(batch)
        return [rng.standard_normal((batch, *s), dtype=np.float32) for s in model.latent_shapes]

    def _precision_probe(self, model_id: int) -> dict[str, float]:
        """The bf16 / float32 convolution probe at the model's s/t width (a fraction of a
        second), with the render threads."""
        with self.models.lock:
            model = self.models.model_in(model_id, "float32")
            cfg = model.config
            previous = torch.get_num_threads()
            torch.set_num_threads(self.plan.threads)
            try:
                return conv_probe_ms(cfg.mid_channels, max(cfg.image_size // 2, 1), 16)
            finally:
                torch.set_num_threads(previous)

    def _same_picture(self, model_id: int, batch: int) -> tuple[bool, float]:
        """Whether a bf16 frame of ``batch`` random images is the float32 frame's picture
        (two decodes: a waiting frame goes first)."""
        return self._yielding(model_id, lambda: self._same_picture_once(model_id, batch))

    def _same_picture_once(self, model_id: int, batch: int) -> tuple[bool, float]:
        return same_picture(*self._frames_in(model_id, batch, "bf16"))

    def _draft_error(self, model_id: int, batch: int) -> dict[str, float]:
        """The draft test's figures (:func:`~core.training.precision.draft_error`) of a draft
        frame of ``batch`` random images against the exact one (two decodes: a waiting frame
        goes first)."""
        return self._yielding(
            model_id, lambda: draft_error(*self._frames_in(model_id, batch, "draft"))
        )

    def _frames_in(self, model_id: int, batch: int, precision: str) -> list[np.ndarray]:
        """The ``uint8`` frames of ``batch`` random images in float32 and in ``precision``."""
        with self.models.lock:
            models = [self.models.model_in(model_id, p) for p in ("float32", precision)]
            latents = self._plan_latents(models[0], batch)
            with torch.inference_mode():
                return [
                    to_uint8(self._decode(m, latents, None)[0].float().cpu().numpy())
                    for m in models
                ]

    def _measure_step(self) -> RenderPlan | None:
        """One step of the idle-time work: the CUDA graph build, then the device race, then
        the plan measurement; returns the plan when it changed (or a status did)."""
        scheduler = self.scheduler
        for name in ("graph_job", "device_job"):
            job = getattr(scheduler, name)
            if job is None:
                continue
            try:
                if name == "graph_job":
                    with self.models.lock:
                        next(job)
                else:
                    next(job)
                return None
            except StopIteration:
                pass
            except Exception as exc:  # idle-time work must never break rendering
                if name == "graph_job" and self.models.graphs is not None:
                    self.models.graphs.status = f"failed, eager: {type(exc).__name__}: {exc}"
                    self.models.graphs.release()
            with scheduler.mailbox:
                if getattr(scheduler, name) is job:
                    setattr(scheduler, name, None)
            return self.plan  # a status changed: refresh what shows it
        measurement = scheduler.measurement
        if measurement is None:
            return None
        try:
            plan = next(measurement)
        except (StopIteration, Preempted):
            plan = None
        except Exception:  # a measurement must never break rendering: keep the plan
            plan = None
        with scheduler.mailbox:
            if scheduler.measurement is not measurement:
                return None  # a new model replaced it meanwhile
            if plan is None:
                scheduler.measurement = None
                return None
        changed = plan != self.plan
        self.plan = plan
        if self.device.type == "cpu":  # the label shows the threads frames render with
            self.device_label = describe(self.device, plan.threads)
        return plan if changed else None

    def measure_plan_now(self) -> RenderPlan:
        """Measure the open model's plan on this thread now (synchronous engines, the
        benchmark); returns the plan."""
        if self.scheduler.measurement is None:
            self._start_measurement()
        while self.scheduler.measurement is not None:
            plan = self._measure_step()
            if plan is not None:
                self.plan_changed.emit(plan)
        return self.plan

    @property
    def measuring(self) -> bool:
        """Whether idle-time work (graphs, device race, plan) is still to come."""
        return self.scheduler.measuring
