"""Data sets: MNIST, CIFAR-10 and any folder of images, as ``uint8 (N, C, H, W)`` tensors.

One module for the trainer, the CLI and the GUI. MNIST and CIFAR-10 are read from
``data_dir`` and, when missing and ``download=True``, fetched from their usual mirrors and
verified by checksum before use.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from core.config import FlowConfig, TrainConfig
from core.files.atomic import atomic_path
from core.files.images import IMAGE_SUFFIXES, ImageLoadError, load_image
from core.training.datasets import (
    DATASETS,
    DatasetError,
    describe_skipped,
    folder_classes,
    is_held_out,
    list_images,
)


@dataclass
class ImageDataset:
    """Images as ``uint8 (N, C, H, W)``, plus how many files were skipped as unreadable.

    ``labels``: one class index per image (``int64 (N,)``, ``-1`` for an image without a
    class), or ``None`` for unlabelled data; ``class_names[k]`` names class ``k``.
    """

    images: torch.Tensor
    name: str
    skipped: int = 0
    skipped_names: tuple[str, ...] = ()  # the skipped files, relative to the folder
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]


# -- downloading ----------------------------------------------------------------------------

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# SHA-256 of the uncompressed IDX files (the gzip wrappers differ between mirrors).
MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class _ChecksumMismatch(Exception):
    """A downloaded file that is not the expected one; it is removed, never kept."""


def _download(urls: list[str], dest: Path, check: Callable[[Path], bool]) -> Path:
    """Fetch the first URL that works into ``dest`` atomically, verified by ``check``. When
    none works, the folders made for it are removed again: a failed download leaves no empty
    data folder behind."""
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        try:
            with atomic_path(dest, suffix=".part") as tmp:
                with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
                    shutil.copyfileobj(resp, out)
                if not check(tmp):
                    raise _ChecksumMismatch
            return dest
        except _ChecksumMismatch:
            errors.append(f"{url}: checksum mismatch")
        except OSError as exc:
            errors.append(f"{url}: {exc}")
    for folder in made:  # deepest first
        try:
            folder.rmdir()
        except OSError:  # something else was put there meanwhile: keep it
            break
    raise DatasetError(f"could not download {dest.name}: " + "; ".join(errors))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- MNIST ----------------------------------------------------------------------------------


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path}: damaged gzip file ({exc})") from None
    return raw


def parse_idx_images(data: bytes, source: str = "IDX data") -> np.ndarray:
    """IDX3 unsigned-byte images to ``uint8 (N, 1, H, W)``."""
    if len(data) < 16:
        raise DatasetError(f"{source}: too short for an IDX image file")
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 2051:
        raise DatasetError(f"{source}: not an IDX image file (magic number {magic})")
    expected = 16 + n * rows * cols
    if len(data) != expected:
        raise DatasetError(f"{source}: {len(data)} bytes, expected {expected} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols).copy()


def parse_idx_labels(data: bytes, source: str = "IDX data") -> np.ndarray:
    """IDX1 unsigned-byte labels to ``int64 (N,)``."""
    if len(data) < 8:
        raise DatasetError(f"{source}: too short for an IDX label file")
    magic, n = struct.unpack(">II", data[:8])
    if magic != 2049:
        raise DatasetError(f"{source}: not an IDX label file (magic number {magic})")
    if len(data) != 8 + n:
        raise DatasetError(f"{source}: {len(data)} bytes, expected {8 + n} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def _find_mnist_file(data_dir: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        for candidate in (data_dir / name, data_dir / "mnist" / name):
            if candidate.is_file():
                return candidate
    return None


def _fetch_mnist(data_dir: Path, stem: str, mirrors: tuple[str, ...]) -> Path:
    def ok(p: Path) -> bool:
        try:
            return _sha256(_read_maybe_gzip(p)) == MNIST_FILES[stem]
        except DatasetError:
            return False

    return _download([m + stem + ".gz" for m in mirrors], data_dir / (stem + ".gz"), ok)


def load_mnist(
    data_dir: str | os.PathLike,
    train: bool,
    download: bool = False,
    mirrors: tuple[str, ...] = MNIST_MIRRORS,
) -> ImageDataset:
    data_dir = Path(data_dir)
    stem = "train-images-idx3-ubyte" if train else "t10k-images-idx3-ubyte"
    path = _find_mnist_file(data_dir, stem)
    if path is None:
        if not download:
            raise DatasetError(
                f"MNIST file {stem}[.gz] not found in {data_dir}; pass --download to fetch it"
            )
        path = _fetch_mnist(data_dir, stem, mirrors)
    images = parse_idx_images(_read_maybe_gzip(path), str(path))
    # The labels are optional: training needs only the images.
    label_stem = stem.replace("images-idx3", "labels-idx1")
    label_path = _find_mnist_file(data_dir, label_stem)
    if label_path is None and download:
        with contextlib.suppress(DatasetError):  # images without labels still train
            label_path = _fetch_mnist(data_dir, label_stem, mirrors)
    labels = None
    if label_path is not None:
        labels = parse_idx_labels(_read_maybe_gzip(label_path), str(label_path))
        if len(labels) != len(images):
            raise DatasetError(
                f"{label_path}: {len(labels)} labels for {len(images)} images in {path}"
            )
    return ImageDataset(torch.from_numpy(images), "mnist", labels=labels, class_names=MNIST_CLASSES)


# -- CIFAR-10 -------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Reads the CIFAR-10 batches (dicts of bytes, lists and numpy arrays) and nothing else."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")


def _cifar_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` of one batch."""
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch.get(b"labels", [-1] * len(data)), dtype=np.int64)
    except Exception as exc:
        raise DatasetError(f"{source}: not a CIFAR-10 batch ({exc})") from None
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{source}: unexpected CIFAR-10 batch shape {data.shape}")
    if labels.shape != (len(data),):
        raise DatasetError(f"{source}: {labels.size} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_dataset(batches: list[tuple[np.ndarray, np.ndarray]]) -> ImageDataset:
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return ImageDataset(
        torch.from_numpy(images), "cifar10", labels=labels, class_names=CIFAR10_CLASSES
    )


def load_cifar10(
    data_dir: str | os.PathLike,
    train: bool,
    download: bool = False,
    mirrors: tuple[str, ...] = CIFAR10_MIRRORS,
    md5: str | None = CIFAR10_MD5,
) -> ImageDataset:
    data_dir = Path(data_dir)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    folder = next(
        (d for d in (data_dir / "cifar-10-batches-py", data_dir) if (d / names[0]).is_file()), None
    )
    if folder is not None:
        arrays = [_cifar_batch((folder / n).read_bytes(), str(folder / n)) for n in names]
        return _cifar_dataset(arrays)
    archive = data_dir / CIFAR10_ARCHIVE
    if not archive.is_file():
        if not download:
            raise DatasetError(
                f"CIFAR-10 not found in {data_dir} (expected {CIFAR10_ARCHIVE} or "
                "cifar-10-batches-py/); pass --download to fetch it"
            )
        _download(
            [m + CIFAR10_ARCHIVE for m in mirrors],
            archive,
            lambda p: md5 is None or _md5_file(p) == md5,
        )
    arrays = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for n in names:
                if n not in members:
                    raise DatasetError(f"{archive}: {n} missing from the archive")
                arrays.append(_cifar_batch(tar.extractfile(members[n]).read(), f"{archive}:{n}"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{archive}: damaged archive ({exc})") from None
    return _cifar_dataset(arrays)


# -- a folder of images ---------------------------------------------------------------------


def load_folder(
    folder: str | os.PathLike,
    train: bool,
    channels: int,
    image_size: int,
    test_fraction: float = 0.1,
    progress: Callable[[int, int], bool | None] | None = None,
) -> ImageDataset:
    """Every readable image under ``folder``; unreadable files are skipped and counted.

    ``progress(done, total)`` may return ``False`` to cancel (raises :class:`DatasetError`).
    With two or more first-level subfolders, each subfolder is a class (images lying in
    ``folder`` itself get the label ``-1``); see :func:`folder_classes`.
    """
    paths = list_images(folder)
    if not paths:
        raise DatasetError(f"{folder}: no image files found (looked for {sorted(IMAGE_SUFFIXES)})")
    split = [p for p in paths if is_held_out(p, test_fraction) != train]
    if not split:  # tiny folders: use everything on both sides rather than nothing
        split = paths
    classes = folder_classes(folder, paths)
    index = {name: k for k, name in enumerate(classes)}
    arrays, labels, skipped = [], [], []
    for i, p in enumerate(split):
        try:
            arrays.append(load_image(p, channels, image_size))
        except ImageLoadError:
            skipped.append(p.relative_to(folder).as_posix())
        else:
            parts = p.relative_to(folder).parts
            labels.append(index.get(parts[0], -1) if len(parts) > 1 else -1)
        if progress is not None and progress(i + 1, len(split)) is False:
            raise DatasetError("loading cancelled")
    if not arrays:
        raise DatasetError(
            f"{folder}: none of the {len(split)} image files could be read "
            f"({describe_skipped(skipped)})"
        )
    return ImageDataset(
        torch.from_numpy(np.stack(arrays)),
        "folder",
        len(skipped),
        tuple(skipped),
        labels=np.array(labels, dtype=np.int64) if classes else None,
        class_names=classes,
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike,
    train: bool,
    *,
    channels: int | None = None,
    image_size: int | None = None,
    download: bool = False,
) -> ImageDataset:
    """The one entry point: ``name`` is ``mnist``, ``cifar10`` or ``folder``."""
    if name == "mnist":
        return load_mnist(data_dir, train, download)
    if name == "cifar10":
        return load_cifar10(data_dir, train, download)
    if name == "folder":
        return load_folder(data_dir, train, channels or 3, image_size or 32)
    raise DatasetError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def load_run_data(
    config: TrainConfig, model_config: FlowConfig, processes: int, with_test: bool
) -> tuple[ImageDataset, ImageDataset | None]:
    """A training run's training set and, ``with_test`` (rank 0), its test set, checked
    against the model's image geometry and against one batch of every process."""
    c, mc = config, model_config
    kwargs = dict(channels=mc.in_channels, image_size=mc.image_size, download=c.download)
    train = load_dataset(c.dataset, c.data_dir, True, **kwargs)
    test = load_dataset(c.dataset, c.data_dir, False, **kwargs) if with_test else None
    for ds in (train, test):
        if ds is not None and (ds.channels, ds.image_size) != (mc.in_channels, mc.image_size):
            raise DatasetError(
                f"{c.dataset} images are {ds.channels}x{ds.image_size}x{ds.image_size}, "
                f"the model expects {mc.in_channels}x{mc.image_size}x{mc.image_size}"
            )
    if len(train) < c.batch_size * processes:
        raise DatasetError(
            f"{len(train)} training images are fewer than one batch "
            f"({c.batch_size} x {processes} processes); lower --batch-size"
        )
    return train, test


def resident(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Where a run keeps its training images: small data sets live on the GPU as uint8;
    larger ones stay pinned on the host."""
    if device.type == "cuda" and images.numel() <= 2 * 1024**3:
        return images.to(device)
    if device.type == "cuda":
        return images.pin_memory()
    return images
