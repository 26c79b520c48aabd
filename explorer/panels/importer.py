"""Turn dropped files and folders into encoded gallery images: the import job.

:func:`import_images` is a generator job for
:class:`~explorer.widgets.task_runner.TaskRunner`: it lists folders, reads each file with
``core.files.images.load_image`` (the one image loader: EXIF orientation, alpha on white,
palette / CMYK / 16-bit, centre crop, resize; a clear ``ImageLoadError`` for empty, damaged,
non-image and oversized files), has the engine encode it, and yields one result per file.
A bad file is a :class:`ImportFailure`, never an exception, so one broken file in a folder
of thousands costs only itself.

A file whose pixels are in the gallery already (same path, same content hash, same model:
``known``) is not encoded again: it is an :class:`AlreadyImported` (a second drop of a
300-file folder had taken longer than the first, only to add nothing).

Several files are encoded in batches (``encode_many``, the engine's ``encode_images``):
one batched pass costs a fraction of one pass per image. A single file takes the
one-image path (``encode``), whose reconstruction also warms the view's level cache.

The preview of the crop (the whole picture, small, with the centre square the model sees)
is read with Qt's ``QImageReader``: a display-only thumbnail, decoded at reduced size, only
after ``load_image`` has accepted the file. The model's pixels never come from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QImage, QImageIOHandler, QImageReader, QPainter

from core.files.images import IMAGE_SUFFIXES, ImageLoadError, center_crop_box, load_image
from core.training.datasets import DatasetError, list_images
from explorer.state.gallery import EncodedImage, Preview, pixel_digest
from explorer.state.jobs import Progress

PREVIEW_SIDE = 128
# Images per batched encode: bigger batches cost less per image (bundled model on a 2-core
# Xeon, the whole import of 1,500 MNIST PNGs: 145 images/s at 32, 174 at 64, 197 at 128),
# smaller ones answer a cancel, and let a waiting frame have the render thread, sooner (a
# batch of 64 holds it about 0.3 s). The first image comes alone, so it shows at once.
BATCH = 64
FIRST_BATCH = 1
CHECKPOINT_SUFFIXES = {".pt", ".pth", ".ckpt"}
STATE_SUFFIXES = {".npz"}


@dataclass(frozen=True, eq=False)
class ImportedImage:
    path: str
    pixels: np.ndarray  # uint8 (C, H, W)
    encoded: EncodedImage
    preview: Preview | None


@dataclass(frozen=True, eq=False)
class ImportedBatch:
    """The images of one batched encode, in file order: handed to the GUI together, so it
    adds them to the gallery in one change."""

    images: tuple[ImportedImage, ...]


@dataclass(frozen=True)
class AlreadyImported:
    """A file whose image is the gallery's ``item_id`` already (not encoded again)."""

    path: str
    item_id: int


@dataclass(frozen=True)
class ImportFailure:
    path: str
    message: str


def import_images(
    paths: Iterable[str | os.PathLike],
    encode: Callable[[np.ndarray], EncodedImage],
    channels: int,
    size: int,
    previews: bool = True,
    encode_many: Callable[[np.ndarray], list[EncodedImage]] | None = None,
    known: Mapping[tuple[str, str], int] | None = None,
) -> Iterator[Progress | ImportedImage | ImportedBatch | AlreadyImported | ImportFailure]:
    """Import files and folders (recursively) in order; see the module docstring.
    ``encode_many``: encode ``uint8 (N, C, H, W)`` images at once (several files);
    ``known``: ``(path, pixel digest) -> gallery id`` of the images not to encode again."""
    known = known or {}
    yield Progress(0, 0, "Listing files…")
    files: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            try:
                found = list_images(path)
            except DatasetError as exc:
                yield ImportFailure(str(path), str(exc))
                continue
            if not found:
                suffixes = " ".join(sorted(IMAGE_SUFFIXES))
                yield ImportFailure(
                    str(path), f"{path}: no image files in this folder ({suffixes})"
                )
        else:
            found = [path]
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    total = len(files)
    if encode_many is None or total == 1:
        for done, path in enumerate(files):
            yield Progress(done, total, f"Importing {path.name}")
            pixels = _read(path, channels, size, known)
            if not isinstance(pixels, np.ndarray):
                yield pixels
                continue
            encoded = encode(pixels)
            preview = read_preview(path) if previews else None
            yield ImportedImage(str(path), pixels, encoded, preview)
    else:
        yield from _import_batches(files, encode_many, channels, size, previews, known)
    yield Progress(total, total, "Done")


def _import_batches(
    files: list[Path],
    encode_many: Callable[[np.ndarray], list[EncodedImage]],
    channels: int,
    size: int,
    previews: bool,
    known: Mapping[tuple[str, str], int],
) -> Iterator[Progress | ImportedImage | ImportedBatch | AlreadyImported | ImportFailure]:
    """Read files until a batch is full, encode it in one call, yield its images in order
    (the known ones first, without encoding)."""
    total, done, start = len(files), 0, 0
    batch = FIRST_BATCH
    while start < len(files):
        chunk = files[start : start + batch]
        start += len(chunk)
        yield Progress(done, total, f"Importing {chunk[0].name}")
        loaded: list[tuple[Path, np.ndarray]] = []
        for path in chunk:
            pixels = _read(path, channels, size, known)
            if isinstance(pixels, np.ndarray):
                loaded.append((path, pixels))
            else:
                yield pixels
        if loaded:
            encoded = encode_many(np.stack([pixels for _, pixels in loaded]))
            yield ImportedBatch(
                tuple(
                    ImportedImage(str(path), pixels, one, read_preview(path) if previews else None)
                    for (path, pixels), one in zip(loaded, encoded)
                )
            )
        done += len(chunk)
        batch = BATCH


def _read(
    path: Path, channels: int, size: int, known: Mapping[tuple[str, str], int]
) -> np.ndarray | AlreadyImported | ImportFailure:
    """The file's pixels to encode, or what to yield instead: it is in the gallery already,
    or cannot be used."""
    try:
        pixels = load_image(path, channels, size)
    except ImageLoadError as exc:
        return ImportFailure(str(path), _explain(path, str(exc)))
    item_id = known.get((str(path), pixel_digest(pixels)))
    return pixels if item_id is None else AlreadyImported(str(path), item_id)


def _explain(path: Path, message: str) -> str:
    """The loader's message, plus what the explorer does open, for files it cannot."""
    suffix = path.suffix.lower()
    if "not an image" in message and suffix not in IMAGE_SUFFIXES:
        return (
            f"{message}. The explorer opens images, folders of images, checkpoints "
            f"({', '.join(sorted(CHECKPOINT_SUFFIXES))}) and state or direction files (.npz)."
        )
    return message


def read_preview(path: str | os.PathLike, max_side: int = PREVIEW_SIDE) -> Preview | None:
    """A small RGB picture of the whole file with the centre square marked, or ``None``
    when Qt cannot read the format (the import goes on without a preview)."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)  # EXIF orientation, as load_image applies it
    raw = reader.size()
    if not raw.isValid() or raw.isEmpty():
        return None
    w, h = raw.width(), raw.height()
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:  # JPEG decodes at reduced size directly
        reader.setScaledSize(QSize(max(1, round(w * scale)), max(1, round(h * scale))))
    image = reader.read()
    if image.isNull():
        return None
    if reader.transformation() & QImageIOHandler.Transformation.TransformationRotate90:
        w, h = h, w
    if image.width() > max_side or image.height() > max_side:  # formats that ignore scaling
        image = image.scaled(
            max_side,
            max_side,
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
    if image.hasAlphaChannel():  # on white, as load_image flattens alpha
        flat = QImage(image.size(), QImage.Format.Format_RGB888)
        flat.fill(Qt.GlobalColor.white)
        painter = QPainter(flat)
        painter.drawImage(0, 0, image)
        painter.end()
        image = flat
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    pw, ph = image.width(), image.height()
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(ph, image.bytesPerLine())
    array = rows[:, : pw * 3].reshape(ph, pw, 3).copy()
    return Preview(array, center_crop_box(pw, ph), (w, h))


def classify_drop(paths: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """Split dropped paths into (checkpoints, .npz files, images and folders)."""
    checkpoints, npz, images = [], [], []
    for path in paths:
        suffix = Path(path).suffix.lower()
        if suffix in CHECKPOINT_SUFFIXES and not Path(path).is_dir():
            checkpoints.append(path)
        elif suffix in STATE_SUFFIXES and not Path(path).is_dir():
            npz.append(path)
        else:
            images.append(path)
    return checkpoints, npz, images
