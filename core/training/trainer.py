"""The trainer: the paper's recipe, safe checkpoints, exact resume and DistributedDataParallel.

Run it as ``python -m core train`` / ``realnvp train``, or under
``torchrun --nproc_per_node N -m core train`` for several processes (NCCL on CUDA, gloo on
the CPU). Rank 0 alone writes files and events.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.files.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from core.files.images import make_grid, save_png, to_uint8
from core.flow.model import (
    FlowConfig,
    RealNVP,
    dequantize,
    gaussian_log_prob,
    nats_to_bits_per_dim,
    per_image_bits_per_dim,
    preset,
)
from core.flow.resnet import weight_norm_scales
from core.stats.class_stats import DEFAULT_PER_CLASS, META_KEY, ClassStatsError
from core.stats.measure import compute_class_stats
from core.stats.typicality import MIN_REFERENCE_IMAGES, TypicalityReference
from core.training.data import ImageDataset, load_dataset
from core.training.datasets import DatasetError, dataset_geometry
from core.training.device import describe, pick_device
from core.training.events import EventSink
from core.training.precision import PrecisionChoice, choose_precision, conv_probe_ms, interleaved_ms


class TrainingError(RuntimeError):
    """A run that cannot go on; the message is meant for the user."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the model architecture."""

    dataset: str = "mnist"
    data_dir: str = "data"
    download: bool = False
    out: str = "runs/run"
    batch_size: int = 64
    lr: float = 1e-3
    weight_norm_l2: float = 5e-5
    grad_clip: float = 100.0
    warmup_steps: int = 200
    epochs: int = 1
    max_steps: int | None = None
    device: str = "auto"
    precision: str = "auto"  # auto | float32 | bf16 (see core.training.precision)
    compile: bool = False
    cuda_graph: bool = True  # one process on CUDA, not compiled: replay steps from a graph
    seed: int = 0
    eval_every: int = 500
    eval_limit: int | None = None
    log_every: int = 10
    flip: bool = False
    max_nonfinite: int = 20
    num_samples: int = 64
    # Training images per class for the class statistics computed at the end of a run
    # on labelled data (core.stats.class_stats); 0: all of them.
    class_stats_per_class: int = DEFAULT_PER_CLASS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# -- distributed ----------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), pick_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return _Dist(rank, world, local_rank), device


# -- the run --------------------------------------------------------------------------------


STOP_FILE = "STOP"  # created in the output folder, it asks a run to save and finish


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to save and finish instead of dying mid-step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread there is no signal handling; the flag stays unset.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -- one step -------------------------------------------------------------------------------


def step_autocast(device: torch.device, precision: str | None = None) -> Any:
    """The autocast of a training step on ``device`` in ``precision`` (``float32`` or
    ``bf16``; ``None``: the device's default, bf16 on CUDA and float32 elsewhere).

    bf16 autocast changes only the convolutions, which are the s/t networks': everything
    else in the flow (the logit preprocessing, ``exp`` of the scales, the log-determinants,
    the flow's batch norm) gets float32 inputs (:class:`core.flow.coupling.AffineCoupling` casts
    the s/t outputs back) and stays float32, and batch-norm running statistics are float32
    buffers. No cast cache: each weight is cast once per step anyway, and CUDA graph capture
    cannot use it."""
    if precision is None:
        precision = "bf16" if device.type == "cuda" else "float32"
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def use_channels_last(device: torch.device, precision: str) -> bool:
    """Whether a step runs channels_last: on CUDA, and in bf16 on the CPU, where oneDNN's
    bf16 convolutions want it (7x faster than NCHW where bf16 is emulated; a 3x3, 64
    channels at 16x16). float32 on the CPU stays NCHW for now, though channels_last measured
    faster there too (``mnist-small``, batch 64, one thread, interleaved: 5.0 against 6.5 s a
    step on a shared 2-core AMD EPYC); switching it needs the distributed (gloo) path checked
    with channels_last gradients first."""
    return device.type == "cuda" or (device.type == "cpu" and precision == "bf16")


def make_train_step(
    model: RealNVP,
    device: torch.device,
    precision: str,
    recipe: TrainConfig,
    lr: float = 1e-4,
) -> TrainStep:
    """A :class:`TrainStep` of ``model`` as the trainer runs it in ``precision`` (memory
    format included), with a fresh Adam: for measurements (``realnvp bench``, ``auto``)."""
    if use_channels_last(device, precision):
        model.to(memory_format=torch.channels_last)
    optimizer, fused = make_adam(model.parameters(), lr)
    return TrainStep(
        model,
        model,
        optimizer,
        fused,
        recipe.weight_norm_l2,
        recipe.grad_clip,
        lambda: step_autocast(device, precision),
    )


def measure_step_ms(
    model: RealNVP, batch: int, device: torch.device, recipe: TrainConfig
) -> dict[str, float]:
    """Median milliseconds of a training step of a copy of ``model`` (``model`` itself and
    the global random state are untouched) in float32 and in bf16, interleaved. One step
    of each warms up; then two of each, or one where a step takes seconds."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    steps, inputs = {}, {}
    for p in ("float32", "bf16"):
        steps[p] = make_train_step(copy.deepcopy(model).train(), device, p, recipe)
        cl = use_channels_last(device, p)
        inputs[p] = x.to(device).contiguous(
            memory_format=torch.channels_last if cl else torch.contiguous_format
        )

    def run(p: str) -> None:
        steps[p](inputs[p])
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return interleaved_ms(run, repeats=2, warmup=1, budget_s=10.0)


def _warn_running_eagerly(what: str, exc: Exception) -> None:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    print(
        f"warning: {what} failed ({type(exc).__name__}: {first_line}); running eagerly",
        file=sys.stderr,
    )


def make_adam(params, lr: float) -> tuple[torch.optim.Adam, bool]:
    """Adam, fused where this torch and device have the fused kernel (it takes ``found_inf``
    and so can skip a step without the host looking). Returns the optimizer and whether
    it is fused."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True), True
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / torch
        return torch.optim.Adam(params, lr=lr), False


def _fix_loaded_adam(optimizer: torch.optim.Adam, fused: bool) -> None:
    """After ``load_state_dict``: a checkpoint from an unfused run (or another device) must
    not switch the kernel, and fused Adam wants float32 step counters on the parameter's
    device."""
    for group in optimizer.param_groups:
        group["fused"] = fused
        if fused:
            group["foreach"] = None
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st:
                step = st["step"]
                if not torch.is_tensor(step):
                    step = torch.tensor(float(step))
                st["step"] = step.to(p.device, torch.float32) if fused else step.cpu()


class _BufferGuard:
    """Keeps the last good copy of the model's buffers (batch-norm statistics) and, after a
    step, keeps or rolls back the new values on the device: a handful of kernels for all
    buffers, and no host-device synchronisation."""

    def __init__(self, buffers: list[torch.Tensor]) -> None:
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for b in buffers:
            groups.setdefault((b.dtype, b.device), []).append(b)
        self.groups = list(groups.values())
        self.saved = [torch.cat([b.reshape(-1) for b in bufs]) for bufs in self.groups]

    def commit(self, finite: torch.Tensor) -> None:
        for bufs, saved in zip(self.groups, self.saved):
            now = torch.cat([b.reshape(-1) for b in bufs])
            torch.where(finite.to(saved.device), now, saved, out=saved)
            views = saved.split([b.numel() for b in bufs])
            torch._foreach_copy_(bufs, [v.view(b.shape) for v, b in zip(views, bufs)])


class TrainStep:
    """One step of the paper's objective, as the trainer and ``realnvp bench`` run it.

    Bits/dim plus the L2 penalty on the weight-norm scales, backward, gradient clipping, Adam.
    A step whose loss or gradient norm is not finite changes nothing: fused Adam gets the
    ``found_inf`` flag that ``torch.amp.GradScaler`` uses (parameters, moments and step count
    stay) and the batch's batch-norm statistics are rolled back. All of that happens on the
    device, and the loss and the counters stay there until :meth:`read`, so a CUDA step never
    waits for the GPU. Where Adam is not fused (an older torch), the host looks at the flag.
    """

    def __init__(
        self,
        model: RealNVP,
        net: nn.Module,
        optimizer: torch.optim.Adam,
        fused: bool,
        weight_norm_l2: float,
        grad_clip: float,
        autocast: Any,
        eager_net: nn.Module | None = None,
        cuda_graph: bool = False,
    ) -> None:
        """``net`` is what runs the forward pass (``model``, or it wrapped by DDP and/or
        ``torch.compile``); ``eager_net`` is the uncompiled fallback when ``net`` is compiled.
        ``cuda_graph``: replay the step from a CUDA graph (CUDA, fused Adam, one process,
        not compiled; ``autocast`` must not cache casts).
        """
        self.model, self.net, self.optimizer, self.fused = model, net, optimizer, fused
        self.eager_net = eager_net
        self.compiled = eager_net is not None  # False again if compilation fails
        self.weight_norm_l2, self.grad_clip, self.autocast = weight_norm_l2, grad_clip, autocast
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.decay = weight_norm_scales(model)
        self.num_dims = model.config.num_dims
        self.guard = _BufferGuard(list(model.buffers()))
        device = self.params[0].device
        self.loss_sum = torch.zeros((), device=device)
        self.good = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_total = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_run = torch.zeros((), dtype=torch.int64, device=device)
        self.use_graph = cuda_graph and fused and eager_net is None and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self._warm = 0

    def _forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        with self.autocast():
            if self.eager_net is None:
                return self.net(x)
            # The first call of a compiled net is where compilation happens and can fail (no
            # compiler, an unsupported op): then warn once and run eagerly.
            try:
                out = self.net(x)
            except Exception as exc:
                _warn_running_eagerly("torch.compile", exc)
                self.net, self.compiled = self.eager_net, False
                out = self.net(x)
            self.eager_net = None
            return out

    # -- CUDA graph -----------------------------------------------------------------------

    WARMUP_STEPS = 3  # eager steps on a side stream before capture, as CUDA graphs need

    def _graphed(self, x: torch.Tensor) -> None:
        """The whole step replayed from a CUDA graph: one launch instead of thousands, which
        is what bounds an eager step of these small convolutions on a GPU. The first steps
        run eagerly; a failed capture warns and leaves eager steps from then on."""
        current = torch.cuda.current_stream(x.device)
        if self.graph is None and self._warm < self.WARMUP_STEPS:
            side = torch.cuda.Stream(x.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                self._step(x)
            current.wait_stream(side)
            self._warm += 1
            return
        if self.graph is None:
            try:
                self._capture(x)
            except Exception as exc:  # capture is an optimization: never lose the run
                _warn_running_eagerly("CUDA graph capture", exc)
                self.use_graph, self.graph = False, None
                self._step(x)
                return
        self._static_x.copy_(x)
        for group, lr in zip(self.optimizer.param_groups, self._lr):
            lr.fill_(group["lr"])  # the scheduler's value, read by the graph
        self.graph.replay()

    def _capture(self, x: torch.Tensor) -> None:
        self._static_x = x.clone()
        self._lr = [
            torch.tensor(float(g["lr"]), device=x.device) for g in self.optimizer.param_groups
        ]
        saved = [g["lr"] for g in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self._lr):
            group["lr"], group["capturable"] = lr, True
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step(self._static_x)
        finally:
            for group, lr in zip(self.optimizer.param_groups, saved):
                group["lr"] = lr  # a float again for the scheduler and the checkpoint
        self.graph = graph  # capture only records: this batch is trained by the replay

    def __call__(self, x: torch.Tensor) -> None:
        if self.use_graph and x.is_cuda:
            self._graphed(x)
        else:
            self._step(x)

    def _step(self, x: torch.Tensor) -> None:
        zs, logdet = self._forward(x)
        bpd = nats_to_bits_per_dim(gaussian_log_prob(zs) + logdet.float(), self.num_dims).mean()
        loss = bpd + self.weight_norm_l2 * sum((g.float() ** 2).sum() for g in self.decay)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        finite = torch.isfinite(grad_norm) & torch.isfinite(bpd.detach())
        if self.fused:
            self.optimizer.found_inf = (~finite).float()  # read by the fused kernel
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif bool(finite):
            self.optimizer.step()
        self.guard.commit(finite)
        bad = (~finite).long()
        self.bad_run.add_(bad).mul_(bad)
        self.bad_total.add_(bad)
        self.good.add_(finite.long())
        self.loss_sum.add_(torch.where(finite, bpd.detach().float(), 0.0))

    def read(self, reset_window: bool) -> dict[str, float]:
        """One host-device synchronisation: the mean loss and the count of good steps since the
        last reset, non-finite steps in all and in a row now."""
        values = torch.stack(
            [
                self.loss_sum.double(),
                self.good.double(),
                self.bad_total.double(),
                self.bad_run.double(),
            ]
        ).tolist()
        if reset_window:
            self.loss_sum.zero_()
            self.good.zero_()
        loss_sum, good, bad_total, bad_run = values
        return {
            "loss": loss_sum / good if good else float("nan"),
            "good": int(good),
            "nonfinite": int(bad_total),
            "bad_run": int(bad_run),
        }


def build_model_config(
    dataset: str,
    preset_name: str | None,
    num_scales: int | None,
    mid_channels: int | None,
    num_blocks: int | None,
    channels: int | None = None,
    image_size: int | None = None,
) -> FlowConfig:
    """A FlowConfig for the data set's geometry, from a preset and/or explicit sizes."""
    ch, size = dataset_geometry(dataset, channels, image_size)
    base = preset(preset_name) if preset_name else preset("mnist-small")
    overrides = {
        k: v
        for k, v in (
            ("num_scales", num_scales),
            ("mid_channels", mid_channels),
            ("num_blocks", num_blocks),
        )
        if v is not None
    }
    return replace(base, in_channels=ch, image_size=size, **overrides)


class Trainer:
    """One training run. ``run()`` returns the final metrics; events go to ``sink``."""

    def __init__(
        self,
        model_config: FlowConfig | None,
        config: TrainConfig,
        sink: EventSink | None = None,
        resume: str | os.PathLike | None = None,
    ) -> None:
        self.dist, self.device = _init_distributed(config.device)
        self.sink = sink or EventSink("none")
        if not self.dist.is_main:
            self.sink = EventSink("none")
        self.resume_state: dict[str, Any] | None = None
        if resume is not None:
            data = read_checkpoint(resume)
            if not data.get("training"):
                raise TrainingError(f"{resume}: has no training state to resume from")
            saved = TrainConfig.from_dict(data["training"]["train_config"])
            # Data, optimizer and seed come from the checkpoint; where and how long from now.
            config = replace(
                saved,
                out=config.out,
                epochs=config.epochs,
                max_steps=config.max_steps,
                device=config.device,
                precision=config.precision,
                compile=config.compile,
                cuda_graph=config.cuda_graph,
                eval_every=config.eval_every,
                log_every=config.log_every,
            )
            self.model, _ = load_checkpoint(resume)
            self.resume_state = data["training"]
        else:
            if model_config is None:
                raise ValueError("a model config is needed unless resuming")
            torch.manual_seed(config.seed)
            self.model = RealNVP(model_config)
        self.config = config
        self.out = Path(config.out)
        self.model.to(self.device)
        self.cuda = self.device.type == "cuda"
        self.precision: PrecisionChoice | None = None  # chosen when the run starts
        self.channels_last = False
        self.model.train()
        self.class_stats: dict[str, Any] | None = None  # meta["class_stats"] once computed

    # -- data -------------------------------------------------------------------------------

    def _load_data(self) -> tuple[ImageDataset, ImageDataset | None]:
        c = self.config
        mc = self.model.config
        kwargs = dict(channels=mc.in_channels, image_size=mc.image_size, download=c.download)
        train = load_dataset(c.dataset, c.data_dir, True, **kwargs)
        test = load_dataset(c.dataset, c.data_dir, False, **kwargs) if self.dist.is_main else None
        for ds in (train, test):
            if ds is not None and (ds.channels, ds.image_size) != (mc.in_channels, mc.image_size):
                raise DatasetError(
                    f"{c.dataset} images are {ds.channels}x{ds.image_size}x{ds.image_size}, "
                    f"the model expects {mc.in_channels}x{mc.image_size}x{mc.image_size}"
                )
        if len(train) < c.batch_size * self.dist.world:
            raise DatasetError(
                f"{len(train)} training images are fewer than one batch "
                f"({c.batch_size} x {self.dist.world} processes); lower --batch-size"
            )
        return train, test

    def _resident(self, images: torch.Tensor) -> torch.Tensor:
        """Small data sets live on the GPU as uint8; larger ones stay pinned on the host."""
        if self.cuda and images.numel() <= 2 * 1024**3:
            return images.to(self.device)
        if self.cuda:
            return images.pin_memory()
        return images

    # -- pieces of a step -------------------------------------------------------------------

    def _autocast(self):
        return step_autocast(self.device, self.precision.precision if self.precision else None)

    def _choose_precision(self) -> PrecisionChoice:
        """``--precision``, or for ``auto`` a short measurement (see
        :mod:`core.training.precision`) on a copy of the model, so the run itself is untouched. In a
        distributed run rank 0 measures and every rank takes its choice."""
        c, mc = self.config, self.model.config
        if not self.dist.is_main and c.precision == "auto" and self.device.type == "cpu":
            choice = None
        else:
            choice = choose_precision(
                c.precision,
                self.device,
                probe=lambda: conv_probe_ms(mc.mid_channels, mc.image_size // 2, c.batch_size),
                measure=lambda: measure_step_ms(self.model, c.batch_size, self.device, c),
            )
        if self.dist.enabled:
            flag = torch.tensor([choice is not None and choice.precision == "bf16"])
            dist.broadcast(flag.to(self.device), 0)
            if choice is None:
                bf16 = bool(flag.item())
                name = "bf16" if bf16 else "float32"
                choice = PrecisionChoice(name, f"{name} (rank 0's choice)", c.precision)
        return choice

    def _batch(
        self, images: torch.Tensor, perm: torch.Tensor, pos: int, noise: torch.Generator
    ) -> torch.Tensor:
        b, w = self.config.batch_size, self.dist.world
        start = pos * b * w + self.dist.rank * b
        idx = perm[start : start + b]
        x = images[idx.to(images.device)]
        x = x.to(self.device, non_blocking=True)
        x = dequantize(x, noise)
        if self.config.flip:
            flip = torch.rand(x.shape[0], generator=noise, device=noise.device) < 0.5
            x = torch.where(flip.to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _epoch_permutation(self, epoch: int, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g)

    @torch.no_grad()
    def evaluate(self, test: ImageDataset) -> float:
        """Mean test bits/dim in eval mode (see :func:`core.flow.model.mean_bits_per_dim`), in
        float32 also on CUDA: under bf16 autocast the same weights read about 0.005 bits/dim
        high (1.3970 against 1.3922 on MNIST), more than the gains late in a run."""
        per_image = self.evaluate_per_image(test)
        return per_image.sum().item() / max(len(per_image), 1)

    @torch.no_grad()
    def evaluate_per_image(self, test: ImageDataset) -> torch.Tensor:
        """Bits/dim of each evaluated test image (float64, CPU), as :meth:`evaluate`.

        In the default memory format also where steps run channels_last (on the CPU the
        float32 sums differ in the 8th digit between the two), so that ``realnvp eval`` of
        the saved checkpoint reproduces the recorded figure exactly."""
        if self.channels_last and not self.cuda:
            model = copy.deepcopy(self.model).to(memory_format=torch.contiguous_format)
            return per_image_bits_per_dim(model.eval(), self._eval_images(test), self.device)
        self.model.eval()
        try:
            return per_image_bits_per_dim(self.model, self._eval_images(test), self.device)
        finally:
            self.model.train()

    def _eval_images(self, test: ImageDataset) -> torch.Tensor:
        return test.images[: self.config.eval_limit] if self.config.eval_limit else test.images

    def compute_class_stats(self, train: ImageDataset) -> None:
        """Per-class latent statistics of the training set (see :mod:`core.stats.class_stats`),
        kept for the checkpoints saved from now on; unlabelled data is left without."""
        try:
            stats = compute_class_stats(
                self.model, train, self.config.class_stats_per_class or None, device=self.device
            )
        except ClassStatsError:
            return
        self.class_stats = stats.to_meta()

    @torch.no_grad()
    def write_samples(self, step: int) -> Path:
        """A PNG with two grids side by side: temperature 0.7 (left) and 1.0 (right)."""
        model = self.model
        model.eval()
        grids = []
        for t in (0.7, 1.0):
            g = torch.Generator().manual_seed(4321)
            x = model.sample(self.config.num_samples, temperature=t, generator=g)
            grids.append(make_grid(to_uint8(x.float().cpu().numpy())))
        model.train()
        gap = np.full((grids[0].shape[0], 8, grids[0].shape[2]), 255, dtype=np.uint8)
        return save_png(
            np.concatenate([grids[0], gap, grids[1]], axis=1),
            self.out / "samples" / f"samples_{step:07d}.png",
        )

    # -- checkpoints ------------------------------------------------------------------------

    def _save(self, name: str, step: int, epoch: int, optimizer, scheduler, noise, state) -> Path:
        meta = {
            "dataset": self.config.dataset,
            # Where the data came from, so `realnvp eval` finds the test set without help.
            "data_dir": os.path.abspath(self.config.data_dir),
            "step": step,
            "epoch": epoch,
            "test_bpd": state["last_test_bpd"],
            "best_test_bpd": state["best_test_bpd"],
            "images_seen": step * self.config.batch_size * self.dist.world,
            "wall_time_s": state["wall_time_s"],
            "device": describe(self.device),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if state.get("typicality") is not None:
            meta["typicality"] = state["typicality"]
        if self.class_stats is not None:
            meta[META_KEY] = self.class_stats
        training = {
            "train_config": self.config.to_dict(),
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "noise_rng": noise.get_state(),
            "torch_rng": torch.get_rng_state(),
            "nonfinite_total": state["nonfinite_total"],
            "history": state["history"],
            "best_test_bpd": state["best_test_bpd"],
            "last_test_bpd": state["last_test_bpd"],
            "wall_time_s": state["wall_time_s"],
        }
        path = save_checkpoint(self.out / name, self.model, meta, training)
        self.sink.emit("checkpoint", path=str(path), step=step, kind=name.removesuffix(".pt"))
        return path

    # -- the loop ---------------------------------------------------------------------------

    @property
    def stop_file(self) -> Path:
        """``OUT/STOP``: creating it stops the run as SIGTERM does (save, ``done``), on every
        platform and under ``torchrun``, where every rank then ends with status 0. A stale
        one is removed when the run starts and after it has stopped the run."""
        return self.out / STOP_FILE

    def run(self) -> dict[str, Any]:
        if self.dist.is_main:
            self.stop_file.unlink(missing_ok=True)
        try:
            with _StopFlag() as stop:
                return self._run(stop)
        except (DatasetError, TrainingError, ValueError, OSError) as exc:
            self.sink.emit("error", message=str(exc))
            raise
        finally:
            if self.dist.enabled and dist.is_initialized():
                dist.destroy_process_group()

    def _run(self, stop: _StopFlag) -> dict[str, Any]:
        c = self.config
        model = self.model
        train, test = self._load_data()
        images = self._resident(train.images)
        self.precision = self._choose_precision()
        self.channels_last = use_channels_last(self.device, self.precision.precision)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        steps_per_epoch = len(train) // (c.batch_size * self.dist.world)
        total_steps = c.max_steps if c.max_steps is not None else c.epochs * steps_per_epoch

        optimizer, fused = make_adam(model.parameters(), c.lr)
        warmup = max(c.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        noise = torch.Generator(device=self.device if self.cuda else "cpu")
        noise.manual_seed(c.seed * 7919 + self.dist.rank)
        state = {
            "history": {"steps": [], "evals": []},
            "best_test_bpd": None,
            "last_test_bpd": None,
            "nonfinite_total": 0,
            "wall_time_s": 0.0,
        }
        step = 0
        if self.resume_state is not None:
            rs = self.resume_state
            optimizer.load_state_dict(rs["optimizer"])
            _fix_loaded_adam(optimizer, fused)
            scheduler.load_state_dict(rs["scheduler"])
            if not self.dist.enabled:
                noise.set_state(rs["noise_rng"].to(noise.get_state().device))
            torch.set_rng_state(rs["torch_rng"])
            step = int(rs["step"])
            for key in (
                "history",
                "best_test_bpd",
                "last_test_bpd",
                "nonfinite_total",
                "wall_time_s",
            ):
                state[key] = rs.get(key, state[key])

        net: nn.Module = model
        if self.dist.enabled:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.cuda else None
            )
        eager_net = None
        if c.compile:
            try:
                net, eager_net = torch.compile(net), net
            except Exception as exc:  # a missing compiler must not stop training
                print(
                    f"warning: torch.compile unavailable ({exc}); running eagerly", file=sys.stderr
                )
        train_step = TrainStep(
            model,
            net,
            optimizer,
            fused,
            c.weight_norm_l2,
            c.grad_clip,
            self._autocast,
            eager_net,
            cuda_graph=c.cuda_graph and self.cuda and not self.dist.enabled,
        )

        self.sink.emit(
            "start",
            step=step,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            parameters=sum(p.numel() for p in model.parameters()),
            device=describe(self.device),
            precision=self.precision.precision,
            precision_reason=self.precision.reason,
            world_size=self.dist.world,
            out=str(self.out),
            model_config=model.config.to_dict(),
            train_config=c.to_dict(),
            train_images=len(train),
            test_images=len(test) if test is not None else None,
            skipped_files=train.skipped,
            resumed=self.resume_state is not None,
        )
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

        # The host looks at the device's counters only to log, before a checkpoint, and every
        # ``check_every`` steps for divergence; in a run of bad steps, every step.
        check_every = max(1, min(c.log_every, c.max_nonfinite))
        nonfinite_before = state["nonfinite_total"]
        bad_run = 0
        perm_epoch, perm = -1, None
        window_start, window_images = time.perf_counter(), 0
        run_start = time.perf_counter()
        wall_before = state["wall_time_s"]
        epoch = step // max(steps_per_epoch, 1)
        reason = "finished"

        while step < total_steps:
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                # Where the data lives, so picking a batch copies nothing from the host.
                perm = self._epoch_permutation(epoch, len(train)).to(images.device)
                perm_epoch = epoch
            x = self._batch(images, perm, pos, noise)
            train_step(x)
            scheduler.step()
            step += 1
            window_images += x.shape[0] * self.dist.world

            log = step % c.log_every == 0 or step == total_steps
            due = step % c.eval_every == 0 and step < total_steps
            if log or due or bad_run or step % check_every == 0:
                counts = train_step.read(reset_window=log)
                state["nonfinite_total"] = nonfinite_before + counts["nonfinite"]
                bad_run = counts["bad_run"]
                if bad_run >= c.max_nonfinite:
                    raise TrainingError(
                        f"training diverged: {bad_run} non-finite losses in a row at "
                        f"step {step}; the last good checkpoint in {self.out} is intact "
                        "(try a lower --lr)"
                    )
            if log:
                now = time.perf_counter()
                rate = window_images / max(now - window_start, 1e-9)
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": counts["loss"],
                    "images_per_s": rate,
                }
                state["history"]["steps"].append(record)
                self.sink.emit(
                    "step",
                    **record,
                    lr=scheduler.get_last_lr()[0],
                    total_steps=total_steps,
                    nonfinite=state["nonfinite_total"],
                )
                window_start, window_images = now, 0

            if self._should_stop(stop, step % check_every == 0):
                reason = "stopped"
                break
            # No checkpoint in the middle of a run of non-finite losses: the last good one
            # stays the newest on disk.
            if self.dist.is_main and due and bad_run == 0:
                state["wall_time_s"] = wall_before + time.perf_counter() - run_start
                self._evaluate_and_save(test, step, epoch, optimizer, scheduler, noise, state)

        state["nonfinite_total"] = nonfinite_before + train_step.read(False)["nonfinite"]
        state["wall_time_s"] = wall_before + time.perf_counter() - run_start
        if self.dist.enabled:
            # DDP copies rank 0's buffers into every rank before each forward, so rank 0's
            # batch-norm statistics are the run's; make every rank end with them.
            for b in model.buffers():
                dist.broadcast(b, 0)
        if self.dist.is_main:
            if reason == "finished":
                self._evaluate_and_save(
                    test,
                    step,
                    epoch,
                    optimizer,
                    scheduler,
                    noise,
                    state,
                    last=True,
                    final_train=train,
                )
            else:
                self._save("latest.pt", step, epoch, optimizer, scheduler, noise, state)
                self.stop_file.unlink(missing_ok=True)
        self.sink.emit(
            "done",
            step=step,
            reason=reason,
            test_bpd=state["last_test_bpd"],
            best_test_bpd=state["best_test_bpd"],
            checkpoint=str(self.out / "latest.pt"),
            nonfinite=state["nonfinite_total"],
            wall_time_s=state["wall_time_s"],
        )
        return {
            "step": step,
            "reason": reason,
            "test_bpd": state["last_test_bpd"],
            "best_test_bpd": state["best_test_bpd"],
        }

    def _typicality(self, test: ImageDataset, per_image: torch.Tensor) -> dict[str, Any] | None:
        """The typicality reference of the last evaluation (see :mod:`core.stats.typicality`);
        ``None`` when it covered too few images to be one."""
        images = self._eval_images(test)
        if len(per_image) < MIN_REFERENCE_IMAGES or not torch.isfinite(per_image).all():
            return None
        note = f"float32, {len(per_image)} test images, last evaluation of training"
        return TypicalityReference.from_scores(
            self.config.dataset, per_image.numpy(), images.cpu().numpy(), note=note
        ).to_meta()

    def _should_stop(self, stop: _StopFlag, check_now: bool) -> bool:
        """A signal, the stop file, or a closed event stream (the reader of ``--progress
        json`` went away) ends the run with a checkpoint."""
        if not self.dist.enabled:
            return stop.requested or self.sink.closed or self.stop_file.exists()
        if not check_now:  # agreeing across ranks is a synchronisation; not every step
            return False
        requested = stop.requested or self.sink.closed or self.stop_file.exists()
        flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _evaluate_and_save(
        self,
        test,
        step,
        epoch,
        optimizer,
        scheduler,
        noise,
        state,
        last: bool = False,
        final_train=None,
    ) -> None:
        """``last``: the run's last evaluation (typicality statistics); ``final_train``: the
        training set then, whose class statistics (labelled data) go into the checkpoints
        saved now."""
        per_image = self.evaluate_per_image(test)
        test_bpd = per_image.sum().item() / max(len(per_image), 1)
        if last:
            state["typicality"] = self._typicality(test, per_image)
        state["last_test_bpd"] = test_bpd
        state["history"]["evals"].append({"step": step, "test_bpd": test_bpd})
        self.sink.emit("eval", step=step, epoch=epoch, test_bpd=test_bpd)
        path = self.write_samples(step)
        self.sink.emit("samples", step=step, path=str(path), temperatures=[0.7, 1.0])
        if final_train is not None and final_train.labels is not None:
            self.compute_class_stats(final_train)
        improved = state["best_test_bpd"] is None or test_bpd < state["best_test_bpd"]
        if improved and math.isfinite(test_bpd):
            state["best_test_bpd"] = test_bpd
        self._save("latest.pt", step, epoch, optimizer, scheduler, noise, state)
        if improved:
            self._save("best.pt", step, epoch, optimizer, scheduler, noise, state)
