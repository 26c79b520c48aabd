"""The bijection contract and the small bijections of Real NVP.

Every invertible layer maps data to latent in ``forward`` and back in ``inverse``::

    z, logdet = layer(x)        # logdet: (B,), log |det dz/dx| per sample
    x = layer.inverse(z)

No ``reverse=`` flags and no accumulators: composition is the caller's job.

Every layer of Real NVP is also *per element*: its log-determinant is a sum of one term per
element of its output, and it moves elements only by permuting them. Two more methods say
so, for the likelihood map (:mod:`core.flow.likelihood`)::

    z, per_element = layer.forward_elementwise(x)   # per_element: z's shape, sums to logdet
    moved = layer.permute_elements(t)               # where each element of x ends up in z
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Bijection(nn.Module):
    """Base class: ``forward(x) -> (z, logdet)`` and ``inverse(z) -> x``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_elementwise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, per_element)``: ``per_element`` has ``z``'s shape and its sum over all but
        the batch dimension is ``forward``'s logdet. Element ``(c, i, j)`` of ``z``
        carries the term of the element of ``x`` that :meth:`permute_elements` moves there.
        """
        raise NotImplementedError(f"{type(self).__name__} has no per-element log-determinant")

    def permute_elements(self, t: Tensor) -> Tensor:
        """Move a tensor shaped like the input the way ``forward`` moves elements; the
        default is a layer that keeps every element in place."""
        return t


class Squeeze(Bijection):
    """Space-to-depth: ``(B, C, H, W) -> (B, 4C, H/2, W/2)``, volume preserving.

    Output channel ``4c + 2i + j`` holds input channel ``c`` at rows ``i::2`` and columns
    ``j::2`` (Dinh et al. 2017, section 3.6).
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs an even height and width, got {h}x{w}")
        z = x.reshape(b, c, h // 2, 2, w // 2, 2)  # (B, C, H/2, 2, W/2, 2)
        z = z.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return z, x.new_zeros(b)

    def forward_elementwise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, _ = self(x)
        return z, torch.zeros_like(z)

    def permute_elements(self, t: Tensor) -> Tensor:
        return self(t)[0]

    def inverse(self, z: Tensor) -> Tensor:
        b, c4, h, w = z.shape
        if c4 % 4:
            raise ValueError(f"Squeeze inverse needs channels divisible by 4, got {c4}")
        c = c4 // 4
        x = z.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # (B, C, H, 2, W, 2)
        return x.reshape(b, c, 2 * h, 2 * w)


class LogitTransform(Bijection):
    """Preprocessing ``y = logit(a + (1 - 2a) x)`` for ``x`` in ``[0, 1]``.

    Keeps the logit away from the infinities at 0 and 1. Its log-determinant
    ``sum log(1 - 2a) - log p - log(1 - p)`` with ``p = a + (1 - 2a) x`` is part of every
    likelihood. Always computed in float32 or wider, even under autocast.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, per_dim = self.forward_elementwise(x)
        return y, per_dim.flatten(1).sum(1)

    def forward_elementwise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1.0 - 2.0 * self.alpha) * x
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        return log_p - log_1mp, math.log(1.0 - 2.0 * self.alpha) - log_p - log_1mp

    def inverse(self, z: Tensor) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1.0 - 2.0 * self.alpha)


class BatchNormFlow(Bijection):
    """Batch normalization as a bijection, per channel (Dinh et al. 2017, section 3.7).

    ``y = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta``. In training the batch
    statistics are used (and treated as constants in the log-determinant, as in the paper)
    and the running averages updated; in eval the running averages are used, which makes
    the layer an exact per-sample bijection. The inverse exists only in eval mode.
    """

    def __init__(self, channels: int, momentum: float = 0.05, eps: float = 1e-4) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        dims = [0, 2, 3]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        return mean, var

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, per-channel log-scale (C,))``."""
        mean, var = self._stats(x)
        inv_std = torch.rsqrt(var + self.eps)
        scale = (inv_std * self.log_gamma.exp()).view(1, -1, 1, 1)
        y = (x - mean.view(1, -1, 1, 1)) * scale + self.beta.view(1, -1, 1, 1)
        return y, self.log_gamma - 0.5 * torch.log(var + self.eps)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, per_channel = self._forward(x)
        logdet = per_channel.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0]).to(x.dtype)

    def forward_elementwise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, per_channel = self._forward(x)
        return y, per_channel.to(y.dtype).view(1, -1, 1, 1).expand_as(y)

    def inverse(self, z: Tensor) -> Tensor:
        if self.training:
            raise RuntimeError(
                "BatchNormFlow.inverse is only valid in eval mode (it needs the running "
                "statistics); call model.eval() before decoding or sampling"
            )
        std = torch.sqrt(self.running_var + self.eps)
        scale = (std * torch.exp(-self.log_gamma)).view(1, -1, 1, 1)
        return (z - self.beta.view(1, -1, 1, 1)) * scale + self.running_mean.view(1, -1, 1, 1)


class Sequential(Bijection):
    """A chain of bijections; log-determinants add up."""

    def __init__(self, *layers: Bijection) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, logdet = layer(x)
            total = total + logdet
        return x, total

    def forward_elementwise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total = None
        for layer in self.layers:
            x, per_element = layer.forward_elementwise(x)
            total = per_element if total is None else layer.permute_elements(total) + per_element
        return x, total if total is not None else torch.zeros_like(x)

    def permute_elements(self, t: Tensor) -> Tensor:
        for layer in self.layers:
            t = layer.permute_elements(t)
        return t

    def inverse(self, z: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z
