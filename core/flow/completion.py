"""Complete the erased part of an image: samples of ``p(masked | observed)`` from the flow.

The model defines an exact density on its logit space ``y = logit(a + (1 - 2a) x)``:
``log p_T(y) = log N(g(y); 0, T^2 I) + log |det dg/dy|`` where ``g`` is the flow after the
preprocessing and ``T`` the temperature (``T = 1``: the model itself; ``T < 1``: the density
of the images the explorer draws at that temperature, ``decode(T * eps)``). A completion is
a sample of the masked pixels from that density with the observed pixels held fixed.

**Why not gradient ascent.** The likelihood's maximum is not a typical image: flat, empty
images are the most likely under an MNIST flow (an all-black image scores about 0.27
bits/dim, a test digit about 1.35), so climbing ``log p`` fills a hole with black. A sample
carries ink as the data does.

**The sampler: two Metropolis-adjusted Langevin (MALA) stages, batched over chains.**

1. *Latent stage.* ``p_T(y | y_obs)`` is badly conditioned in pixel space (a background
   pixel is pinned to a hair's width, a stroke pixel is free across the range), but the flow
   whitens the data: in latent space the prior is ``N(0, T^2 I)``. Chains start from that
   prior (noise at the user's temperature) and run MALA on
   ``|z|^2 / 2T^2 + |(decode(z) - y_obs) * observed|^2 / 2 sigma^2`` with ``sigma``
   annealed from loose to tight, so the decoded image comes to agree with the observed
   pixels while the prior keeps it a typical image of the model: this finds the digit's
   shape.
2. *Pixel stage.* The observed pixels are then clamped exactly and MALA runs on the masked
   logit pixels alone, on the exact ``log p_T(y)`` (one forward pass and its gradient a
   step). Its Metropolis test makes ``p_T(y_masked | y_obs)`` its stationary distribution,
   whatever the first stage's bias (a soft constraint samples the latent manifold with the
   wrong Jacobian weight); the first stage only gives it a good start.

Step sizes adapt per chain towards MALA's optimal acceptance (about 0.57) during the first
part of each stage and are frozen after. Images come back as ``uint8``: the masked pixels
from the last state, the observed ones copied from the input bit for bit.

>>> from core.flow.model import FlowConfig, random_model
>>> model = random_model(FlowConfig(image_size=8, num_scales=2, mid_channels=4, num_blocks=1))
>>> pixels = np.zeros((1, 8, 8), np.uint8); mask = np.zeros((8, 8), bool); mask[4:] = True
>>> done = complete_image(model, pixels, mask, samples=2, seed=0, latent_steps=4, pixel_steps=4)
>>> done.images.shape, bool((done.images[:, :, :4] == 0).all())
((2, 1, 8, 8), True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.files.images import to_uint8
from core.flow.model import RealNVP, nats_to_bits_per_dim, pixel_centres

TARGET_ACCEPTANCE = 0.57  # MALA's optimal acceptance rate (Roberts & Rosenthal 1998)
DEFAULT_SAMPLES = 6
DEFAULT_TEMPERATURE = 0.7
DEFAULT_LATENT_STEPS = 160
DEFAULT_PIXEL_STEPS = 60
SIGMA_START = 1.0  # logit units: the observed pixels' soft constraint, loose ...
SIGMA_END = 0.05  # ... to tight (a pixel's logit spans about 6 units)


class CompletionError(ValueError):
    """Input a completion cannot use (mask, image, settings); the message is one sentence
    for the user."""


class CompletionCancelled(Exception):
    """Raised inside :func:`complete` when ``should_stop`` says so."""


@dataclass(frozen=True, eq=False)
class Completion:
    """The completions of one call: ``images`` uint8 ``(N, C, H, W)``, their bits/dim (the
    model at temperature 1, dequantized at the pixel centres, as the explorer's encode
    shows), and each chain's acceptance rate in the pixel stage."""

    images: np.ndarray
    bits_per_dim: np.ndarray
    acceptance: np.ndarray


ProgressFn = Callable[[int, int], None]


def check_mask(mask: np.ndarray, channels: int, size: int) -> np.ndarray:
    """``mask`` (``(H, W)``, ``(1, H, W)`` or ``(C, H, W)``; non-zero = to complete) as a
    bool ``(C, H, W)`` array. Raises :class:`CompletionError` for a wrong size or a mask
    that covers nothing or everything."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] in (1, channels):
        mask = mask.any(axis=0) if mask.shape[0] != channels else mask
    if mask.ndim == 2:
        mask = np.broadcast_to(mask[None], (channels, *mask.shape))
    if mask.ndim != 3 or mask.shape[1:] != (size, size) or mask.shape[0] != channels:
        got = "x".join(str(v) for v in mask.shape[-2:]) if mask.ndim >= 2 else str(mask.shape)
        raise CompletionError(f"the mask is {got} pixels but the model's images are {size}x{size}")
    mask = mask.astype(bool)
    if not mask.any():
        raise CompletionError("the mask marks no pixel to complete (white marks what to fill)")
    if mask.all():
        raise CompletionError(
            "the mask covers the whole image, so there is nothing to complete it from "
            "(black marks the pixels to keep)"
        )
    return np.ascontiguousarray(mask)


def _flow_from_logit(model: RealNVP, y: Tensor) -> tuple[list[Tensor], Tensor]:
    """``model.forward`` without the preprocessing: latents and log-det of logit images."""
    zs: list[Tensor] = []
    logdet = torch.zeros(y.shape[0], device=y.device, dtype=y.dtype)
    h = y
    for scale in model.scales:
        h, ld = scale.flow(h)
        logdet = logdet + ld
        z, h = h.chunk(2, dim=1)
        zs.append(z)
    h, ld = model.final(h)
    zs.append(h)
    return zs, logdet + ld


def _decode_to_logit(model: RealNVP, zs: list[Tensor]) -> Tensor:
    h = model.inverse_top(zs[-1])
    for level in range(model.num_levels - 2, -1, -1):
        h = model.inverse_level(level, zs[level], h)
    return h


def _split(flat: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    sizes = [math.prod(s) for s in shapes]
    return [part.reshape(-1, *s) for part, s in zip(flat.split(sizes, dim=1), shapes)]


class _Mala:
    """Preconditioned MALA on a batch of chains ``q (N, D)`` with energy ``U`` (minus log
    density) and its gradient. Each chain has a step size and a diagonal preconditioner
    ``M`` (from the running RMS of its gradients, as RMSprop; mean 1), both adapted while
    ``adapt`` is on and frozen after, so the frozen sampler leaves the target invariant."""

    def __init__(self, energy: Callable[[Tensor], tuple[Tensor, Tensor]], q: Tensor, step: Tensor):
        self.energy = energy
        self.q = q
        self.step = step  # (N,)
        self.u, self.grad = energy(q)
        self.mean_square = self.grad**2
        self.precond = torch.ones_like(q)
        self.accepted = torch.zeros_like(step)
        self.steps = 0

    def refresh(self) -> None:
        """Recompute energy and gradient at the current state (the energy changed)."""
        self.u, self.grad = self.energy(self.q)

    def run(self, generator: torch.Generator, adapt: bool, active: Tensor | None = None) -> None:
        if adapt:
            self.mean_square = 0.9 * self.mean_square + 0.1 * self.grad**2
            m = 1.0 / (self.mean_square.sqrt() + 1e-6)
            if active is not None:
                m = m * active
                scale = m.sum(1, keepdim=True) / active.sum(1, keepdim=True)
            else:
                scale = m.mean(1, keepdim=True)
            self.precond = m / scale
        q, u, g, m = self.q, self.u, self.grad, self.precond
        eps = self.step[:, None]
        noise = torch.randn(q.shape, generator=generator, dtype=q.dtype).to(q.device)
        proposal = q - eps * m * g + torch.sqrt(2.0 * eps * m) * noise
        u_new, g_new = self.energy(proposal)
        inv_m = torch.where(m > 0, 1.0 / m.clamp_min(1e-30), torch.zeros_like(m))
        forward = ((proposal - q + eps * m * g) ** 2 * inv_m).sum(1) / (4.0 * self.step)
        backward = ((q - proposal + eps * m * g_new) ** 2 * inv_m).sum(1) / (4.0 * self.step)
        log_accept = -(u_new - u) - backward + forward
        log_accept = torch.nan_to_num(log_accept, nan=-math.inf)
        uniform = torch.rand(q.shape[0], generator=generator, dtype=q.dtype).to(q.device)
        accept = torch.log(uniform) < log_accept
        keep = accept[:, None]
        self.q = torch.where(keep, proposal, q)
        self.u = torch.where(accept, u_new, u)
        self.grad = torch.where(keep, g_new, g)
        self.accepted += accept.to(q.dtype)
        self.steps += 1
        if adapt:
            rate = torch.exp(0.3 * (accept.to(q.dtype) - TARGET_ACCEPTANCE))
            self.step = self.step * rate


def complete(
    model: RealNVP,
    pixels: np.ndarray,
    masks: np.ndarray,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    latent_steps: int = DEFAULT_LATENT_STEPS,
    pixel_steps: int = DEFAULT_PIXEL_STEPS,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Completion:
    """One completion per chain: ``pixels`` uint8 ``(N, C, H, W)``, ``masks`` bool
    ``(N, C, H, W)`` (True = complete). The same seed gives the same completions. Runs on
    the model's device in float32 with gradients; the model is not changed.
    ``progress(done, total)`` is called after each step; ``should_stop()`` is checked
    between steps and ends the call with :class:`CompletionCancelled`."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise CompletionError(f"the temperature must be a positive number, got {temperature}")
    if latent_steps < 0 or pixel_steps < 0:
        raise CompletionError("the numbers of steps cannot be negative")
    model.eval()
    param = next(model.parameters())
    device = param.device
    pixels = np.ascontiguousarray(pixels)
    n = pixels.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    x8 = torch.from_numpy(pixels).to(device)
    masked = torch.from_numpy(np.ascontiguousarray(masks)).to(device).to(torch.float32)
    observed = 1.0 - masked
    with torch.no_grad():
        y_obs, _ = model.preprocess.forward_elementwise(pixel_centres(x8))  # (N, C, H, W)
    shapes = [tuple(int(v) for v in s) for s in model.latent_shapes]
    t2 = float(temperature) ** 2
    total = latent_steps + pixel_steps
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        if should_stop is not None and should_stop():
            raise CompletionCancelled

    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            # -- latent stage: the prior keeps it a model image, sigma pulls it to the data
            sigma = torch.full((n,), SIGMA_START, device=device)

            def latent_energy(q: Tensor) -> tuple[Tensor, Tensor]:
                q = q.detach().requires_grad_(True)
                y = _decode_to_logit(model, _split(q, shapes))
                misfit = (((y - y_obs) * observed) ** 2).flatten(1).sum(1)
                u = (q**2).sum(1) / (2.0 * t2) + misfit / (2.0 * sigma**2)
                (grad,) = torch.autograd.grad(u.sum(), q)
                return u.detach(), grad

            dims = sum(math.prod(s) for s in shapes)
            z0 = torch.randn((n, dims), generator=generator).to(device) * float(temperature)
            if os.environ.get("MODE", "sgld") == "sgld":
                z = z0
                lr = float(os.environ.get("LR", "0.01"))
                v = None
                for i in range(latent_steps):
                    frac = (i + 1) / max(latent_steps, 1)
                    sigma = torch.full(
                        (n,), SIGMA_START * (SIGMA_END / SIGMA_START) ** min(1.0, 1.5 * frac),
                        device=device,
                    )
                    _u, g = latent_energy(z)
                    v = g**2 if v is None else 0.95 * v + 0.05 * g**2
                    m = 1.0 / (v.sqrt() + 1e-3)
                    eta = lr * (1.0 - 0.8 * frac)
                    noise = torch.randn((n, dims), generator=generator).to(device)
                    z = (z - eta * m * g + torch.sqrt(2 * eta * m) * noise).detach()
                    tick()
                with torch.no_grad():
                    y_start = _decode_to_logit(model, _split(z, shapes))
            else:
              chain = _Mala(latent_energy, z0, torch.full((n,), float(os.environ.get("LSTEP", "1e-3")), device=device))
              for i in range(latent_steps):
                frac = (i + 1) / max(latent_steps, 1)
                sigma = torch.full(
                    (n,), SIGMA_START * (SIGMA_END / SIGMA_START) ** min(1.0, 1.5 * frac),
                    device=device,
                )
                chain.refresh()
                chain.run(generator, adapt=True)
                tick()
              with torch.no_grad():
                y_start = _decode_to_logit(model, _split(chain.q, shapes))
            if os.environ.get("DBG"):
                mis = ((((y_start - y_obs) * observed) ** 2).flatten(1).sum(1) / observed.flatten(1).sum(1)).sqrt()
                print("misfit rms", mis.mean().item())
            # -- pixel stage: observed pixels clamped, exact density of the masked ones
            flat_mask = masked.flatten(1)

            def pixel_energy(q: Tensor) -> tuple[Tensor, Tensor]:
                q = q.detach().requires_grad_(True)
                y = torch.where(flat_mask > 0, q, y_obs.flatten(1)).reshape(y_obs.shape)
                zs, logdet = _flow_from_logit(model, y)
                prior = sum((z**2).flatten(1).sum(1) for z in zs) / (2.0 * t2)
                u = prior - logdet
                (grad,) = torch.autograd.grad(u.sum(), q)
                return u.detach(), grad * flat_mask

            y0 = torch.where(masked > 0, y_start, y_obs).flatten(1)
            chain = _Mala(pixel_energy, y0, torch.full((n,), float(os.environ.get("PSTEP", "1e-5")), device=device))
            for i in range(pixel_steps):
                chain.run(generator, adapt=i < pixel_steps // 2, active=flat_mask)
                tick()
            if os.environ.get("DBG"):
                print("pixel step", chain.step.mean().item())
            acceptance = (chain.accepted / max(chain.steps, 1)).cpu().numpy()
            y_final = chain.q.detach().reshape(y_obs.shape)
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    with torch.no_grad():
        x = model.to_image(y_final)
        images = to_uint8(x.float().cpu().numpy())
        images = np.where(masks, images, pixels).astype(np.uint8)
        bits = bits_per_dim_at_centres(model, images)
    return Completion(images=images, bits_per_dim=bits, acceptance=acceptance)


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
    latent_steps: int = DEFAULT_LATENT_STEPS,
    pixel_steps: int = DEFAULT_PIXEL_STEPS,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Completion:
    """``samples`` completions of one uint8 ``(C, H, W)`` image where ``mask`` is set
    (see :func:`check_mask`), each chain started from its own noise."""
    c, s = model.config.in_channels, model.config.image_size
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.shape != (c, s, s):
        raise CompletionError(
            f"the image must be uint8 pixels of shape {(c, s, s)}, got {pixels.dtype} "
            f"{pixels.shape}"
        )
    if samples < 1:
        raise CompletionError(f"the number of samples must be at least 1, got {samples}")
    mask = check_mask(mask, c, s)
    return complete(
        model,
        np.repeat(pixels[None], samples, 0),
        np.repeat(mask[None], samples, 0),
        temperature,
        seed,
        latent_steps,
        pixel_steps,
        progress,
        should_stop,
    )
