"""The open model and its copies: the model half of
:class:`~explorer.engine.render.RenderEngine` (what runs next is the other,
:mod:`explorer.engine.scheduler`).

One checkpoint becomes up to six models, each for its own work:

- ``exact``: the inference copy (``fold_for_inference``: weight and batch normalization
  folded into plain convolutions) that renders frames and encodes;
- ``original``: the model as loaded, for bits/dim and the likelihood map, so the figure is
  exactly what ``realnvp encode`` prints;
- ``bf16``: a copy with bf16 s/t networks, made by the precision measurement where bf16
  convolutions are faster; frames use it where the plan says bf16;
- ``draft``: a copy whose decode runs its first couplings in float32 and the rest in bf16
  (:func:`core.flow.inference.draft_copy`), made on first use, for a drag's frames;
- the channels_last copies of ``exact`` and ``original`` for batched encodes on the CPU;
- ``cpu``: with ``--device auto`` on a GPU, the CPU contender of the device race.

Beside them: the CUDA graphs of the decode steps and encode (:mod:`core.flow.graphs`) and
the ``torch.compile``-d steps (:mod:`explorer.engine.compiled`). :meth:`ModelSet.step`
picks among them for each decode step, and :meth:`ModelSet.decode_rows` decodes with it.
Everything here is used under :attr:`ModelSet.lock`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from core.flow.graphs import GraphedDecoder
from core.flow.inference import bf16_copy, copy_model, draft_copy, fold_for_inference
from core.flow.model import RealNVP
from core.stats.typicality import TypicalityReference
from explorer.engine.compiled import CompiledSteps, add_preemption_hooks, step_function
from explorer.engine.requests import Preempted
from explorer.state.state import ModelInfo

# Batch sizes that get CUDA graphs: a single image, the default grid, and a few more that
# frames use (other grid sizes, progressive chunks); beyond that, eager.
MAX_GRAPH_BATCHES = 6


class ModelSet:
    """The open model's copies, graphs and compiled steps, behind one lock.

    ``check_preempted`` is installed as the preemption hook of every copy that renders (and
    called between decode levels); ``on_graph_job`` receives the capture job when a frame
    asks for graphs of a new batch size."""

    def __init__(
        self,
        check_preempted: Callable[[], None],
        on_graph_job: Callable[[Iterator[None]], None],
        compile: bool = False,
        graphs: bool = True,
    ) -> None:
        self.lock = threading.Lock()  # held while rendering or swapping the model
        self.check_preempted = check_preempted
        self._on_graph_job = on_graph_job
        self.compile = compile
        self.compile_batches: tuple[int, ...] = (1, 16)  # a single image, the default grid
        self.use_graphs = graphs
        self.exact: RealNVP | None = None
        self.original: RealNVP | None = None
        self.bf16: RealNVP | None = None
        self.draft: RealNVP | None = None
        self.cpu: RealNVP | None = None
        self.batch_copies: tuple[int, RealNVP, RealNVP] | None = None  # (model id, exact, original)
        self.graphs: GraphedDecoder | None = None
        self.graphs_note = ""  # why graphs are off, when they were turned off
        self.compiled: CompiledSteps | None = None
        self.reference: TypicalityReference | None = None  # the checkpoint's test statistics
        self.info: ModelInfo | None = None
        self.max_batch: int | None = None  # after running out of memory: smaller pieces
        self._ids = iter(range(1, 2**62))

    @property
    def model_id(self) -> int:
        return self.info.model_id if self.info else 0

    def _hooked(self, model: RealNVP) -> RealNVP:
        if not self.compile:
            # Compiled steps would guard on the hooks' state; they stay unhooked and are
            # preempted between levels only.
            add_preemption_hooks(model, self.check_preempted)
        return model

    def folded(self, model: RealNVP) -> RealNVP:
        """``model``'s inference copy, hooked for preemption (made before taking the lock:
        frames of the old model go on meanwhile)."""
        return self._hooked(fold_for_inference(model))

    def install(
        self,
        model: RealNVP,
        folded: RealNVP,
        device: torch.device,
        device_label: str,
        reference: TypicalityReference | None,
        contender: bool,
        **info: Any,
    ) -> Iterator[None] | None:
        """Make ``model`` the open one, ``folded`` (:meth:`folded`) its inference copy (lock
        held); its graphs and compiled steps are to be built; ``contender``: keep a CPU copy
        for the device race. Returns the graph capture job, if any."""
        self.release_graphs()  # the old model's graphs and their memory
        self.exact, self.bf16, self.draft = folded, None, None
        self.original = model.eval()
        self.batch_copies = None
        self.reference = reference
        self.max_batch = None
        self.cpu = None
        self.graphs_note = ""
        self.info = ModelInfo(
            model_id=next(self._ids),
            image_size=model.config.image_size,
            channels=model.config.in_channels,
            num_parameters=sum(p.numel() for p in model.parameters()),
            latent_shapes=tuple(tuple(int(v) for v in s) for s in model.latent_shapes),
            device=device_label,
            config=model.config.to_dict(),
            **info,
        )
        self.compiled = None
        if self.compile:
            # Built on its own thread while frames render eagerly.
            self.compiled = CompiledSteps(folded, self.info.model_id, self.compile_batches)
        graph_job = None
        if device.type == "cuda" and self.use_graphs:
            self.graphs = GraphedDecoder(folded, batches=(1, 16))
            graph_job = self.graphs.build_steps()
        if contender:
            self.cpu = self._hooked(fold_for_inference(model).to("cpu"))  # a copy: model stays
        return graph_job

    def release_graphs(self) -> None:
        if self.graphs is not None:
            self.graphs.release()
            self.graphs = None

    def move_to_cpu(self, device_label: str) -> None:
        """Render on the CPU from now on (lock held): the device race chose it, or the GPU
        ran out of memory."""
        cpu = self.cpu or self._hooked(fold_for_inference(self.original).to("cpu"))  # type: ignore[arg-type]
        self.release_graphs()
        self.compiled = None
        self.exact = cpu
        self.cpu = None
        if self.original is not None:
            self.original.to("cpu")
        self.max_batch = None
        if self.info is not None:
            self.info = dataclasses.replace(self.info, device=device_label)

    def model_in(self, model_id: int, precision: str) -> RealNVP:
        """The open model's inference copy in ``precision``: ``float32``, ``bf16`` or
        ``draft`` (:func:`~core.flow.inference.draft_copy`), each made on first use;
        :class:`Preempted` when ``model_id`` is no longer open. Lock held."""
        model = self.exact
        if model is None or model_id != self.model_id:
            raise Preempted  # the model changed: this measurement is over
        if precision == "float32":
            return model
        # From the hook-free original: the preemption hooks are not copied.
        if precision == "draft":
            if self.draft is None:
                self.draft = self._hooked(draft_copy(fold_for_inference(self.original)))
            return self.draft
        if self.bf16 is None:
            self.bf16 = self._hooked(bf16_copy(fold_for_inference(self.original)))
        return self.bf16

    def batch_models(self, model_id: int) -> tuple[RealNVP, RealNVP]:
        """The inference and original models for batched work: on the CPU, channels_last
        copies made at the first batch of each model (frames keep the NCHW models, whose
        one-image arithmetic the level cache and its tests rely on). Lock held."""
        model, original = self.exact, self.original
        if next(model.parameters()).device.type != "cpu":  # type: ignore[union-attr]
            return model, original  # type: ignore[return-value]
        copies = self.batch_copies
        if copies is None or copies[0] != model_id:
            copies = (
                model_id,
                copy_model(model).to(memory_format=torch.channels_last),  # type: ignore[arg-type]
                copy_model(original).to(memory_format=torch.channels_last),  # type: ignore[arg-type]
            )
            self.batch_copies = copies
        return copies[1], copies[2]

    def checked(self, pixels: np.ndarray, model_id: int | None) -> ModelInfo:
        """The open model's info, once ``pixels`` are ``uint8 (N, C, H, W)`` images for it
        (``ValueError`` otherwise, or when ``model_id`` is no longer open). Lock held."""
        info = self.info
        if self.exact is None or self.original is None or info is None:
            raise ValueError("no model is open")
        if model_id is not None and model_id != info.model_id:
            raise ValueError("the model has changed")
        expected = (info.channels, info.image_size, info.image_size)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(f"expected uint8 images of shape (N, {expected}), got {pixels.shape}")
        return info

    def checked_one(self, pixels: np.ndarray) -> ModelInfo:
        """As :meth:`checked`, for one ``uint8 (C, H, W)`` image. Lock held."""
        info = self.info
        if self.exact is None or self.original is None or info is None:
            raise ValueError("no model is open")
        expected = (info.channels, info.image_size, info.image_size)
        if pixels.dtype != np.uint8 or pixels.shape != expected:
            raise ValueError(
                f"expected uint8 pixels of shape {expected}, got {pixels.dtype} {pixels.shape}"
            )
        return info

    def copy_original(self, model_id: int | None = None) -> RealNVP:
        """A copy of the original (eval mode), made under the lock; ``ValueError`` when
        ``model_id`` is no longer open."""
        with self.lock:
            original = self.original
            if original is None or (model_id is not None and model_id != self.model_id):
                raise ValueError("the model has changed" if original else "no model is open")
            return copy_model(original).eval()

    # -- decoding --------------------------------------------------------------------------

    @staticmethod
    def check_latents(model: RealNVP, latents: Sequence[np.ndarray]) -> None:
        num_levels = model.num_levels
        if len(latents) != num_levels:
            raise ValueError(f"expected {num_levels} latent levels, got {len(latents)}")
        for i, (z, shape) in enumerate(zip(latents, model.latent_shapes)):
            if z.ndim != 4 or z.shape[1:] != tuple(shape) or z.shape[0] != latents[0].shape[0]:
                raise ValueError(f"latent level {i} has shape {z.shape}, expected (N, {shape})")

    def decode_rows(
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
        limit = self.max_batch
        if limit is not None and count > limit:  # after running out of memory: in pieces
            every = list(range(count)) if rows is None else rows
            parts = [
                self.decode_rows(model, latents, every[i : i + limit], first, cached)
                for i in range(0, count, limit)
            ]
            running_parts = [
                torch.cat([p[0][level] for p in parts]) if level <= first else None  # type: ignore[misc]
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
            self.check_preempted()
            z = latents[level] if rows is None else latents[level][rows]
            z = torch.tensor(z, device=param.device, dtype=param.dtype)
            if level == num_levels - 1:
                above = self.step(model, level, z)
            else:
                above = self.step(model, level, z, above)
            running[level] = above
        self.check_preempted()
        return running, self.step(model, -1, above)

    def step(self, model: RealNVP, level: int, *args: torch.Tensor) -> torch.Tensor:
        """One decode step (level -1: ``to_image``): replayed from a CUDA graph when one is
        built for this model and batch size (a new batch size asks for one), compiled when
        that code is ready, eager otherwise (and from then on, if compiling fails)."""
        graphs = self.graphs
        if graphs is not None and graphs.built and graphs.model is model:
            out = graphs.step(level, *args)
            if out is not None:
                return out
            if len(graphs.batches) < MAX_GRAPH_BATCHES and graphs.want(args[0].shape[0]):
                self._on_graph_job(graphs.build_steps())
        compiled = self.compiled
        if compiled is not None and compiled.model is model:
            try:
                out = compiled.run(level, *args)
            except Exception:  # e.g. an input the code was not built for: no compiling here
                self.compiled = None
                out = None
            if out is not None:
                return out
        return step_function(model, level)(*args)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The latents of ``x`` by the inference copy, replayed from a CUDA graph where one
        is built."""
        graphs = self.graphs
        replayed = graphs.encode(x) if graphs is not None and graphs.built else None
        return self.exact.encode(x) if replayed is None else replayed  # type: ignore[union-attr]

    # -- status ----------------------------------------------------------------------------

    @property
    def compile_status(self) -> str:
        """``off``, ``building``, ``ready (N s)`` or ``failed: ...``."""
        c = self.compiled
        if not self.compile:
            return "off"
        if c is None:
            return "off (an input it was not built for)"
        if c.error:
            return f"failed: {c.error}"
        return f"ready ({c.seconds:.0f} s)" if c.ready else "building"

    @property
    def graphs_status(self) -> str:
        """``off: ...``, ``building``, ``on: N graphs ...`` or ``failed, eager: ...``."""
        if not self.use_graphs:
            return "off (--graphs off)"
        graphs = self.graphs
        if graphs is None:
            return self.graphs_note or "off: not rendering on a CUDA device"
        return graphs.status if graphs.built else "building"
