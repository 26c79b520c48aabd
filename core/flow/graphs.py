"""CUDA graphs of a model's decode steps and of encode, for rendering on a GPU.

An eager decode of the bundled model is hundreds of small kernel launches; on a GPU the
launches, not the arithmetic, set the time. A CUDA graph records one step's kernels once
over static input buffers and replays them with one launch. :class:`GraphedDecoder` records
the steps the explorer's level cache calls (``inverse_top``, each ``inverse_level``,
``to_image``: a frame may start at any level) for each batch size in use, and ``encode``,
in float32, checks every graph once against the eager step, and replays them.

Building is a sequence of small steps (:meth:`GraphedDecoder.build_steps`, one capture
each), so a render thread can interleave it with frames. Nothing here raises to its
caller for a capture problem: :meth:`GraphedDecoder.build` returns a status line, a failed
capture leaves that step eager, and a CUDA out-of-memory error during capture drops that
batch size and every larger one (the smaller ones keep their graphs).

>>> from core.flow.model import FlowConfig, RealNVP
>>> model = RealNVP(FlowConfig(in_channels=1, image_size=8, num_scales=2,
...                            mid_channels=4, num_blocks=1)).eval()
>>> decoder = GraphedDecoder(model)
>>> decoder.build()  # on the CPU there is nothing to capture
'off: the model is not on a CUDA device'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from core.flow.model import RealNVP

# A replayed graph must give the eager step's result to float32 rounding.
AGREEMENT_TOLERANCE = 1e-4


def graphs_supported(model: RealNVP) -> str | None:
    """``None`` when ``model``'s decode can be captured, else why not."""
    param = next(model.parameters())
    if param.device.type != "cuda" or not torch.cuda.is_available():
        return "the model is not on a CUDA device"
    if param.dtype != torch.float32:
        return f"graphs are built for float32, the model is {param.dtype}"
    return None


class _Graph:
    """One function captured over static inputs; calling it copies the inputs in, replays,
    and returns copies of the outputs (the static outputs are overwritten next replay, and
    a caller such as the level cache keeps its results)."""

    def __init__(
        self, fn: Callable[..., Any], example: Sequence[Tensor], pool: Any, warmup: int = 2
    ) -> None:
        self.inputs = [a.detach().clone() for a in example]
        side = torch.cuda.Stream(device=self.inputs[0].device)
        side.wait_stream(torch.cuda.current_stream(self.inputs[0].device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture needs
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream(self.inputs[0].device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a frame rendered on another thread meanwhile is not an error.
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.output = fn(*self.inputs)

    def __call__(self, *args: Tensor) -> Any:
        for static, a in zip(self.inputs, args):
            static.copy_(a)
        self.graph.replay()
        if isinstance(self.output, Tensor):
            return self.output.clone()
        return [t.clone() for t in self.output]


def _step_function(model: RealNVP, level: int) -> Callable[..., Tensor]:
    """One decode step as a plain function: ``to_image`` (level -1), the top level, or a
    lower level."""
    if level < 0:
        return model.to_image
    if level == model.num_levels - 1:
        return model.inverse_top
    return lambda z, h: model.inverse_level(level, z, h)


class GraphedDecoder:
    """CUDA graphs of ``model``'s decode steps for ``batches`` and of its encode for
    ``encode_batches``; ``model`` is used in eval mode and not changed."""

    def __init__(
        self,
        model: RealNVP,
        batches: Sequence[int] = (1, 16),
        encode_batches: Sequence[int] = (1,),
    ) -> None:
        self.model = model
        self.batches = sorted(set(batches))
        self.encode_batches = sorted(set(encode_batches))
        self._graphs: dict[tuple[str, int, int], _Graph] = {}  # (kind, level, batch)
        self._pool: Any = None
        self._too_big: int | None = None  # the smallest batch that ran out of memory
        self.failed: list[str] = []  # steps left eager, with why
        self.status = "not built"
        self.seconds = 0.0
        self.built = False

    @property
    def ready(self) -> bool:
        return self.built and bool(self._graphs)

    @property
    def graph_count(self) -> int:
        return len(self._graphs)

    def want(self, batch: int) -> bool:
        """Ask for graphs of another batch size; ``True`` when it is new (build again with
        :meth:`build_steps` to capture it). Sizes at or above one that ran out of memory
        are refused."""
        if batch in self.batches or (self._too_big is not None and batch >= self._too_big):
            return False
        self.batches = sorted({*self.batches, batch})
        self.built = False
        return True

    # -- building ------------------------------------------------------------------------

    def build(self) -> str:
        """Capture every graph now; returns the status line (never raises)."""
        for _ in self.build_steps():
            pass
        return self.status

    def build_steps(self) -> Iterator[None]:
        """Capture the graphs one per step; afterwards :attr:`status` says what was built."""
        why = graphs_supported(self.model)
        if why is not None:
            self.status = f"off: {why}"
            self.built = True
            return
        start = time.perf_counter()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        model = self.model
        param = next(model.parameters())
        for batch in list(self.batches):
            if self._too_big is not None and batch >= self._too_big:
                break
            try:
                yield from self._capture_decode(model, batch, param)
                if batch in self.encode_batches:
                    with torch.inference_mode():
                        self._capture_encode(model, batch, param)
                    yield
            except torch.OutOfMemoryError:
                self._drop_batch(batch)
                self.failed.append(f"batch {batch}: out of GPU memory")
                torch.cuda.empty_cache()
        self.seconds += time.perf_counter() - start
        self.built = True
        self.status = self._describe()

    def _capture_decode(self, model: RealNVP, batch: int, param: Tensor) -> Iterator[None]:
        generator = torch.Generator().manual_seed(batch)
        zs = [z.to(param.device) for z in model.sample_latents(batch, 1.0, generator)]
        h = None
        for level in range(model.num_levels - 1, -2, -1):  # one capture per step
            key = ("decode", level, batch)
            args = (h,) if level < 0 else (zs[level],) if h is None else (zs[level], h)
            with torch.inference_mode():
                want = _step_function(model, level)(*args)
                if key not in self._graphs:
                    self._add(key, _step_function(model, level), args, want)
            h = want
            yield

    def _capture_encode(self, model: RealNVP, batch: int, param: Tensor) -> None:
        key = ("encode", 0, batch)
        if key in self._graphs:
            return
        c, s = model.config.in_channels, model.config.image_size
        generator = torch.Generator().manual_seed(batch)
        x = torch.rand(batch, c, s, s, generator=generator).to(param.device) * 0.98 + 0.01

        def encode(images: Tensor) -> list[Tensor]:
            return model(images)[0]

        self._add(key, encode, (x,), encode(x))

    def _add(self, key: tuple[str, int, int], fn: Callable, args: tuple, want: Any) -> None:
        """Capture ``fn`` and keep it if one replay agrees with the eager ``want``."""
        try:
            graph = _Graph(fn, args, self._pool)
            got = graph(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # a capture that fails leaves this step eager
            self.failed.append(f"{key[0]} level {key[1]} batch {key[2]}: {_first_line(exc)}")
            return
        wants = [want] if isinstance(want, Tensor) else list(want)
        gots = [got] if isinstance(got, Tensor) else list(got)
        tol = AGREEMENT_TOLERANCE
        if not all(torch.allclose(g, w, rtol=tol, atol=tol) for g, w in zip(gots, wants)):
            self.failed.append(f"{key[0]} level {key[1]} batch {key[2]}: differs from eager")
            return
        self._graphs[key] = graph

    def _drop_batch(self, batch: int) -> None:
        self._too_big = batch if self._too_big is None else min(self._too_big, batch)
        for key in [k for k in self._graphs if k[2] >= batch]:
            del self._graphs[key]
        self.batches = [b for b in self.batches if b < batch]

    def _describe(self) -> str:
        if not self._graphs:
            reason = "; ".join(self.failed[:2]) or "nothing captured"
            return f"failed, eager: {reason}"
        batches = sorted({k[2] for k in self._graphs})
        text = (
            f"on: {len(self._graphs)} graphs for batch {', '.join(map(str, batches))}, "
            f"checked against eager, built in {self.seconds:.1f} s"
        )
        if self.failed:
            text += f"; eager for {len(self.failed)} ({self.failed[0]})"
        return text

    # -- replaying -----------------------------------------------------------------------

    def step(self, level: int, *args: Tensor) -> Tensor | None:
        """The replayed decode step (level -1: ``to_image``), or ``None`` when there is no
        graph for it (the caller runs it eagerly)."""
        graph = self._graphs.get(("decode", level, args[0].shape[0]))
        return None if graph is None else graph(*args)

    def encode(self, x: Tensor) -> list[Tensor] | None:
        """Replayed ``model(x)[0]`` (the latents), or ``None`` without a graph for it."""
        graph = self._graphs.get(("encode", 0, x.shape[0]))
        return None if graph is None else graph(x)

    def decode(self, zs: Sequence[Tensor]) -> Tensor:
        """A whole decode, each step replayed where a graph exists (the benchmark's)."""
        model = self.model
        h = self.step(model.num_levels - 1, zs[-1])
        h = model.inverse_top(zs[-1]) if h is None else h
        for level in range(model.num_levels - 2, -1, -1):
            out = self.step(level, zs[level], h)
            h = model.inverse_level(level, zs[level], h) if out is None else out
        out = self.step(-1, h)
        return model.to_image(h) if out is None else out

    def as_model(self) -> Any:
        """An object with ``decode``, ``inverse_top``, ``inverse_level``, ``to_image``,
        ``sample_latents`` and ``num_levels`` that replays the graphs (for the benchmark's
        figures, which take a model)."""
        return _GraphedModel(self)

    def release(self) -> None:
        """Free the graphs and their memory (a new model replaces this one)."""
        self._graphs.clear()
        self._pool = None
        self.built = False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _GraphedModel:
    def __init__(self, decoder: GraphedDecoder) -> None:
        self._decoder = decoder
        self.model = decoder.model
        self.num_levels = decoder.model.num_levels
        self.config = decoder.model.config

    def decode(self, zs: Sequence[Tensor]) -> Tensor:
        return self._decoder.decode(zs)

    def inverse_top(self, z: Tensor) -> Tensor:
        out = self._decoder.step(self.num_levels - 1, z)
        return self.model.inverse_top(z) if out is None else out

    def inverse_level(self, level: int, z: Tensor, h: Tensor) -> Tensor:
        out = self._decoder.step(level, z, h)
        return self.model.inverse_level(level, z, h) if out is None else out

    def to_image(self, h: Tensor) -> Tensor:
        out = self._decoder.step(-1, h)
        return self.model.to_image(h) if out is None else out

    def sample_latents(self, *args: Any, **kwargs: Any) -> list[Tensor]:
        return self.model.sample_latents(*args, **kwargs)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def agreement(folded: RealNVP, batches: Sequence[int] = (1, 16), repeats: int = 20) -> dict:
    """Build graphs for ``folded`` (an inference copy, as the explorer renders) and compare
    them with eager decoding: the status, and per batch size the largest absolute pixel
    difference (images in [0, 1]) and the median decode time of each (milliseconds)."""
    decoder = GraphedDecoder(folded, batches=batches)
    report: dict[str, Any] = {"status": decoder.build(), "batches": {}}
    if not decoder.ready:
        return report
    device = next(folded.parameters()).device
    for batch in batches:
        zs = [z.to(device) for z in folded.sample_latents(batch, 1.0, torch.Generator())]
        with torch.inference_mode():
            eager, graphed = folded.decode(zs), decoder.decode(zs)
            times = {}
            for name, fn in (("eager_ms", folded.decode), ("graph_ms", decoder.decode)):
                samples = []
                for _ in range(repeats):
                    torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    fn(zs)
                    torch.cuda.synchronize(device)
                    samples.append((time.perf_counter() - start) * 1000.0)
                times[name] = round(sorted(samples)[len(samples) // 2], 3)
        report["batches"][str(batch)] = {
            "max_abs_diff": float((eager - graphed).abs().max()),
            **times,
        }
    decoder.release()
    return report
