"""Writing interpolations: the strip as PNG, the animation as GIF (Pillow) or MP4.

MP4 needs the optional ``imageio`` and ``imageio-ffmpeg`` packages (``pip install
imageio imageio-ffmpeg``); without them :func:`mp4_available` is false, the window says so
and GIF still works. Files are written to a temporary name and moved into place, so a
cancelled or failed export never leaves half a file behind.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from core.files.atomic import atomic_path
from core.files.images import make_grid
from explorer.state.jobs import Progress

GIF, MP4 = "gif", "mp4"
VIDEO_MIN_SIDE = 256  # animations are upscaled (nearest) to at least this many pixels
MACRO_BLOCK = 16  # H.264 wants frame sides that are multiples of 16
DECODE_BATCH = 8


@functools.cache
def mp4_available() -> bool:
    """Whether MP4 can be written here (imageio with a working ffmpeg binary)."""
    if importlib.util.find_spec("imageio") is None:
        return False
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        return False
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe()).is_file()
    except Exception:
        return False


def video_scale(size: int, fmt: str = GIF) -> int:
    """An integer upscaling factor so a ``size`` pixel image is at least
    :data:`VIDEO_MIN_SIDE` wide (and, for MP4, a multiple of the macro block)."""
    factor = max(1, math.ceil(VIDEO_MIN_SIDE / size))
    if fmt == MP4:
        while (size * factor) % MACRO_BLOCK:
            factor += 1
    return factor


def to_frames(images: np.ndarray, factor: int = 1) -> np.ndarray:
    """``uint8 (N, C, H, W)`` to ``(N, H*f, W*f, 3)`` RGB, upscaled by nearest neighbour."""
    frames = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if factor > 1:
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    return frames


def there_and_back(latents: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Frames ``0 .. M-1`` followed by ``M-2 .. 1``: a loop that does not stutter at the ends."""
    return [np.concatenate([z, z[-2:0:-1]]) for z in latents]


def animation_job(
    path: str | os.PathLike,
    latents: Sequence[np.ndarray],
    decode: Callable[[list[np.ndarray]], np.ndarray],
    fmt: str,
    fps: float = 24.0,
) -> Iterator[Progress | Path]:
    """Render the frames (``latents``: one ``(M, C, H, W)`` array per level) in small batches
    and write them as ``fmt`` to ``path``; a generator job for the task runner."""
    if fmt not in (GIF, MP4):
        raise ValueError(f"unknown animation format {fmt!r}")
    if fmt == MP4 and not mp4_available():
        raise RuntimeError("MP4 needs the imageio and imageio-ffmpeg packages")
    path = Path(path)
    count = len(latents[0])
    total = 2 * count  # rendering, then writing
    batches = []
    for start in range(0, count, DECODE_BATCH):
        yield Progress(start, total, f"Rendering frame {start + 1} of {count}")
        batches.append(decode([z[start : start + DECODE_BATCH] for z in latents]))
    images = np.concatenate(batches)  # (M, C, H, W)
    frames = to_frames(images, video_scale(images.shape[-1], fmt))
    with atomic_path(path, suffix=f".{fmt}") as tmp:  # the writers go by the suffix
        if fmt == GIF:
            yield Progress(count, total, "Writing GIF")
            _write_gif(tmp, frames, fps)
        else:
            yield from _write_mp4(tmp, frames, fps, count, total)
    yield Progress(total, total, f"Saved {path.name}")
    yield path


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    grey = bool(
        np.all(frames[..., 0] == frames[..., 1]) and np.all(frames[..., 1] == frames[..., 2])
    )
    pictures = [Image.fromarray(f[..., 0] if grey else f) for f in frames]
    pictures[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=max(20, round(1000 / fps)),
        loop=0,
        optimize=False,
    )


def _write_mp4(
    path: Path, frames: np.ndarray, fps: float, done: int, total: int
) -> Iterator[Progress]:
    import imageio.v2 as imageio

    writer = imageio.get_writer(
        str(path),
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        quality=8,
        pixelformat="yuv420p",
        macro_block_size=MACRO_BLOCK,
    )
    try:
        for i, frame in enumerate(frames):
            if i % 8 == 0:
                yield Progress(done + i, total, f"Encoding frame {i + 1} of {len(frames)}")
            writer.append_data(frame)
    finally:
        writer.close()


def strip_png(images: np.ndarray) -> np.ndarray:
    """The strip's frames side by side, ``(H, W, C)`` with the usual 2-pixel gaps."""
    return make_grid(images, nrow=len(images))
