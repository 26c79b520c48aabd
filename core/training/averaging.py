"""Averaged weights (Polyak averaging, an exponential moving average of the parameters) and
the batch-norm statistics that belong to them.

The trainer keeps the average beside the weights it optimizes. Evaluations, sample grids,
the choice of ``best.pt`` and the ``model`` section of every checkpoint it writes use the
averaged weights; the raw ones travel in the checkpoint's training state for resuming.

Batch normalization's running statistics are measured on activations of the *raw* weights,
so they do not fit the average: :func:`recompute_batch_norm` measures them again for the
averaged weights, as a cumulative average of the batch statistics over training batches, the
way the running averages arise in training but without their lag.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from core.flow.bijection import BatchNormFlow


class WeightAverage:
    """An exponential moving average of ``model``'s parameters (float32, on their device).

    The decay of the ``n``-th update is ``min(decay, (1 + n) / (10 + n))``: early in a run
    the average follows the weights closely (the first steps move them far), later it
    averages over about ``1 / (1 - decay)`` steps. ``decay`` 0 keeps the raw weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the averaging decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.names = [name for name, _ in model.named_parameters()]
        self.shadow = [p.detach().float().clone() for p in model.parameters()]

    def effective_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.effective_decay()
        params = [p.detach() for p in model.parameters()]
        if any(p.dtype != torch.float32 for p in params):
            params = [p.float() for p in params]
        torch._foreach_lerp_(self.shadow, params, 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged parameters into ``model`` (buffers untouched)."""
        for p, s in zip(model.parameters(), self.shadow, strict=True):
            p.copy_(s)
        return model

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "shadow": {n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadow)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if sorted(shadow) != sorted(self.names):
            raise ValueError("the averaged weights do not match this model's parameters")
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for i, name in enumerate(self.names):
            self.shadow[i].copy_(shadow[name])


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BatchNormFlow, nn.BatchNorm2d))]


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Measure every batch-norm layer's running statistics of ``model`` anew: the equal-weight
    average of the batch statistics over ``batches`` (dequantized training images), each
    layer seeing the activations that the layers before it produce in training mode. The
    model ends in eval mode; returns the number of images used."""
    layers = batch_norm_layers(model)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    model.train()
    seen = 0
    try:
        for i, x in enumerate(batches):
            for m in layers:
                # lerp by 1 / (i + 1): after k batches, the mean of their k statistics.
                m.momentum = 1.0 / (i + 1)
            model(x)
            seen += x.shape[0]
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
        model.eval()
    if seen == 0:
        raise ValueError("no batches to measure the batch-norm statistics on")
    return seen


def averaged_copy(
    model: nn.Module, average: WeightAverage, batches: Iterable[torch.Tensor]
) -> nn.Module:
    """A copy of ``model`` (contiguous memory format, eval mode) holding the averaged
    weights with batch-norm statistics measured for them on ``batches``."""
    copied = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    average.copy_to(copied)
    recompute_batch_norm(copied, batches)
    return copied
