"""Complete the erased part of an image: samples of ``p(masked | observed)`` from the flow.

The flow is a bijection between images (in its logit space ``y = logit(a + (1 - 2a) x)``)
and latents ``z`` with the exact density ``N(z; 0, T^2 I)`` at temperature ``T`` (``T = 1``:
the model itself; ``T < 1``: the images the explorer draws at that temperature). A
completion is an image of that model whose observed pixels are the given ones: a sample of
the masked pixels given the observed ones, never a search for the most likely fill.

**Why not gradient ascent.** The likelihood's maximum is not a typical image: flat, empty
images are the most likely under an MNIST flow (an all-black image scores about 0.27
bits/dim, a test digit about 1.35), so climbing ``log p`` fills a hole with black. A sample
carries ink as the data does.

**The sampler: annealed Langevin dynamics in latent space.** In pixel space the conditional
is badly conditioned (a background pixel is pinned to a hair's width, a stroke pixel is free
across the range); the flow whitens the data, so in latent space the prior is the isotropic
``N(0, T^2 I)``. Each chain starts from that prior (noise at the user's temperature) and
follows Langevin dynamics on the energy::

    U(z) = |z|^2 / (2 T^2) + |(decode(z) - y_obs) * observed|^2 / (2 sigma^2)

the exact log-prior of the latents plus a Gaussian tie of the decoded observed pixels to
the given ones. ``sigma`` is annealed from loose to tight (``SIGMA_START`` to ``SIGMA_END``
logit units; a pixel's logit spans about 6), so the chain first settles into a digit that
roughly fits and is then held to the observed pixels while the prior keeps it a typical
image of the model; the noise keeps the chains apart, so different seeds give different
completions. Each step is ``z <- z - eta M grad U + sqrt(2 eta M) xi`` with a diagonal
preconditioner ``M`` from the running RMS of the gradients (pSGLD, Li et al. 2016) and the
step ``eta`` annealed down; the dynamics are unadjusted (no Metropolis test: measured, a
MALA test at the same cost let the chains barely move, since the tightening tie makes the
target stiff). At the end the observed pixels are copied back bit for bit and the masked
ones come from ``decode(z)``.

>>> from core.flow.model import FlowConfig, random_model
>>> model = random_model(FlowConfig(image_size=8, num_scales=2, mid_channels=4, num_blocks=1))
>>> pixels = np.zeros((1, 8, 8), np.uint8); mask = np.zeros((8, 8), bool); mask[4:] = True
>>> done = complete_image(model, pixels, mask, samples=2, seed=0, steps=4)
>>> done.images.shape, bool((done.images[:, :, :4] == 0).all())
((2, 1, 8, 8), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.files.images import to_uint8
from core.flow.likelihood import encode_bits_per_dim
from core.flow.model import RealNVP, nats_to_bits_per_dim, pixel_centres

DEFAULT_SAMPLES = 6
DEFAULT_TEMPERATURE = 0.7
DEFAULT_STEPS = 100
DEFAULT_STEP_SIZE = 0.1  # eta at the start: the preconditioned step moves z by about this
SIGMA_START = 1.0  # logit units: the observed pixels' tie, loose ...
SIGMA_END = 0.1  # ... to tight (a pixel's logit spans about 6 units)


class CompletionError(ValueError):
    """Input a completion cannot use (mask, image, settings); the message is one sentence
    for the user."""


@dataclass(frozen=True, eq=False)
class Completion:
    """The completions of one call: ``images`` uint8 ``(N, C, H, W)`` and their bits/dim,
    float64 ``(N,)``: the model at temperature 1, measured as ``realnvp encode`` and the
    explorer measure any image (:func:`core.flow.likelihood.encode_bits_per_dim`), so a
    completion put on the Draw canvas reads the same figure there."""

    images: np.ndarray
    bits_per_dim: np.ndarray


ProgressFn = Callable[[int, int], None]


def check_mask(mask: np.ndarray, channels: int, size: int) -> np.ndarray:
    """``mask`` (``(H, W)``, ``(1, H, W)`` or ``(C, H, W)``; non-zero in any channel = to
    complete) as a bool ``(C, H, W)`` array. Raises :class:`CompletionError` for a wrong
    size or a mask that covers nothing or everything."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] in (1, channels):
        mask = mask.any(axis=0)  # a pixel is completed in all its channels
    if mask.ndim != 2 or mask.shape != (size, size):
        got = "x".join(str(v) for v in mask.shape[-2:][::-1]) if mask.ndim >= 2 else "not"
        raise CompletionError(f"the mask is {got} pixels but the model's images are {size}x{size}")
    mask = np.broadcast_to(mask.astype(bool)[None], (channels, size, size))
    if not mask.any():
        raise CompletionError("the mask marks no pixel to complete (white marks what to fill)")
    if mask.all():
        raise CompletionError(
            "the mask covers the whole image, so there is nothing to complete it from "
            "(black marks the pixels to keep)"
        )
    return np.ascontiguousarray(mask)


def _decode_to_logit(model: RealNVP, zs: list[Tensor]) -> Tensor:
    h = model.inverse_top(zs[-1])
    for level in range(model.num_levels - 2, -1, -1):
        h = model.inverse_level(level, zs[level], h)
    return h


def _split(flat: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    sizes = [math.prod(s) for s in shapes]
    return [part.reshape(-1, *s) for part, s in zip(flat.split(sizes, dim=1), shapes)]


def completion_steps(
    model: RealNVP,
    pixels: np.ndarray,
    masks: np.ndarray,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    step_size: float = DEFAULT_STEP_SIZE,
    sigma_end: float = SIGMA_END,
) -> Iterator[int | Completion]:
    """The sampler as a generator: yields the number of steps done after each step, then
    the :class:`Completion` (one image per chain). ``pixels`` uint8 ``(N, C, H, W)``,
    ``masks`` bool ``(N, C, H, W)`` (True = complete). The same seed gives the same
    completions. Runs on the model's device in float32; the model is not changed.
    Stopping the generator early (``close()``) is how a caller cancels."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise CompletionError(f"the temperature must be a positive number, got {temperature}")
    if steps < 1:
        raise CompletionError(f"the number of steps must be at least 1, got {steps}")
    if not (math.isfinite(step_size) and step_size > 0 and 0 < sigma_end <= SIGMA_START):
        raise CompletionError("the step size and the final tie must be positive")
    model.eval()
    device = next(model.parameters()).device
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    masks = np.ascontiguousarray(masks, dtype=bool)
    n = pixels.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    observed = torch.from_numpy(~masks).to(device, torch.float32)  # (N, C, H, W)
    with torch.no_grad():
        x_obs = pixel_centres(torch.from_numpy(pixels).to(device))
        y_obs, _ = model.preprocess.forward_elementwise(x_obs)  # (N, C, H, W) logit space
    shapes = [tuple(int(v) for v in s) for s in model.latent_shapes]
    dims = sum(math.prod(s) for s in shapes)
    t2 = float(temperature) ** 2
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # gradients for the latents only
    try:
        z = torch.randn((n, dims), generator=generator).to(device) * float(temperature)
        mean_square: Tensor | None = None
        for i in range(steps):
            frac = (i + 1) / steps
            # The tie tightens over the first two thirds, then holds at SIGMA_END.
            sigma = SIGMA_START * (sigma_end / SIGMA_START) ** min(1.0, 1.5 * frac)
            with torch.enable_grad():
                q = z.detach().requires_grad_(True)
                y = _decode_to_logit(model, _split(q, shapes))
                misfit = (((y - y_obs) * observed) ** 2).flatten(1).sum(1)
                energy = (q**2).sum(1) / (2.0 * t2) + misfit / (2.0 * sigma**2)
                (grad,) = torch.autograd.grad(energy.sum(), q)
            square = grad**2
            mean_square = square if mean_square is None else 0.95 * mean_square + 0.05 * square
            precond = 1.0 / (mean_square.sqrt() + 1e-3)
            eta = step_size * (1.0 - 0.8 * frac)
            noise = torch.randn((n, dims), generator=generator).to(device)
            z = (z - eta * precond * grad + torch.sqrt(2.0 * eta * precond) * noise).detach()
            yield i + 1
        with torch.no_grad():
            x = model.to_image(_decode_to_logit(model, _split(z, shapes)))
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    images = np.where(masks, to_uint8(x.float().cpu().numpy()), pixels).astype(np.uint8)
    yield Completion(images=images, bits_per_dim=encode_bits_per_dim(model, images))


def complete(
    model: RealNVP,
    pixels: np.ndarray,
    masks: np.ndarray,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    step_size: float = DEFAULT_STEP_SIZE,
    progress: ProgressFn | None = None,
    sigma_end: float = SIGMA_END,
) -> Completion:
    """:func:`completion_steps` run to the end; ``progress(done, total)`` after each step."""
    sampler = completion_steps(
        model,
        pixels,
        masks,
        temperature=temperature,
        seed=seed,
        steps=steps,
        step_size=step_size,
        sigma_end=sigma_end,
    )
    for item in sampler:
        if isinstance(item, Completion):
            return item
        if progress is not None:
            progress(item, steps)
    raise AssertionError("the sampler ended without its completions")


def bits_per_dim_at_centres(model: RealNVP, images: np.ndarray) -> np.ndarray:
    """Bits/dim of uint8 images at their pixel centres (no dequantization noise), float64."""
    param = next(model.parameters())
    with torch.no_grad():
        x = pixel_centres(torch.from_numpy(np.ascontiguousarray(images)).to(param.device))
        lp = model.log_prob(x.to(param.dtype))
        return nats_to_bits_per_dim(lp, model.config.num_dims).double().cpu().numpy()


def complete_image(
    model: RealNVP,
    pixels: np.ndarray,
    mask: np.ndarray,
    samples: int = DEFAULT_SAMPLES,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    progress: ProgressFn | None = None,
) -> Completion:
    """``samples`` completions of one uint8 ``(C, H, W)`` image where ``mask`` is set
    (see :func:`check_mask`), each chain started from its own noise."""
    chains = image_chains(model, pixels, mask, samples)
    return complete(model, *chains, temperature, seed, steps, progress=progress)


def image_chains(
    model: RealNVP, pixels: np.ndarray, mask: np.ndarray, samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(pixels, masks)`` batch of ``samples`` chains for one image, checked: a
    :class:`CompletionError` for a wrong image, mask or count."""
    c, s = model.config.in_channels, model.config.image_size
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.shape != (c, s, s):
        raise CompletionError(
            f"the image must be uint8 pixels of shape {(c, s, s)}, got {pixels.dtype} "
            f"{pixels.shape}"
        )
    if not isinstance(samples, int) or samples < 1:
        raise CompletionError(f"the number of samples must be at least 1, got {samples}")
    mask = check_mask(mask, c, s)
    return np.repeat(pixels[None], samples, 0), np.repeat(mask[None], samples, 0)
