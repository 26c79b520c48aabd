"""A nearest-neighbour judge of generated images: which training image's class each sample
is closest to, in pixel space.

It knows nothing of the flow's latent space, so it checks class samples and temperature
samples from the outside: ``realnvp sample bundled --class K`` should read as ``K``. Plain
numpy, no torch.
"""

from __future__ import annotations

import numpy as np


class NearestNeighbourJudge:
    """``k``-nearest-neighbour classes (majority vote, ties to the nearest) of images,
    against reference images with labels. Images are compared as flat vectors in
    ``[0, 1]``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, k: int = 1) -> None:
        ref = np.asarray(images)
        if ref.dtype == np.uint8:
            ref = ref.astype(np.float32) / 255.0
        self.ref = ref.reshape(len(ref), -1).astype(np.float32)
        self.labels = np.asarray(labels).astype(np.int64)
        if len(self.ref) != len(self.labels) or len(self.ref) == 0:
            raise ValueError("the judge needs as many labels as reference images, at least one")
        self.k = int(k)
        self._ref_sq = (self.ref**2).sum(axis=1)
        self.num_classes = int(self.labels.max()) + 1

    def classify(self, images: np.ndarray, chunk: int = 256) -> np.ndarray:
        """The class of each image ``(N, ...)`` in ``[0, 1]`` (or uint8)."""
        x = np.asarray(images)
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        x = x.reshape(len(x), -1).astype(np.float32)
        out = np.empty(len(x), dtype=np.int64)
        for start in range(0, len(x), chunk):
            part = x[start : start + chunk]
            d = (part**2).sum(axis=1)[:, None] - 2.0 * part @ self.ref.T + self._ref_sq[None]
            nearest = np.argsort(d, axis=1)[:, : self.k]
            for i, row in enumerate(nearest):
                votes = np.bincount(self.labels[row], minlength=self.num_classes)
                best = np.flatnonzero(votes == votes.max())
                # A tie goes to the class of the nearest neighbour among the tied.
                out[start + i] = next(self.labels[j] for j in row if self.labels[j] in best)
        return out

    def share_as(self, images: np.ndarray, label: int) -> float:
        """The share of ``images`` judged as ``label``."""
        return float((self.classify(images) == label).mean()) if len(images) else 0.0
