"""The one image loader and the grid writer, used by the data sets, the CLI and the GUI.

Images come in as files of any common format and leave as ``uint8`` arrays of shape
``(C, H, W)`` with the model's channel count and size: EXIF orientation applied, alpha
flattened onto white, palette / CMYK / 16-bit / grayscale converted, centre-cropped to a
square and resized.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.files.atomic import atomic_write

IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
}
# What a written image's suffix says it is, and the Pillow format that writes it so.
IMAGE_WRITE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}
MAX_PIXELS = 64_000_000  # a header claiming more than this is a decompression bomb


class ImageLoadError(ValueError):
    """An image file that cannot be used; the message is meant for the user."""


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        img = Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square: ``(left, top, right, bottom)``."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_image(path: str | os.PathLike, channels: int, size: int) -> np.ndarray:
    """``uint8 (C, H, W)`` in the model's channels and size; raises :class:`ImageLoadError`."""
    img = _read(Path(path), channels)
    img = img.crop(center_crop_box(*img.size))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    arr = np.asarray(img, dtype=np.uint8)
    if channels == 1:
        return arr[None].copy()  # (1, H, W)
    return arr.transpose(2, 0, 1).copy()  # (3, H, W)


def load_mask(path: str | os.PathLike, size: int) -> np.ndarray:
    """A completion mask, ``bool (H, W)``: non-zero (white) pixels are to be completed.
    Never cropped or resized (a mask marks exact pixels): a mask that is not ``size`` x
    ``size`` raises :class:`ImageLoadError`, as an unreadable file does."""
    img = _read(Path(path), 1)
    if img.size != (size, size):
        w, h = img.size
        raise ImageLoadError(
            f"{path}: the mask is {w}x{h} pixels but the model's images are {size}x{size}"
        )
    return np.asarray(img, dtype=np.uint8) > 0


def _read(path: Path, channels: int) -> Image.Image:
    """The checked, decoded image in ``L`` or ``RGB`` mode (EXIF orientation applied,
    alpha on white), at the file's own size."""
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageLoadError(
                        f"{path}: {w}x{h} pixels is too large to open safely "
                        f"(limit {MAX_PIXELS // 1_000_000} megapixels)"
                    )
                img.seek(0)  # first frame of an animation
                img.load()
                img = ImageOps.exif_transpose(img)
                img = _to_mode(img, channels)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(f"{path}: the image is too large to open safely") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Our words, not the decoder's ("image file is truncated (13 bytes not processed)").
        cut_short = isinstance(exc, EOFError) or "truncated" in str(exc).lower()
        what = "the file ends before the image does" if cut_short else "its data is invalid"
        raise ImageLoadError(f"{path}: the image is damaged or truncated: {what}") from None
    return img


def make_grid(
    images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 96
) -> np.ndarray:
    """Tile ``uint8 (N, C, H, W)`` into one ``(H', W', C)`` image, ``pad`` pixels apart.

    The default grey gap keeps images apart on black backgrounds such as MNIST's.
    """
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i].transpose(1, 2, 0)
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 as PNG, atomically."""
    return _save(array, Path(path), "PNG")


def image_format(path: str | os.PathLike) -> str:
    """The format a file named ``path`` is written in (:data:`IMAGE_WRITE_FORMATS`); a
    suffix naming none of them raises ValueError with the names that work."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_WRITE_FORMATS:
        known = ", ".join(sorted(IMAGE_WRITE_FORMATS))
        what = f"a {suffix} file" if suffix else "a file without a suffix"
        raise ValueError(f"{path}: cannot write an image as {what}; name a {known} file")
    return IMAGE_WRITE_FORMATS[suffix]


def save_image(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save as :func:`save_png` does, in the format the suffix names (``g.jpg`` is a JPEG,
    not PNG bytes under a JPEG name); lossy formats at high quality, WebP lossless."""
    return _save(array, Path(path), image_format(path))


_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}


def _save(array: np.ndarray, path: Path, fmt: str) -> Path:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    with atomic_write(path) as f:
        Image.fromarray(array).save(f, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
    return path


def to_uint8(images) -> np.ndarray:
    """Float images in ``[0, 1]`` to uint8: ``floor(256 x)``, the inverse of dequantization
    ``(k + u) / 256``, so a dequantized image maps back to its own pixel values."""
    arr = np.asarray(images, dtype=np.float32)
    return np.clip(np.floor(arr * 256.0), 0, 255).astype(np.uint8)
