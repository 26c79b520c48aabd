"""What a run measures of its weights and shows of them: the evaluated weights (the averaged
ones, with batch-norm statistics measured for them), the test bits/dim of each image, the
sample grids, the class statistics and the typicality reference of the last evaluation."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from core.config import TrainConfig
from core.files.images import make_grid, to_uint8
from core.flow.model import RealNVP, dequantize, per_image_bits_per_dim
from core.runs.events import EventSink
from core.stats.class_stats import ClassStatsError
from core.stats.measure import compute_class_stats
from core.stats.typicality import MIN_REFERENCE_IMAGES, TypicalityReference
from core.training.averaging import WeightAverage, averaged_copy
from core.training.data import ImageDataset

# Images per batch when the averaged weights' batch norm is measured (larger than a
# training batch: fewer passes, and the batch statistics of 256 images differ from those of
# 64 by less than their spread between batches).
AVERAGE_BN_BATCH = 256

# The temperatures of the sample grids, left to right.
SAMPLE_TEMPERATURES = (0.7, 1.0)


class RunEvaluation:
    """The evaluation of one run's model. The trainer sets ``average`` (``--ema``),
    ``train_images`` (for the average's batch norm) and ``channels_last`` (how its steps run)
    when the run starts; ``config`` gives the evaluation's sizes and seed."""

    def __init__(
        self, model: RealNVP, config: TrainConfig, device: torch.device, sink: EventSink
    ) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.sink = sink
        self.average: WeightAverage | None = None  # the averaged weights, where --ema
        self.train_images: torch.Tensor | None = None  # for the average's batch norm
        self.channels_last = False
        self.class_stats: dict[str, Any] | None = None  # meta["class_stats"] once computed
        self._evaluated: tuple[int, nn.Module] | None = None  # (step, averaged copy)

    def evaluated_model(self, step: int | None = None) -> nn.Module:
        """The weights that are evaluated, sampled and saved as the checkpoint's model: a
        copy holding the averaged weights with batch-norm statistics measured for them on
        training batches (cached for ``step``), or, without an average, the model itself."""
        if self.average is None or self.train_images is None:
            return self.model
        if self._evaluated is not None and step is not None and self._evaluated[0] == step:
            return self._evaluated[1]
        model = averaged_copy(self.model, self.average, self._bn_batches(step or 0))
        self._evaluated = (step, model) if step is not None else None
        return model

    def _bn_batches(self, step: int) -> Iterator[torch.Tensor]:
        """Dequantized training batches for the averaged weights' batch norm, drawn with a
        generator of their own (the run's noise and RNG stay as they were, so a resumed run
        replays the same steps)."""
        images = self.train_images
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        n = min(self.config.ema_bn_images, len(images))
        idx = torch.randperm(len(images), generator=g)[:n]
        b = min(AVERAGE_BN_BATCH, n)
        for start in range(0, n - b + 1, b):
            x = images[idx[start : start + b].to(images.device)].to(self.device)
            yield dequantize(x, g)

    @torch.no_grad()
    def per_image(self, test: ImageDataset, step: int | None) -> torch.Tensor:
        """Bits/dim of each evaluated test image (float64, CPU) at ``step``, in eval mode and
        in float32 also on CUDA: under bf16 autocast the same weights read about 0.005
        bits/dim high (1.3970 against 1.3922 on MNIST), more than the gains late in a run.

        In the default memory format also where steps run channels_last (on the CPU the
        float32 sums differ in the 8th digit between the two), so that ``realnvp eval`` of
        the saved checkpoint reproduces the recorded figure exactly."""
        if self.average is not None and self.train_images is not None:
            model = self.evaluated_model(step)
            return per_image_bits_per_dim(model.eval(), self.images(test), self.device)
        if self.channels_last and self.device.type != "cuda":
            model = copy.deepcopy(self.model).to(memory_format=torch.contiguous_format)
            return per_image_bits_per_dim(model.eval(), self.images(test), self.device)
        self.model.eval()
        try:
            return per_image_bits_per_dim(self.model, self.images(test), self.device)
        finally:
            self.model.train()

    def images(self, test: ImageDataset) -> torch.Tensor:
        """The test images an evaluation covers (``--eval-limit``)."""
        return test.images[: self.config.eval_limit] if self.config.eval_limit else test.images

    def compute_class_stats(self, train: ImageDataset, step: int | None) -> None:
        """Per-class latent statistics of the training set (see :mod:`core.stats.class_stats`),
        kept for the checkpoints saved from now on; unlabelled data is left without."""
        try:
            stats = compute_class_stats(
                self.evaluated_model(step),
                train,
                self.config.class_stats_per_class or None,
                device=self.device,
                progress=self._progress("class statistics"),
            )
        except ClassStatsError:
            return
        self.class_stats = stats.to_meta()

    def _progress(self, task: str) -> Callable[[int, int], None]:
        """``progress(done, total)`` as ``progress`` events: work outside the steps that
        takes a while (the class statistics after the last step, about 25 s on 2 cores)
        is shown, not a silence."""

        def progress(done: int, total: int) -> None:
            self.sink.emit("progress", task=task, done=done, total=total)

        return progress

    @torch.no_grad()
    def sample_grid(self, step: int) -> np.ndarray:
        """Two grids side by side: temperature 0.7 (left) and 1.0 (right), ``(H, W, C)``
        uint8."""
        model = self.evaluated_model(step)
        model.eval()
        grids = []
        for t in SAMPLE_TEMPERATURES:
            g = torch.Generator().manual_seed(4321)
            x = model.sample(self.config.num_samples, temperature=t, generator=g)
            grids.append(make_grid(to_uint8(x.float().cpu().numpy())))
        if model is self.model:
            model.train()
        gap = np.full((grids[0].shape[0], 8, grids[0].shape[2]), 255, dtype=np.uint8)
        return np.concatenate([grids[0], gap, grids[1]], axis=1)

    def typicality(self, test: ImageDataset, per_image: torch.Tensor) -> dict[str, Any] | None:
        """The typicality reference of the last evaluation (see :mod:`core.stats.typicality`);
        ``None`` when it covered too few images to be one."""
        images = self.images(test)
        if len(per_image) < MIN_REFERENCE_IMAGES or not torch.isfinite(per_image).all():
            return None
        note = f"float32, {len(per_image)} test images, last evaluation of training"
        return TypicalityReference.from_scores(
            self.config.dataset, per_image.numpy(), images.cpu().numpy(), note=note
        ).to_meta()
