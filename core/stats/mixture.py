"""A mixture of diagonal Gaussians fitted to one class's latents, by expectation-maximization.

A class of digits is not one blob in the flow's latent space: a 2 with a loop and a 2
without one sit apart, and a single Gaussian fitted over both puts most of its samples in
between, where the flow decodes neither. A few components, each with its own mean and
per-element standard deviation, cover the class where its images are. Plain numpy, no
torch: the explorer samples from the result without loading torch.

The fit is deterministic for a given ``seed``: the best of a few k-means++ runs, then EM in
float64. No
component may shrink onto a handful of training images: one left with less than
:data:`MIN_IMAGES_IN_COMPONENT` images' worth of responsibility is dropped, and each
component's variance has a floor, a share of the class's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_COMPONENTS = 10
MIN_IMAGES_PER_COMPONENT = 50  # fewer images than this per component: fewer components
MIN_IMAGES_IN_COMPONENT = 20  # a fitted component with less responsibility is dropped
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


def _kmeans(
    x: np.ndarray, m: int, rng: np.random.Generator, rounds: int
) -> tuple[np.ndarray, float]:
    """k-means++ seeds refined by Lloyd's rounds: each point's cluster and the inertia."""
    centres = _kmeans_pp(x, m, rng)
    sq = (x * x).sum(axis=1)
    for _ in range(rounds + 1):
        d = sq[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(axis=1)
        nearest = d.argmin(axis=1)
        moved = np.stack(
            [x[nearest == j].mean(axis=0) if (nearest == j).any() else centres[j] for j in range(m)]
        )
        if np.array_equal(moved, centres):
            break
        centres = moved
    return nearest, float(d[np.arange(len(x)), nearest].sum())


def _kmeans_start(
    x: np.ndarray, m: int, rng: np.random.Generator, floor: np.ndarray, tries: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM's start: the best of ``tries`` k-means runs (the least inertia); each cluster's
    mean, variance (at least ``floor``) and share. An empty cluster is dropped."""
    nearest = min((_kmeans(x, m, rng, 20) for _ in range(tries)), key=lambda r: r[1])[0]
    used = [j for j in range(m) if (nearest == j).any()]
    means = np.stack([x[nearest == j].mean(axis=0) for j in used])
    variances = np.stack([np.maximum(x[nearest == j].var(axis=0), floor) for j in used])
    weights = np.array([(nearest == j).mean() for j in used])
    return means, variances, weights


def fit_diagonal_mixture(
    latents: np.ndarray,
    components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    iterations: int = 60,
    tolerance: float = 1e-6,
) -> DiagonalMixture:
    """Fit at most ``min(components, N // MIN_IMAGES_PER_COMPONENT)`` (at least one)
    diagonal Gaussians to ``latents (N, D)``; fewer where EM leaves a component almost
    empty. A single component is the class's own mean and standard deviation."""
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
    means, variances, weights = _kmeans_start(x, m, rng, floor)
    previous = -np.inf
    for _ in range(iterations):
        # E step: responsibilities, in log space.
        logp = _log_densities(x, means, variances) + np.log(weights)
        top = logp.max(axis=1, keepdims=True)
        norm = top + np.log(np.exp(logp - top).sum(axis=1, keepdims=True))
        resp = np.exp(logp - norm)
        # M step. A component left with fewer than MIN_IMAGES_IN_COMPONENT images' worth
        # of responsibility is dropped (the smallest first, one at a time): it would only
        # copy a few outliers.
        mass = resp.sum(axis=0)
        if len(mass) > 1 and mass.min() < MIN_IMAGES_IN_COMPONENT:
            keep = np.ones(len(mass), dtype=bool)
            keep[int(np.argmin(mass))] = False
            means, variances, weights = (
                means[keep],
                variances[keep],
                weights[keep] / weights[keep].sum(),
            )
            previous = -np.inf
            continue
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
