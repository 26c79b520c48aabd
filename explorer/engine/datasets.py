"""Test images for the latent map, read with the one data set loader (``core.training.data``).

Here because ``core.training.data`` hands out torch tensors; the map's own code sees only numpy.
"""

from __future__ import annotations

import os

import numpy as np

from core.training.data import DatasetError, load_dataset
from explorer.engine.devices import set_thread_team
from explorer.state.latent_map import MapImages


def load_map_images(
    dataset: str,
    data_dir: str | os.PathLike,
    channels: int,
    image_size: int,
    limit: int,
) -> MapImages:
    """The first ``limit`` test images of ``dataset`` in ``data_dir`` with their labels.
    Raises ``DatasetError`` (a ``ValueError`` with a message for the user). Runs off the
    render thread, so single-threaded (see ``devices.set_thread_team``)."""
    set_thread_team(1)
    test = load_dataset(dataset, data_dir, False, channels=channels, image_size=image_size)
    if (test.channels, test.image_size) != (channels, image_size):
        raise DatasetError(
            f"{dataset} images are {test.channels}x{test.image_size}px; the model takes "
            f"{channels}x{image_size}px"
        )
    pixels = test.images[:limit].numpy()
    labels = None if test.labels is None else np.asarray(test.labels[:limit], dtype=np.int64)
    where = f"{dataset} test set in {data_dir}"
    return MapImages(pixels, labels, test.class_names if labels is not None else (), where)
