"""A mixture of diagonal Gaussians fitted to one class's latents, by expectation-maximization.

A class of digits is not one blob in the flow's latent space: a 2 with a loop and a 2
without one sit apart, and a single Gaussian fitted over both puts most of its samples in
between, where the flow decodes neither. A few components, each with its own mean and
per-element standard deviation, cover the class where its images are. Plain numpy, no
torch: the explorer samples from the result without loading torch.

The fit is deterministic for a given ``seed``: k-means++ seeding, then EM in float64 with a
floor on each component's variance (a share of the class's own variance, so that no
component shrinks onto a handful of training images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_COMPONENTS = 10
MIN_IMAGES_PER_COMPONENT = 50  # fewer images than this per component: fewer components
VARIANCE_FLOOR = 0.01  # a component's variance >= this share of the class's, per element


@dataclass(frozen=True, eq=False)
class DiagonalMixture:
    """``weights (M,)`` summing to 1; ``means`` and ``stds`` ``(M, D)``, float32."""

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    @property
    def num_components(self) -> int:
        return len(self.weights)


def _log_densities(x: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """``(N, M)``: log N(x_n; mean_m, diag(var_m)) up to the constant ``-D/2 log 2 pi``."""
    inv = 1.0 / variances  # (M, D)
    quad = (x * x) @ inv.T - 2.0 * x @ (means * inv).T + (means * means * inv).sum(axis=1)
    return -0.5 * (quad + np.log(variances).sum(axis=1))


def _kmeans_pp(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, m):
        total = d2.sum()
        i = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(axis=1))
    return np.stack(centres)


def fit_diagonal_mixture(
    latents: np.ndarray,
    components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    iterations: int = 60,
    tolerance: float = 1e-6,
) -> DiagonalMixture:
    """Fit ``min(components, N // MIN_IMAGES_PER_COMPONENT)`` (at least one) diagonal
    Gaussians to ``latents (N, D)``. One component is the class's own mean and standard
    deviation, exactly."""
    x = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
    n, _ = x.shape
    if n == 0:
        raise ValueError("a mixture needs at least one latent")
    m = max(1, min(int(components), n // MIN_IMAGES_PER_COMPONENT))
    mean = x.mean(axis=0)
    var = x.var(axis=0)
    floor = np.maximum(VARIANCE_FLOOR * var, 1e-8)
    if m == 1:
        return _frozen(np.ones(1), mean[None], np.sqrt(np.maximum(var, floor))[None])
    rng = np.random.default_rng(seed)
    means = _kmeans_pp(x, m, rng)
    variances = np.tile(np.maximum(var, floor), (m, 1))
    weights = np.full(m, 1.0 / m)
    previous = -np.inf
    for _ in range(iterations):
        # E step: responsibilities, in log space.
        logp = _log_densities(x, means, variances) + np.log(weights)
        top = logp.max(axis=1, keepdims=True)
        norm = top + np.log(np.exp(logp - top).sum(axis=1, keepdims=True))
        resp = np.exp(logp - norm)
        # M step; a component that lost its images restarts on the worst-fitted latent.
        mass = resp.sum(axis=0)
        for j in np.flatnonzero(mass < 1e-3 * n / m):
            worst = int(np.argmin(norm[:, 0]))
            resp[:, j] = 0.0
            resp[worst, j] = 1.0
            mass[j] = 1.0
        weights = mass / n
        means = (resp.T @ x) / mass[:, None]
        variances = (resp.T @ (x * x)) / mass[:, None] - means * means
        variances = np.maximum(variances, floor)
        score = float(norm.mean())
        if score - previous < tolerance * max(1.0, abs(score)):
            break
        previous = score
    order = np.argsort(-weights, kind="stable")  # largest first: a stable, readable order
    return _frozen(weights[order], means[order], np.sqrt(variances[order]))


def _frozen(weights: np.ndarray, means: np.ndarray, stds: np.ndarray) -> DiagonalMixture:
    w = np.asarray(weights, dtype=np.float64)
    out = DiagonalMixture(
        (w / w.sum()).astype(np.float32),
        np.asarray(means, dtype=np.float32),
        np.asarray(stds, dtype=np.float32),
    )
    for a in (out.weights, out.means, out.stds):
        a.setflags(write=False)
    return out


def pick_components(weights: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """The component of each draw: ``uniform (N,)`` numbers in ``[0, 1)`` against the
    cumulative ``weights``."""
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
    cumulative /= cumulative[-1]
    u = np.clip(np.asarray(uniform, dtype=np.float64), 0.0, np.nextafter(1.0, 0.0))
    return np.minimum(np.searchsorted(cumulative, u, side="right"), len(cumulative) - 1)
