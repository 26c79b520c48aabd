"""The s/t network of an affine coupling: a ResNet with weight and batch normalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WeightNormConv2d(nn.Module):
    """Convolution with weight normalization (Salimans & Kingma 2016).

    ``weight = g * v / ||v||`` with the norm taken per output channel; ``g`` is the scale
    that the paper's L2 penalty acts on (see :meth:`weight_norm_scales`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        v = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_normal_(v, nonlinearity="relu")
        self.v = nn.Parameter(v)
        self.g = nn.Parameter(v.flatten(1).norm(dim=1))  # start at the plain conv's norm
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def weight(self) -> Tensor:
        # Reduced in place: ``flatten`` of a channels_last ``v`` (a training step's layout)
        # would copy it first, forward and backward.
        norm = torch.linalg.vector_norm(self.v, dim=(1, 2, 3)).clamp_min(1e-12)  # (out,)
        return self.v * (self.g / norm).view(-1, 1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class ResidualBlock(nn.Module):
    """Pre-activation block: ``x + conv(relu(bn(conv(relu(bn(x))))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = WeightNormConv2d(channels, channels, 3)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = WeightNormConv2d(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        # ReLU in place: a normalization's output is a fresh tensor that nothing else holds
        # (batch norm saves its input for the backward pass, not its output), and the
        # allocation it saves costs more than the ReLU itself on the CPU.
        h = self.conv1(F.relu(self.bn1(x), inplace=True))
        h = self.conv2(F.relu(self.bn2(h), inplace=True))
        # The sum in place too (a convolution keeps its input, not its output), unless the
        # dtypes differ, where ``x + h`` would promote.
        return h.add_(x) if h.dtype == x.dtype else x + h


class STNetwork(nn.Module):
    """Maps the conditioning input to ``(raw_s, t)``, each with ``out_channels`` channels.

    The last convolution is zero-initialized, so a fresh coupling is the identity.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, num_blocks: int):
        super().__init__()
        self.in_conv = WeightNormConv2d(in_channels, mid_channels, 3)
        self.blocks = nn.Sequential(*(ResidualBlock(mid_channels) for _ in range(num_blocks)))
        self.out_bn = nn.BatchNorm2d(mid_channels)
        self.out_conv = nn.Conv2d(mid_channels, 2 * out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.blocks(self.in_conv(x))  # (B, mid, H, W)
        h = self.out_conv(F.relu(self.out_bn(h), inplace=True))  # (B, 2 * out, H, W)
        raw_s, t = h.chunk(2, dim=1)
        return raw_s, t


def weight_norm_scales(module: nn.Module) -> list[nn.Parameter]:
    """The ``g`` parameters of every weight-normalized convolution under ``module``."""
    return [m.g for m in module.modules() if isinstance(m, WeightNormConv2d)]
