"""The decode steps as plain functions, and their ``torch.compile``-d versions built in the
background (``realnvp-explorer --compile on``), with the per-block preemption hooks that
let a newer request stop a grid part-way."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import types
from collections.abc import Sequence
from typing import Any

import torch

from core.flow.model import RealNVP
from core.flow.resnet import ResidualBlock, STNetwork


def compile_supported() -> bool:
    """Whether this torch can run the engine's compiled steps (it needs the
    ``fail_on_recompile`` stance of ``torch.compiler.set_stance``, torch 2.6 or newer)."""
    return hasattr(torch.compiler, "set_stance")


class CompiledSteps:
    """``torch.compile``-d decode steps of one model for a few batch sizes, built and checked
    against the eager steps on a background thread at low priority.

    The render thread uses them only once all are built (:attr:`ready`), and then under the
    ``fail_on_recompile`` stance: an input the steps were not built for never compiles on the
    render thread, it raises, and the engine turns them off and renders eagerly. Any failure
    (no compiler, an unsupported op, a mismatch with the eager result) is silent: the steps
    stay unused and the engine renders as before.
    """

    def __init__(self, model: RealNVP, model_id: int, batches: Sequence[int]) -> None:
        self.model, self.model_id, self.batches = model, model_id, tuple(batches)
        self.steps: dict[tuple[int, int], Any] = {}  # (level or -1 for to_image, batch)
        self.ready = False
        self.error: str | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._build, name="explorer-compile", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.ready

    def _build(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a nice thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        # One thread: a thread team of its own would oversubscribe the render thread's
        # for the rest of the session (see explorer.engine.devices.set_thread_team).
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        start = time.perf_counter()
        model = self.model
        try:
            param = next(model.parameters())
            with torch.inference_mode():
                for batch in self.batches:
                    zs = model.sample_latents(batch, 1.0, torch.Generator().manual_seed(0))
                    zs = [z.to(param.device, param.dtype) for z in zs]
                    h = None
                    for level in range(model.num_levels - 1, -2, -1):
                        step = step_function(model, level)
                        args = (h,) if level < 0 else (zs[level],) if h is None else (zs[level], h)
                        # Eagerly first: that fills the couplings' mask caches, which the
                        # compiled code then finds (and guards on) as the render thread will.
                        want = step(*args)
                        fn = torch.compile(_own_code(step, f"{level}_{batch}"), dynamic=False)
                        out = fn(*args)
                        if not torch.allclose(out, want, rtol=1e-4, atol=1e-4):
                            raise RuntimeError(f"compiled level {level} differs from eager")
                        self.steps[(level, batch)] = fn
                        h = want.contiguous()
            self.ready = True
        except Exception as exc:  # compilation is an optimization: never an error to show
            self.steps.clear()
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.seconds = time.perf_counter() - start

    def run(self, level: int, *args: torch.Tensor) -> torch.Tensor | None:
        """The compiled step's output, or ``None`` when there is none for these inputs."""
        fn = self.steps.get((level, args[0].shape[0])) if self.ready else None
        if fn is None:
            return None
        with torch.compiler.set_stance("fail_on_recompile"):
            return fn(*(a.contiguous() for a in args))


def _own_code(fn: Any, tag: str) -> Any:
    """``fn`` with a code object of its own. Dynamo keeps compiled code per code object, so
    each (model, level, batch) step compiles once and never counts as a recompile of another
    (the render thread's ``fail_on_recompile`` stance is process-wide)."""
    code = fn.__code__.replace(co_name=f"decode_step_{tag}_{next(_CODE_IDS)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


_CODE_IDS = itertools.count()


def step_function(model: RealNVP, level: int) -> Any:
    """One decode step as a plain function: the top level, a lower level, or ``to_image``
    (level -1)."""
    if level < 0:
        return lambda h: model.to_image(h)
    if level == model.num_levels - 1:
        return lambda z: model.inverse_top(z)
    return lambda z, h: model.inverse_level(level, z, h)


def add_preemption_hooks(model: RealNVP, check: Any) -> None:
    """Call ``check`` before every s/t network block of ``model``, so a grid chunk can stop
    part-way (``check`` raises) when a newer request arrives: a block of the cifar10 preset
    takes about a millisecond per image, a whole chunk hundreds."""
    for module in model.modules():
        if isinstance(module, (ResidualBlock, STNetwork)):
            module.register_forward_pre_hook(lambda _module, _args: check())
