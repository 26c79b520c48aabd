"""Where frames render: the CPU thread count, ``--device auto``'s race of the GPU against
the CPU, and the fall-backs after running out of GPU memory (no CUDA graphs, smaller
batches, then the CPU). :class:`DeviceFallbacks` is mixed into
:class:`~explorer.engine.render.RenderEngine` and uses its model set, scheduler and plan."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from core.training.device import describe
from core.training.threads import pick_threads
from explorer.engine.plan import PLAN_BATCHES, default_plan


def interactive_threads() -> int:
    """Threads for rendering small batches live: every core but one, at least one.

    The GUI thread paints while the worker renders. When torch's thread team takes every
    core it competes with the GUI thread: on a 2-core machine a one-image frame measured
    28 ms at p95 with 2 threads and 14 ms with 1 (``python -m explorer_bench.gui``).
    """
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))


def batch_threads() -> int:
    """Threads for a big batch off the render thread (a folder import): every core less
    those other processes keep busy (:func:`core.training.threads.pick_threads`, the
    command line's default). Its frames are not live, and the GUI thread has little to do
    meanwhile. Not simply every core: beside a busy process a 2-thread team of the bundled
    model measured 1,424 ms a one-image decode against 23 ms on one thread."""
    return pick_threads()


def torch_threads() -> int:
    """The CPU threads torch uses on the calling thread, for reports and benchmarks."""
    return torch.get_num_threads()


def set_thread_team(threads: int) -> None:
    """Give the calling thread a torch (OpenMP) team of ``threads``.

    The setting is per OS thread: torch's CPU kernels run in an OpenMP parallel region
    whose size is the calling thread's own ``omp_get_max_threads``, and each thread that
    ever runs a region with more than one thread keeps a team of its own. Two teams on two
    cores oversubscribe them for good: libgomp then counts more managed threads than CPUs
    and cuts its spin-wait short, so the render thread's team sleeps and wakes at every one
    of a decode's hundreds of small kernels. Measured with the folded ``cifar10`` preset at
    2 threads on a 2-core EPYC: a render-thread decode of one image took about 100 ms after
    the GUI thread had loaded and folded the model with 2 threads, about 66 ms when it had
    done so with 1 (the same as on the main thread itself). So the engine gives every
    thread but the one that renders a single thread (:meth:`RenderEngine._threads_here`).
    """
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class DeviceFallbacks:
    """The device half of :class:`~explorer.engine.render.RenderEngine`."""

    def _device_race(self, model_id: int) -> Iterator[None]:
        """``--device auto`` with a GPU: time the GPU (replaying graphs once built) against
        the CPU, decode by decode in turn, and render on the faster for this model."""
        gpu, cpu = self.models.exact, self.models.cpu
        if gpu is None or cpu is None:
            return
        threads = self.plan.threads
        figures: dict[str, dict[int, float]] = {"cuda": {}, "cpu": {}}
        for batch in PLAN_BATCHES:
            times: dict[str, list[float]] = {"cuda": [], "cpu": []}
            for i in range(4):
                for name, contender in (("cuda", gpu), ("cpu", cpu)):
                    ms = self._timed_decode(model_id, batch, threads, contender)
                    if i:
                        times[name].append(ms)
                    yield
            for name in figures:
                figures[name][batch] = float(np.median(times[name]))
        cost = {name: sum(f.values()) for name, f in figures.items()}
        winner = "cpu" if cost["cpu"] < cost["cuda"] else "cuda"

        def shown(name: str) -> str:
            return ", ".join(
                f"{b} image{'s' * (b > 1)} {ms:.1f} ms" for b, ms in figures[name].items()
            )

        self.device_choice = (
            f"--device auto chose {winner}: cuda {shown('cuda')}; cpu {shown('cpu')}"
        )
        if winner == "cpu":
            with self.models.lock:
                if model_id == self.model_id:
                    self._switch_to_cpu()
            if self.measure_plans:
                self._start_measurement()

    def _switch_to_cpu(self) -> None:
        """Render on the CPU from now on (model lock held): the auto device race chose it,
        or the GPU ran out of memory."""
        self.device = torch.device("cpu")
        self.device_label = describe(self.device)
        self.models.move_to_cpu(self.device_label)
        self.scheduler.graph_job = None
        self.scheduler.caches.clear()
        self.plan = self._fixed_plan or default_plan(self.plan.threads, self._forced_threads, "cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _fall_back_from_oom(self, batch: int) -> str | None:
        """The next step down after running out of memory (model lock held); ``None`` when
        there is none left."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.scheduler.caches.clear()  # its tensors hold memory; the next frame rebuilds it
        models = self.models
        if models.graphs is not None:
            models.release_graphs()
            self.scheduler.graph_job = None
            models.graphs_note = "off: the GPU ran out of memory"
            return "Out of GPU memory: rendering without CUDA graphs"
        current = min(models.max_batch or batch, batch)
        if current > 1:
            models.max_batch = max(1, current // 2)
            return f"Out of GPU memory: rendering {models.max_batch} images at a time"
        if self.device.type != "cpu":
            self._switch_to_cpu()
            return "Out of GPU memory: rendering on the CPU from now on"
        return None

    @property
    def graphs_status(self) -> str:
        """CUDA graphs: ``off: ...``, ``building``, ``on: N graphs ...`` or ``failed, eager:
        ...``, for the frame-time tooltip."""
        return self.models.graphs_status
