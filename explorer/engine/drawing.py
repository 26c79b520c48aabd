"""The draw tab's work (torch here): live answers for the canvas, and completions.

- :class:`AnswerWorker` answers each edit of the canvas on its own worker thread, newest
  request winning as slider frames do: while one answer is computed, only the latest edit
  waits; the ones it replaced are dropped. An answer is :meth:`RenderEngine.encode` (latents,
  reconstruction, bits/dim, the likelihood map and typicality verdict, under the engine's
  model lock, so it never races a frame) plus the nearest class per level where the model
  has class statistics.
- :func:`completion_job` is a generator job for the window's task runner (progress,
  cancel): :func:`core.flow.completion.completion_steps` on a copy of the model, so frames
  and answers go on while it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from core.flow.completion import DEFAULT_STEPS, Completion, completion_steps, image_chains
from explorer.engine.render import RenderEngine
from explorer.state.classes import nearest_classes
from explorer.state.drawing import DrawingAnswer
from explorer.state.jobs import Progress


def answer(engine: RenderEngine, edit: int, pixels: np.ndarray) -> DrawingAnswer:
    """The answer for ``uint8 (C, H, W)`` pixels, computed on the calling thread."""
    start = time.perf_counter()
    encoded = engine.encode(pixels)
    info = engine.model_info
    stats = info.class_stats if info is not None else None
    nearest = (
        tuple(nearest_classes(encoded.latents, stats.names, stats.means))
        if stats is not None
        else ()
    )
    return DrawingAnswer(
        edit=edit,
        model_id=encoded.model_id,
        pixels=np.array(pixels),
        encoded=encoded,
        nearest=nearest,
        elapsed_ms=(time.perf_counter() - start) * 1000.0,
        thread_id=threading.get_ident(),
    )


class AnswerWorker:
    """One worker thread; :meth:`submit` replaces the request waiting (if any), and
    ``deliver(result)`` is called on the worker with a :class:`DrawingAnswer` or an error
    text (``(edit, message)``). ``threaded=False`` answers at once on the caller's thread
    (tests with a synchronous engine)."""

    def __init__(
        self,
        engine: RenderEngine,
        deliver: Callable[[object], None],
        threaded: bool = True,
    ) -> None:
        self.engine = engine
        self.deliver = deliver
        self.threaded = threaded
        self.dropped = 0
        self._pending: tuple[int, np.ndarray] | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="draw-answers", daemon=True)
            self._thread.start()

    def submit(self, edit: int, pixels: np.ndarray) -> None:
        pixels = np.array(pixels, dtype=np.uint8, copy=True)
        if not self.threaded:
            self.deliver(self._answer(edit, pixels))
            return
        with self._cond:
            if self._pending is not None:
                self.dropped += 1
            self._pending = (edit, pixels)
            self._cond.notify()

    def _answer(self, edit: int, pixels: np.ndarray) -> object:
        try:
            return answer(self.engine, edit, pixels)
        except ValueError as exc:  # no model, or it changed under the request
            return (edit, str(exc))
        except Exception as exc:  # shown in the panel, never a traceback on a thread
            return (edit, f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                edit, pixels = self._pending
                self._pending = None
            self.deliver(self._answer(edit, pixels))

    def shutdown(self) -> None:
        """Stop the worker (waits for an answer in progress)."""
        with self._cond:
            self._stopping = True
            self._pending = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def completion_job(
    engine: RenderEngine,
    pixels: np.ndarray,
    mask: np.ndarray,
    samples: int,
    temperature: float,
    seed: int,
    steps: int = DEFAULT_STEPS,
) -> Callable[[], Iterator[object]]:
    """A task-runner job: ``samples`` completions of ``uint8 (C, H, W)`` pixels where
    ``mask`` (``bool (H, W)``) is set. Yields :class:`Progress`, then one
    :class:`Completion`. The checks (mask, image) run when the job starts and end it with
    the :class:`~core.flow.completion.CompletionError` sentence."""
    model_id = engine.model_id

    def job() -> Iterator[object]:
        yield Progress(0, 0, "Copying the model…")
        model = engine.likelihood_model_copy(model_id)
        chain_pixels, masks = image_chains(model, pixels, mask, samples)
        sampler = completion_steps(
            model, chain_pixels, masks, temperature=temperature, seed=seed, steps=steps
        )
        try:
            for item in sampler:
                if isinstance(item, Completion):
                    yield item
                    return
                yield Progress(item, steps, f"Langevin step {item} of {steps}")
        finally:
            sampler.close()  # cancelled between steps: the sampler's finally runs here

    return job
