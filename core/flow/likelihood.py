"""The likelihood map: where in an image, and at which scale, a flow spends its bits.

Every term of Real NVP's ``log p(x)`` is a per-element quantity, and squeeze only permutes
elements, so the bits/dim of an image split exactly:

* per latent level ``i``: the standard normal prior of that level's latent, and the
  log-determinant of the flow steps of the scale that factors it out (couplings and batch
  norms; the final scale is the last level);
* the preprocessing: the ``log 256`` of the discretization (``[0, 256)`` to ``[0, 1)``) and
  the logit's log-determinant;
* per pixel: every one of those per-element terms attributed to the input pixel its
  element came from.

**Attribution rule.** An element of any intermediate tensor is the image of exactly one
input element ``(c, i, j)``: couplings, batch norms and the logit change values in place,
squeeze moves values without mixing them, and factoring out splits the channels. Each term
is charged to the pixel its own element started at, found by pushing an index tensor
through the same squeezes and splits (:meth:`core.flow.bijection.Bijection.permute_elements`).
A coupling's log-scale ``s`` of an element is charged to that element (the one whose value
it scales), not to the kept elements that computed it; the batch norm's per-channel
``log gamma - log sqrt(var + eps)`` to each element of that channel; the prior
``-(z^2 + log 2 pi) / 2`` to the element ``z`` is; the preprocessing and ``log 256`` to
the pixel itself. The sum of the map is therefore exactly ``bits_per_dim * D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from core.flow.model import ENCODE_SEED, LOG_2PI, dequantize
from core.stats.typicality import TypicalityReference, Verdict, judge_pixels

if TYPE_CHECKING:
    from core.flow.model import RealNVP

LOG_256 = math.log(256.0)
LN_2 = math.log(2.0)


@dataclass(frozen=True)
class LikelihoodMap:
    """The exact breakdown of the bits/dim of a batch of ``B`` images (``L`` levels).

    ``bits_per_dim == prior_bits_per_dim.sum(1) + logdet_bits_per_dim.sum(1) +
    preprocess_bits_per_dim`` and ``pixel_bits.flatten(1).sum(1) == bits_per_dim * D``.
    """

    bits_per_dim: Tensor  # (B,)
    prior_bits_per_dim: Tensor  # (B, L) the latent's Gaussian prior, finest level first
    logdet_bits_per_dim: Tensor  # (B, L) the log-det of that level's scale, as bits/dim
    preprocess_bits_per_dim: Tensor  # (B,) discretization (8 bits) + logit log-det
    level_bits: Tensor  # (B, L, C, H, W) per pixel: prior + log-det of each level, in bits
    preprocess_bits: Tensor  # (B, C, H, W) per pixel: discretization + logit, in bits

    @property
    def pixel_bits(self) -> Tensor:
        """``(B, C, H, W)``: every term of each pixel, in bits; sums to ``bits_per_dim*D``."""
        return self.level_bits.sum(1) + self.preprocess_bits

    @property
    def num_levels(self) -> int:
        return self.prior_bits_per_dim.shape[1]

    def summary(self, index: int = 0) -> dict[str, Any]:
        """Plain floats for image ``index``: the figures ``realnvp encode --json`` prints."""
        prior = self.prior_bits_per_dim[index].double().tolist()
        logdet = self.logdet_bits_per_dim[index].double().tolist()
        return {
            "bits_per_dim": float(self.bits_per_dim[index]),
            "levels": [
                {
                    "level": i,
                    "prior_bits_per_dim": p,
                    "logdet_bits_per_dim": ld,
                    "bits_per_dim": p + ld,
                }
                for i, (p, ld) in enumerate(zip(prior, logdet))
            ],
            "preprocess_bits_per_dim": float(self.preprocess_bits_per_dim[index]),
        }


def _charge(target: Tensor, index: Tensor, nats: Tensor) -> None:
    """Add per-element ``nats`` (B, ...) to ``target`` (B, D) at the pixels ``index``."""
    target.index_add_(1, index.reshape(-1), nats.reshape(nats.shape[0], -1))


def likelihood_map(model: RealNVP, x: Tensor) -> LikelihoodMap:
    """The exact bits/dim breakdown of dequantized images ``x`` in ``[0, 1]`` (see the
    module docstring for the attribution rule). One pass of the flow, like ``log_prob``.

    >>> from core.flow.model import FlowConfig, RealNVP
    >>> model = RealNVP(FlowConfig(image_size=8, num_scales=2, mid_channels=4,
    ...                            num_blocks=1)).eval()
    >>> x = torch.rand(2, 1, 8, 8)
    >>> m = likelihood_map(model, x)
    >>> m.pixel_bits.shape, m.level_bits.shape
    (torch.Size([2, 1, 8, 8]), torch.Size([2, 2, 1, 8, 8]))
    >>> bpd = model._bits_per_dim_continuous(x)
    >>> bool(torch.allclose(m.pixel_bits.sum((1, 2, 3)) / 64, bpd, rtol=1e-5))
    True
    """
    model._check_images(x)
    b = x.shape[0]
    num_dims = model.config.num_dims
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    index = torch.arange(num_dims, device=x.device).view(1, *x.shape[1:])  # (1, C, H, W)

    h, logit_nats = model.preprocess.forward_elementwise(x)
    preprocess = (LOG_256 - logit_nats.to(acc_dtype)).reshape(b, -1)  # (B, D) nats

    level_nats: list[Tensor] = []  # each (B, D): prior + log-det charged to the pixels
    prior_sums: list[Tensor] = []
    logdet_sums: list[Tensor] = []

    def level(flow, h: Tensor, index: Tensor, factor_out: bool):
        h, logdet = flow.forward_elementwise(h)
        index = flow.permute_elements(index)
        logdet = logdet.to(acc_dtype)
        z, rest, z_index = h, None, index
        if factor_out:
            z, rest = h.chunk(2, dim=1)
        prior = -0.5 * (z.to(acc_dtype) ** 2 + LOG_2PI)
        # Prior and log-det are both log-density terms; the map is in bits spent, so minus.
        nats = torch.zeros(b, num_dims, dtype=acc_dtype, device=x.device)
        _charge(nats, index, -logdet)
        if factor_out:
            z_index, index = index.chunk(2, dim=1)
        _charge(nats, z_index, -prior)
        level_nats.append(nats)
        prior_sums.append(prior.flatten(1).sum(1))
        logdet_sums.append(logdet.flatten(1).sum(1))
        return rest, index

    for scale in model.scales:
        h, index = level(scale.flow, h, index, factor_out=True)
    level(model.final, h, index, factor_out=False)

    per_dim = num_dims * LN_2
    levels = torch.stack(level_nats, 1) / LN_2  # (B, L, D) bits
    shape = (b, *x.shape[1:])
    return LikelihoodMap(
        bits_per_dim=(levels.sum((1, 2)) + preprocess.sum(1) / LN_2) / num_dims,
        prior_bits_per_dim=-torch.stack(prior_sums, 1) / per_dim,
        logdet_bits_per_dim=-torch.stack(logdet_sums, 1) / per_dim,
        preprocess_bits_per_dim=preprocess.sum(1) / per_dim,
        level_bits=levels.view(b, -1, *x.shape[1:]),
        preprocess_bits=(preprocess / LN_2).view(shape),
    )


def likelihood_map_uint8(
    model: RealNVP, x_uint8: Tensor, generator: torch.Generator | None = None
) -> LikelihoodMap:
    """:func:`likelihood_map` of 8-bit images after the uniform dequantization
    :meth:`RealNVP.bits_per_dim` uses: the same ``generator`` seed gives the same total."""
    param = model._param()
    return likelihood_map(model, dequantize(x_uint8, generator, param.dtype).to(param.device))


@dataclass(frozen=True)
class ImageLikelihood:
    """One 8-bit image's bits: the breakdown, the maps (numpy) and the typicality verdict."""

    summary: dict[str, Any]  # the keys of ``realnvp encode --json`` (less ``path``)
    pixel_bits: np.ndarray  # (C, H, W) bits, sums to bits_per_dim * D
    level_bits: np.ndarray  # (L, C, H, W) bits of each level
    preprocess_bits: np.ndarray  # (C, H, W)
    verdict: Verdict


@torch.no_grad()
def encode_likelihood_map(
    model: RealNVP, pixels: np.ndarray, seed: int = ENCODE_SEED
) -> LikelihoodMap:
    """:func:`likelihood_map` of uint8 ``(N, C, H, W)`` images, each dequantized with the
    noise that ``seed`` gives one image alone (the same draw, not ``N`` draws in a row), so
    an image's figures do not depend on the images beside it."""
    x8 = torch.from_numpy(np.ascontiguousarray(pixels))  # (N, C, H, W)
    param = model._param()
    noise = torch.rand((1, *x8.shape[1:]), generator=torch.Generator().manual_seed(seed))
    # dequantize()'s arithmetic, with the one image's noise for every image.
    x = (x8.to(param.dtype) + noise.to(param.dtype)) / 256.0
    return likelihood_map(model, x.to(param.device))


def encode_bits_per_dim(model: RealNVP, pixels: np.ndarray, seed: int = ENCODE_SEED) -> np.ndarray:
    """Bits/dim of each uint8 ``(N, C, H, W)`` image, float64 ``(N,)``: the figure
    ``realnvp encode`` prints and the explorer shows for an image (the map's total with the
    encode seed's noise), to float rounding whatever images share the batch."""
    return encode_likelihood_map(model, pixels, seed).bits_per_dim.double().cpu().numpy()


@torch.no_grad()
def describe_image(
    model: RealNVP,
    pixels: np.ndarray,
    reference: TypicalityReference | None,
    seed: int = ENCODE_SEED,
) -> ImageLikelihood:
    """Likelihood map, per-level breakdown and verdict of a uint8 ``(C, H, W)`` image, with
    the dequantization noise of ``seed`` (the encode seed: the same bits/dim that
    ``realnvp encode`` and the explorer show). What the CLI and the explorer both call."""
    return describe_images(model, np.asarray(pixels)[None], reference, seed)[0]


@torch.no_grad()
def describe_images(
    model: RealNVP,
    pixels: np.ndarray,
    reference: TypicalityReference | None,
    seed: int = ENCODE_SEED,
) -> list[ImageLikelihood]:
    """:func:`describe_image` of each uint8 ``(N, C, H, W)`` image, in one pass of the flow.

    Every image gets the noise that ``seed`` gives one image alone (the same draw, not
    ``N`` draws in a row), so an image's figures do not depend on the images beside it:
    they equal :func:`describe_image`'s to float rounding (convolutions may sum in another
    order for another batch size)."""
    m = encode_likelihood_map(model, pixels, seed)
    pixel_bits = m.pixel_bits.double().cpu().numpy()
    level_bits = m.level_bits.double().cpu().numpy()
    preprocess_bits = m.preprocess_bits.double().cpu().numpy()
    described = []
    for i in range(len(pixels)):
        summary = m.summary(i)
        verdict = judge_pixels(reference, summary["bits_per_dim"], pixels[i])
        summary.update(verdict.to_dict())
        described.append(
            ImageLikelihood(
                summary=summary,
                pixel_bits=pixel_bits[i],
                level_bits=level_bits[i],
                preprocess_bits=preprocess_bits[i],
                verdict=verdict,
            )
        )
    return described
