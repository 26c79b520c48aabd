"""Computing what a checkpoint knows about its data, from a model and a data set (torch).

The results are plain data defined in torch-free modules (:class:`core.stats.class_stats.
ClassStats`), so the explorer's views read them without loading torch; only this module,
which encodes images, needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from core.flow.model import RealNVP, pixel_centres
from core.stats.class_stats import DEFAULT_PER_CLASS, ClassStats, ClassStatsError, sample_indices
from core.stats.mixture import DEFAULT_COMPONENTS, fit_diagonal_mixture
from core.training.data import ImageDataset

# The mixture of a class is fitted to at most this many of its images (the first in the
# sample's order): its latents are held in memory, and EM's time grows with them.
MAX_MIXTURE_IMAGES = 10_000


def compute_class_stats(
    model: RealNVP,
    dataset: ImageDataset,
    per_class: int | None = DEFAULT_PER_CLASS,
    batch_size: int = 256,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
    components: int = DEFAULT_COMPONENTS,
) -> ClassStats:
    """Encode the sample of each class and return its per-level statistics.

    Sums run in float64; the model is put in eval mode and restored. ``progress(done,
    total)`` is called after every batch. With ``components`` above 1, each class also gets
    a mixture of that many diagonal Gaussians (fewer for a class with few images; see
    :func:`core.stats.mixture.fit_diagonal_mixture`), fitted with the class's index as its
    seed to its first :data:`MAX_MIXTURE_IMAGES` images of the sample. Raises
    :class:`ClassStatsError` for unlabelled data or when no class has an image.
    """
    if dataset.labels is None or len(dataset.class_names) < 2:
        raise ClassStatsError(
            f"the {dataset.name} data set has no labels (a folder needs two or more "
            "subfolders, one per class)"
        )
    names = dataset.class_names
    labels = np.asarray(dataset.labels, dtype=np.int64)
    chosen = sample_indices(labels, len(names), per_class)
    present = sorted({int(v) for v in labels[chosen]})
    if not present:
        raise ClassStatsError(f"the {dataset.name} data set has no labelled images")
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    param = next(model.parameters())
    device = device if device is not None else param.device
    k = len(present)
    sums = [torch.zeros((k, *s), dtype=torch.float64) for s in model.latent_shapes]
    squares = [torch.zeros_like(s) for s in sums]
    counts = torch.zeros(k, dtype=torch.float64)
    keep = components > 1
    flat: list[list[np.ndarray]] = [[] for _ in range(k)]  # per class, (n, D) float32
    kept = [0] * k
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(chosen), batch_size):
                idx = chosen[start : start + batch_size]
                x8 = dataset.images[torch.from_numpy(idx)].to(device)
                zs = model.encode(pixel_centres(x8).to(param.dtype))
                y = torch.from_numpy(remap[labels[idx]])
                counts.index_add_(0, y, torch.ones(len(idx), dtype=torch.float64))
                for level, z in enumerate(zs):
                    z = z.detach().to("cpu", torch.float64)
                    sums[level].index_add_(0, y, z)
                    squares[level].index_add_(0, y, z * z)
                if keep:
                    z = torch.cat([v.detach().reshape(len(idx), -1).float().cpu() for v in zs], 1)
                    z, classes = z.numpy(), y.numpy()
                    for c in range(k):
                        rows = z[classes == c][: MAX_MIXTURE_IMAGES - kept[c]]
                        if len(rows):
                            flat[c].append(rows)
                            kept[c] += len(rows)
                if progress is not None:
                    progress(min(start + batch_size, len(chosen)), len(chosen))
    finally:
        model.train(was_training)
    n = counts.view(-1, 1, 1, 1)
    means = [s / n for s in sums]
    stds = [(q / n - m * m).clamp_min(0).sqrt() for q, m in zip(squares, means)]
    limit = "all images" if per_class is None else f"the first {per_class} per class"
    mixture = _fit_mixtures(flat, components, model.latent_shapes) if keep else {}
    return ClassStats(
        names=tuple(names[i] for i in present),
        counts=tuple(int(c) for c in counts.tolist()),
        means=tuple(m.float().numpy() for m in means),
        stds=tuple(s.float().numpy() for s in stds),
        source=f"{dataset.name} training set, {limit} ({len(chosen)} images)",
        skipped=tuple(name for i, name in enumerate(names) if i not in present),
        **mixture,
    )


def _fit_mixtures(flat: list[list[np.ndarray]], components: int, shapes: Any) -> dict[str, Any]:
    """Each class's mixture, padded with zero-weight components to the largest count, as
    :class:`ClassStats`' ``mixture_*`` fields; none where every class has too few images
    for a second component (its single Gaussian is then the class's mean and std)."""
    fits = [
        fit_diagonal_mixture(np.concatenate(parts), components, seed=c)
        for c, parts in enumerate(flat)
    ]
    m = max(f.num_components for f in fits)
    if m == 1:
        return {}
    k = len(fits)
    dim = sum(int(np.prod(s)) for s in shapes)
    weights = np.zeros((k, m), dtype=np.float32)
    means = np.zeros((k, m, dim), dtype=np.float32)
    stds = np.ones((k, m, dim), dtype=np.float32)
    for c, f in enumerate(fits):
        j = f.num_components
        weights[c, :j], means[c, :j], stds[c, :j] = f.weights, f.means, f.stds
    out: dict[str, Any] = {"mixture_weights": weights, "mixture_means": [], "mixture_stds": []}
    start = 0
    for shape in shapes:
        size = int(np.prod(shape))
        out["mixture_means"].append(means[:, :, start : start + size].reshape(k, m, *shape))
        out["mixture_stds"].append(stds[:, :, start : start + size].reshape(k, m, *shape))
        start += size
    out["mixture_means"] = tuple(out["mixture_means"])
    out["mixture_stds"] = tuple(out["mixture_stds"])
    return out


@torch.inference_mode()
def class_samples(
    model: RealNVP,
    stats: ClassStats,
    k: int,
    n: int,
    temperature: float,
    levels: tuple[int, ...],
    generator: torch.Generator,
) -> torch.Tensor:
    """``n`` images of class ``k`` as ``realnvp sample --class`` draws them: the prior's noise
    at temperature 1, then (with a mixture) ``n`` uniform numbers that pick each sample's
    component, both from ``generator``; each level in ``levels`` moved to the class's
    Gaussian at ``temperature`` (:meth:`ClassStats.sample_latents`), decoded;
    ``(n, C, H, W)`` in ``[0, 1]`` on the model's device."""
    device = next(model.parameters()).device
    noise = [z.float().cpu().numpy() for z in model.sample_latents(n, 1.0, generator)]
    pick = None
    if stats.mixture_weights is not None:
        pick = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    zs = stats.sample_latents(k, noise, temperature, levels, pick)
    return model.decode([torch.from_numpy(z).to(device) for z in zs])
