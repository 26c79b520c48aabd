"""One training step: autocast and memory format by precision, Adam (fused where it can be),
a NaN guard that leaves weights and batch-norm statistics alone, and CUDA graphs of the
step. The trainer and the benchmarks run the same step."""

from __future__ import annotations

import contextlib
import copy
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from core.flow.model import (
    RealNVP,
    gaussian_log_prob,
    nats_to_bits_per_dim,
)
from core.flow.resnet import weight_norm_scales
from core.training.precision import interleaved_ms

if TYPE_CHECKING:  # the recipe's fields only; the trainer imports this module
    from core.training.trainer import TrainConfig


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
    """Whether a step runs channels_last: on CUDA and on the CPU, in either precision. On the
    CPU oneDNN's bf16 convolutions want it (7x faster than NCHW where bf16 is emulated; a
    3x3, 64 channels at 16x16), and float32 steps gain too (docs/performance.md, section 4).
    Under DDP with gloo the gradients keep the parameters' strides and the losses match one
    process (``tests/test_train.py::test_torchrun_channels_last_steps_match_one_process``).
    ``precision`` stays in the signature for devices where the answer may depend on it."""
    del precision
    return device.type in ("cuda", "cpu")


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` in place in channels_last, as a step runs it, except the parameters whose
    height and width are 1 (the couplings' per-channel ``scale``, ``(1, C, 1, 1)``): for
    them the two layouts differ only in strides that no kernel reads, and their gradients
    come back contiguous, so under DDP a channels_last copy made every step warn that the
    gradient's strides do not match its bucket's (and copy)."""
    model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4 and p.shape[2:] == (1, 1):
                p.data = p.data.clone(memory_format=torch.contiguous_format)
    return model


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
        to_channels_last(model)
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


def fix_loaded_adam(optimizer: torch.optim.Adam, fused: bool) -> None:
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
