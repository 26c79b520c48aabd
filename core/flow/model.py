"""The multi-scale Real NVP model (Dinh, Sohl-Dickstein, Bengio, ICLR 2017)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from core.config import PRESETS, FlowConfig, preset  # noqa: F401 (re-exported)
from core.flow.bijection import BatchNormFlow, Bijection, LogitTransform, Sequential, Squeeze
from core.flow.coupling import AffineCoupling, MaskType

if TYPE_CHECKING:
    from core.flow.likelihood import LikelihoodMap

LOG_2PI = math.log(2.0 * math.pi)


def _coupled(channels: int, mid: int, blocks: int, mask: MaskType, parity: int) -> list[Bijection]:
    return [AffineCoupling(channels, mid, blocks, mask, parity), BatchNormFlow(channels)]


class _Scale(nn.Module):
    """One scale: 3 checkerboard couplings, squeeze, 3 channel-wise couplings."""

    def __init__(self, channels: int, mid: int, blocks: int) -> None:
        super().__init__()
        layers: list[Bijection] = []
        for parity in (0, 1, 0):
            layers += _coupled(channels, mid, blocks, MaskType.CHECKERBOARD, parity)
        layers.append(Squeeze())
        for parity in (0, 1, 0):
            layers += _coupled(4 * channels, mid, blocks, MaskType.CHANNEL, parity)
        self.flow = Sequential(*layers)


class RealNVP(nn.Module):
    """Multi-scale Real NVP.

    Data to latent: ``x in [0, 1] -> logit -> scales`` where each scale but the last
    factors out half of its channels as one latent level. Level 0 is the finest (factored
    out first); the last level is the output of the final scale.

    >>> model = RealNVP(FlowConfig(in_channels=1, image_size=8, num_scales=2,
    ...                            mid_channels=4, num_blocks=1)).eval()
    >>> [tuple(s) for s in model.latent_shapes]
    [(2, 4, 4), (2, 4, 4)]
    >>> x = torch.rand(2, 1, 8, 8)
    >>> bool((model.decode(model.encode(x)) - x).abs().max() < 1e-4)
    True
    """

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        self.preprocess = LogitTransform(config.alpha)
        self.scales = nn.ModuleList()
        channels, size = config.in_channels, config.image_size
        shapes: list[tuple[int, int, int]] = []
        for i in range(config.num_scales - 1):
            self.scales.append(_Scale(channels, config.mid_channels * 2**i, config.num_blocks))
            channels, size = 4 * channels, size // 2
            shapes.append((channels // 2, size, size))
            channels //= 2
        final: list[Bijection] = []
        mid = config.mid_channels * 2 ** (config.num_scales - 1)
        for parity in (0, 1, 0, 1):
            final += _coupled(channels, mid, config.num_blocks, MaskType.CHECKERBOARD, parity)
        self.final = Sequential(*final)
        shapes.append((channels, size, size))
        self._latent_shapes = tuple(torch.Size(s) for s in shapes)

    # -- shapes and checks -------------------------------------------------------------

    @property
    def latent_shapes(self) -> tuple[torch.Size, ...]:
        """``(C, H, W)`` of each latent level, finest first."""
        return self._latent_shapes

    @property
    def num_levels(self) -> int:
        return len(self._latent_shapes)

    def _param(self) -> Tensor:
        return next(self.parameters())

    def _check_images(self, x: Tensor, what: str = "x") -> None:
        c, s = self.config.in_channels, self.config.image_size
        if not isinstance(x, Tensor):
            raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{what} must have shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        if x.shape[1] != c:
            raise ValueError(
                f"{what} has {x.shape[1]} channels; this model expects {c} "
                f"(shape (B, {c}, {s}, {s}))"
            )
        if x.shape[2] != s or x.shape[3] != s:
            raise ValueError(
                f"{what} is {x.shape[2]}x{x.shape[3]} pixels; this model expects {s}x{s}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{what} must be a floating point tensor in [0, 1], got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"{what} must lie in [0, 1], got values in [{x.min().item():.4g}, "
                f"{x.max().item():.4g}]"
            )

    def _check_latents(self, zs: Sequence[Tensor]) -> None:
        if len(zs) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} latent levels, got {len(zs)}")
        batch = zs[0].shape[0] if zs[0].dim() == 4 else None
        for i, (z, shape) in enumerate(zip(zs, self._latent_shapes)):
            if z.dim() != 4 or z.shape[1:] != shape or z.shape[0] != batch:
                raise ValueError(
                    f"latent level {i} must have shape (B, {', '.join(map(str, shape))}) with "
                    f"the same B at every level, got {tuple(z.shape)}"
                )
            if not torch.isfinite(z).all():
                raise ValueError(f"latent level {i} contains NaN or infinite values")

    # -- the flow ----------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Unchecked data-to-latent pass: ``(latents finest first, logdet (B,))``."""
        h, logdet = self.preprocess(x)
        zs: list[Tensor] = []
        for scale in self.scales:
            h, ld = scale.flow(h)
            logdet = logdet + ld
            z, h = h.chunk(2, dim=1)  # factor out half
            zs.append(z)
        h, ld = self.final(h)
        zs.append(h)
        return zs, logdet + ld

    def inverse_top(self, z_top: Tensor) -> Tensor:
        """Unchecked inverse of the final scale: the running tensor for the next level down."""
        return self.final.inverse(z_top)

    def inverse_level(self, level: int, z: Tensor, h: Tensor) -> Tensor:
        """Unchecked inverse of scale ``level``: joins its latent ``z`` with the running tensor
        ``h`` from the coarser levels. At level 0 the result is the image in logit space.

        ``decode`` is ``inverse_top`` followed by ``inverse_level`` from the second-coarsest
        level down to 0; a caller that keeps the intermediate tensors can redo only the
        levels at and below one that changed (the explorer's level cache).
        """
        return self.scales[level].flow.inverse(torch.cat((z, h), dim=1))

    def to_image(self, h: Tensor) -> Tensor:
        """Logit space to images in ``[0, 1]`` (clamped)."""
        return self.preprocess.inverse(h).clamp(0.0, 1.0)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Latents of images ``x`` in ``[0, 1]``, one per level, finest first."""
        self._check_images(x)
        return self(x)[0]

    def decode(self, zs: Sequence[Tensor]) -> Tensor:
        """Exact inverse of :meth:`encode`; images clamped to ``[0, 1]``."""
        self._check_latents(zs)
        h = self.inverse_top(zs[-1])
        for level in range(self.num_levels - 2, -1, -1):
            h = self.inverse_level(level, zs[level], h)
        return self.to_image(h)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density in nats per image of (dequantized) ``x`` in ``[0, 1]``; shape (B,)."""
        self._check_images(x)
        return self._log_prob(x)

    def _log_prob(self, x: Tensor) -> Tensor:
        zs, logdet = self(x)
        return gaussian_log_prob(zs) + logdet

    def bits_per_dim(self, x_uint8: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Bits per dimension of 8-bit images, after uniform dequantization, computed in the
        model's own dtype; shape (B,)."""
        x = dequantize(x_uint8, generator, self._param().dtype)
        self._check_images(x, "x_uint8")
        return self._bits_per_dim_continuous(x)

    def _bits_per_dim_continuous(self, x: Tensor) -> Tensor:
        return nats_to_bits_per_dim(self._log_prob(x), self.config.num_dims)

    def likelihood_map(self, x: Tensor) -> LikelihoodMap:
        """Exact bits/dim of images ``x`` in ``[0, 1]`` split per latent level, for the
        preprocessing, and per pixel; see :mod:`core.flow.likelihood` for the attribution rule."""
        from core.flow.likelihood import likelihood_map

        return likelihood_map(self, x)

    def likelihood_map_uint8(
        self, x_uint8: Tensor, generator: torch.Generator | None = None
    ) -> LikelihoodMap:
        """:meth:`likelihood_map` of 8-bit images after the dequantization of
        :meth:`bits_per_dim`; the same generator seed gives the same total."""
        from core.flow.likelihood import likelihood_map_uint8

        return likelihood_map_uint8(self, x_uint8, generator)

    def sample_latents(
        self,
        n: int,
        temperature: float | Sequence[float] = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """Gaussian latents scaled per level by ``temperature`` (a float or one per level)."""
        temps = self._temperatures(temperature)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        device = generator.device if generator is not None else self._param().device
        param = self._param()
        return [
            (torch.randn((n, *shape), generator=generator, device=device) * t).to(
                param.device, param.dtype
            )
            for shape, t in zip(self._latent_shapes, temps)
        ]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float | Sequence[float] = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``n`` images in ``[0, 1]``; the same generator seed gives the same images."""
        return self.decode(self.sample_latents(n, temperature, generator))

    def _temperatures(self, temperature: float | Sequence[float]) -> list[float]:
        if isinstance(temperature, (int, float)):
            temps = [float(temperature)] * self.num_levels
        else:
            temps = [float(t) for t in temperature]
            if len(temps) != self.num_levels:
                raise ValueError(
                    f"temperature needs one value per level ({self.num_levels}), got {len(temps)}"
                )
        for t in temps:
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"temperatures must be finite and non-negative, got {t}")
        return temps


def random_model(config: FlowConfig, seed: int = 0) -> RealNVP:
    """An untrained model, in eval mode on the CPU, with its weights moved slightly off the
    identity start (every coupling starts as one), so it maps like a flow and its samples
    show some structure: the explorer's untrained model and the benchmarks' stand-in."""
    generator = torch.Generator().manual_seed(seed)
    model = RealNVP(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return model.eval()


def gaussian_log_prob(zs: Sequence[Tensor]) -> Tensor:
    """Standard normal log density of the concatenated latents, per sample; shape (B,)."""
    return sum(
        -0.5 * (z.to(torch.promote_types(z.dtype, torch.float32)) ** 2 + LOG_2PI).flatten(1).sum(1)
        for z in zs
    )


def dequantize(
    x_uint8: Tensor, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(x + u) / 256`` with ``u ~ U[0, 1)``: 8-bit images to continuous ``[0, 1)`` in
    ``dtype``. The noise is drawn in float32 whatever ``dtype``, so a seed gives the same
    noise to a float32 and a float64 model."""
    if not isinstance(x_uint8, Tensor) or x_uint8.dtype != torch.uint8:
        got = x_uint8.dtype if isinstance(x_uint8, Tensor) else type(x_uint8).__name__
        raise ValueError(f"expected a uint8 tensor of 8-bit images, got {got}")
    device = generator.device if generator is not None else x_uint8.device
    noise = torch.rand(x_uint8.shape, generator=generator, device=device).to(x_uint8.device)
    return (x_uint8.to(dtype) + noise.to(dtype)) / 256.0


def pixel_centres(x_uint8: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(x + 0.5) / 256``: 8-bit images to the centres of their dequantization bins, a pure
    function of the pixels (what encoding a user's image uses)."""
    return (x_uint8.to(dtype) + 0.5) / 256.0


ENCODE_SEED = 0  # dequantization seed of the bits/dim shown for an encoded image
EVAL_SEED = 1234  # dequantization seed of every test bits/dim figure


@torch.no_grad()
def per_image_bits_per_dim(
    model: RealNVP,
    images: Tensor,
    device: torch.device | str | None = None,
    batch_size: int = 500,
    autocast=None,
) -> Tensor:
    """Bits/dim of each uint8 image (N, C, H, W), dequantized with :data:`EVAL_SEED`;
    float64 on the CPU, shape (N,).

    The one test-set evaluation: the trainer's evaluations, ``realnvp eval`` and the
    typicality reference all call it, so a checkpoint's recorded test bits/dim is
    reproduced exactly. ``autocast`` is an optional context manager factory (bf16 on CUDA).
    """
    param = model._param()
    device = device if device is not None else param.device
    generator = torch.Generator().manual_seed(EVAL_SEED)
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = dequantize(images[start : start + batch_size], generator, param.dtype).to(device)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out.append(model._bits_per_dim_continuous(x).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def mean_bits_per_dim(
    model: RealNVP,
    images: Tensor,
    device: torch.device | str | None = None,
    batch_size: int = 500,
    autocast=None,
) -> float:
    """Mean of :func:`per_image_bits_per_dim`."""
    per_image = per_image_bits_per_dim(model, images, device, batch_size, autocast)
    return per_image.sum().item() / max(images.shape[0], 1)


def nats_to_bits_per_dim(log_prob: Tensor, num_dims: int) -> Tensor:
    """``-(log p - D log 256) / (D ln 2)`` for ``log p`` of the ``[0, 1]``-scaled image."""
    return -(log_prob - num_dims * math.log(256.0)) / (num_dims * math.log(2.0))
