"""Affine coupling layers and their masks (Dinh et al. 2017, section 3.3-3.4)."""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor, nn

from core.flow.bijection import Bijection
from core.flow.resnet import STNetwork


class MaskType(str, Enum):
    CHECKERBOARD = "checkerboard"
    CHANNEL = "channel"


def checkerboard_mask(
    height: int, width: int, parity: int, *, device=None, dtype=torch.float32
) -> Tensor:
    """``b[i, j] = 1`` where ``(i + j) % 2 == parity``; shape ``(1, 1, H, W)``."""
    i = torch.arange(height, device=device).view(-1, 1)
    j = torch.arange(width, device=device).view(1, -1)
    return ((i + j) % 2 == parity).to(dtype).view(1, 1, height, width)


def channel_mask(channels: int, parity: int, *, device=None, dtype=torch.float32) -> Tensor:
    """``b[c] = 1`` on the first half of the channels (parity 0) or the second (parity 1);
    shape ``(1, C, 1, 1)``."""
    if channels % 2:
        raise ValueError(f"a channel-wise mask needs an even channel count, got {channels}")
    first = torch.arange(channels, device=device) < channels // 2
    keep = first if parity == 0 else ~first
    return keep.to(dtype).view(1, channels, 1, 1)


class AffineCoupling(Bijection):
    """``y = b * x + (1 - b) * (x * exp(s) + t)`` with ``s, t = NN(b * x)``.

    ``s = scale * tanh(raw_s)`` with a learned per-channel ``scale``; log-determinant
    ``sum (1 - b) * s``. The checkerboard variant feeds the mask itself as an extra input
    channel so the network knows which zeros are masked; the channel-wise variant splits
    the channels, which is the same formula without computing on the masked half.

    The s/t network may run under bf16 autocast: its outputs are cast back to the input's
    dtype before ``exp`` and the log-determinant.
    """

    def __init__(
        self,
        channels: int,
        mid_channels: int,
        num_blocks: int,
        mask_type: MaskType | str,
        parity: int,
    ) -> None:
        super().__init__()
        self.mask_type = MaskType(mask_type)
        self.parity = parity
        self.channels = channels
        self._mask_cache: dict[tuple, Tensor] = {}
        if self.mask_type is MaskType.CHECKERBOARD:
            self.net = STNetwork(channels + 1, mid_channels, channels, num_blocks)
            self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        else:
            if channels % 2:
                raise ValueError(f"channel-wise coupling needs even channels, got {channels}")
            self.net = STNetwork(channels // 2, mid_channels, channels // 2, num_blocks)
            self.scale = nn.Parameter(torch.ones(1, channels // 2, 1, 1))

    def _s_t(self, conditioner: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        raw_s, t = self.net(conditioner)
        s = self.scale.to(dtype) * torch.tanh(raw_s.to(dtype))
        return s, t.to(dtype)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x.chunk(2, dim=1)
        return (first, second) if self.parity == 0 else (second, first)

    def _join(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat((kept, changed) if self.parity == 0 else (changed, kept), dim=1)

    def _mask(self, x: Tensor) -> Tensor:
        # Cached per geometry: rebuilding it costs a few small ops per call, which adds up
        # to a tenth of a one-image decode.
        key = (x.shape[2], x.shape[3], x.device, x.dtype)
        mask = self._mask_cache.get(key)
        if mask is None:
            mask = checkerboard_mask(key[0], key[1], self.parity, device=x.device, dtype=x.dtype)
            self._mask_cache[key] = mask
        return mask

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, s)``: ``s`` shaped like ``x`` (checkerboard, 0 where kept) or like the
        changed half (channel-wise)."""
        if self.mask_type is MaskType.CHECKERBOARD:
            b = self._mask(x)  # (1, 1, H, W)
            bx = x * b
            s, t = self._s_t(torch.cat((bx, b.expand(x.shape[0], 1, -1, -1)), 1), x.dtype)
            s = s * (1 - b)
            t = t * (1 - b)
            return bx + (1 - b) * (x * torch.exp(s) + t), s
        kept, changed = self._split(x)
        s, t = self._s_t(kept, x.dtype)
        return self._join(kept, changed * torch.exp(s) + t), s

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, s = self._forward(x)
        return y, s.flatten(1).sum(1)

    def forward_elementwise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The log-scale ``s`` of every changed element, 0 on the kept ones."""
        y, s = self._forward(x)
        if self.mask_type is MaskType.CHANNEL:
            s = self._join(torch.zeros_like(s), s)
        return y, s

    def inverse(self, z: Tensor) -> Tensor:
        if self.mask_type is MaskType.CHECKERBOARD:
            b = self._mask(z)
            bz = z * b
            s, t = self._s_t(torch.cat((bz, b.expand(z.shape[0], 1, -1, -1)), 1), z.dtype)
            return bz + (1 - b) * ((z - t) * torch.exp(-s))
        kept, changed = self._split(z)
        s, t = self._s_t(kept, z.dtype)
        return self._join(kept, (changed - t) * torch.exp(-s))
