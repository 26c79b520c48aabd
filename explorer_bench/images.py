"""Figures for your own images in the explorer: drop to reconstruction, encode, interpolation.

``python -m explorer_bench.images [CHECKPOINT] [--json] [--repeats N] [--threads N]``
drives the real window offscreen with the threaded engine the app uses:

- **drop to reconstruction**: from a real ``QDropEvent`` carrying a file to the samples view
  having painted the image's reconstruction (file decode, crop and resize, encode,
  bits/dim, render and paint), for a 28x28 PNG and a 1000x800 photo (JPEG);
- **file decode** (``core.files.images.load_image``) and **encode** (``RenderEngine.encode``:
  latents, reconstruction, error and bits/dim) measured apart, so the encode figure is the
  time after the file is decoded;
- **interpolation frame**: from moving the real A → B slider to the new frame painted;
- **folder import** (``--folder DIR``, or ``--mnist N``: the first N MNIST test digits
  written as PNGs from ``--data-dir``): a real ``QDropEvent`` of the folder to the import's
  end, as ``images_per_s``, and the GUI thread's ``longest_stall_ms`` meanwhile (the
  longest gap between two ticks of a 1 ms timer: how long the event loop could not
  answer the user).

Figures are percentiles over repeats; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import HelpFormatter
from core.training.timing import percentiles

WINDOW_SIZE = (1320, 820)
TARGETS_MS = {"encode_p95": 50.0, "interpolation_frame_p95": 33.0}


def digit_like(seed: int) -> np.ndarray:
    """A 28x28 grey stroke on black, a little different for each seed: ``(H, W)`` uint8."""
    rng = np.random.default_rng(seed)
    img = np.zeros((28, 28), np.float64)
    y, x = np.mgrid[0:28, 0:28]
    cx, cy, r = 14 + rng.normal(0, 1.5), 14 + rng.normal(0, 1.5), 7 + rng.normal(0, 1)
    ring = np.abs(np.hypot(x - cx, (y - cy) * 0.8) - r)
    img += np.clip(1.6 - ring, 0, 1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """Colour gradients, a disc and noise: ``(H, W, 3)`` uint8, compresses like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([0.5 + 0.4 * np.sin(3 * x + seed), 0.3 + 0.5 * y, 0.6 - 0.3 * x * y], -1)
    disc = (x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.04 + 0.01 * seed
    rgb[disc] = [0.9, 0.8, 0.2]
    rgb += rng.normal(0, 0.04, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def make_files(folder: Path) -> dict[str, list[Path]]:
    from PIL import Image

    files: dict[str, list[Path]] = {"digit_28x28_png": [], "photo_1000x800_jpeg": []}
    for seed in (0, 1):
        digit = folder / f"digit{seed}.png"
        Image.fromarray(digit_like(seed)).save(digit)
        files["digit_28x28_png"].append(digit)
        photo = folder / f"photo{seed}.jpg"
        Image.fromarray(photo_like(1000, 800, seed)).save(photo, quality=90)
        files["photo_1000x800_jpeg"].append(photo)
    return files


def mnist_folder(folder: Path, count: int, data_dir: str | os.PathLike) -> Path:
    """The first ``count`` MNIST test digits as 28x28 PNGs in ``folder``."""
    from PIL import Image

    from core.training.data import load_dataset

    test = load_dataset("mnist", data_dir, False)
    pixels = test.images[:count].numpy()  # (N, 1, 28, 28) uint8
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image[0]).save(folder / f"mnist_{i:05d}.png")
    return folder


def measure_folder_import(window: Any, folder: Path, timeout_s: float = 600.0) -> dict:
    """Drop ``folder`` on ``window`` (a real ``QDropEvent``) and wait for the import to
    end: ``images``, ``seconds``, ``images_per_s`` and ``longest_stall_ms``, the longest
    time the GUI thread's event loop went without running a 1 ms timer."""
    from PySide6.QtCore import QEventLoop, QMimeData, QPointF, Qt, QTimer, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    reports: list[Any] = []
    window.images.import_finished.connect(reports.append)
    ticks: list[float] = []
    ticker = QTimer()
    ticker.setInterval(1)
    ticker.timeout.connect(lambda: ticks.append(time.perf_counter()))
    loop = QEventLoop()
    window.images.import_finished.connect(lambda _report: loop.quit())
    deadline = QTimer()
    deadline.setSingleShot(True)
    deadline.timeout.connect(loop.quit)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    pos = QPointF(window.width() / 2, window.height() / 2)
    args = (Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    ticker.start()
    start = time.perf_counter()
    ticks.append(start)
    QApplication.sendEvent(
        window, QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, *args)
    )
    QApplication.sendEvent(window, QDropEvent(pos, Qt.DropAction.CopyAction, mime, *args))
    deadline.start(int(timeout_s * 1000))
    if not reports:
        loop.exec()
    seconds = time.perf_counter() - start
    ticker.stop()
    if not reports:
        raise TimeoutError(f"the import of {folder} did not end within {timeout_s} s")
    report = reports[-1]
    if report.error:
        raise ValueError(report.error)
    count = len(report.ids)
    gaps = np.diff(ticks)
    return {
        "images": count,
        "failures": len(report.failures),
        "seconds": round(seconds, 3),
        "images_per_s": round(count / seconds, 1),
        "longest_stall_ms": round(float(gaps.max()) * 1000.0, 1) if len(gaps) else None,
        "longest_stall_at_s": round(ticks[int(gaps.argmax())] - start, 2) if len(gaps) else None,
        "stalls_over_50_ms": int((gaps > 0.05).sum()),
    }


def run_images_bench(
    checkpoint: str | os.PathLike | None,
    repeats: int = 20,
    *,
    warmup: int = 2,
    num_threads: int | None = None,
    device: str = "auto",
    timeout_s: float = 60.0,
    folder: str | os.PathLike | None = None,
    folder_only: bool = False,
) -> dict:
    """Every figure, as a JSON-ready dict (see the module docstring)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QEventLoop, QMimeData, QPointF, Qt, QTimer, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    from core.files.images import load_image
    from explorer.engine.render import torch_threads
    from explorer_bench.gui import bench_window, describe_model

    report: dict = {"model": describe_model(checkpoint), "repeats": repeats}
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_window(checkpoint, device=device, num_threads=num_threads) as window,
    ):
        files = make_files(Path(tmp))
        window.resize(*WINDOW_SIZE)
        window.show()
        view = window.samples_panel.view
        info = window.engine.model_info
        report["image"] = f"{info.channels}x{info.image_size}x{info.image_size}"
        # Waiting sleeps in an event loop woken only by the signals that can end it:
        # a polling loop would hold the GIL against the worker threads it measures.
        wake_up = (
            view.frame_painted,
            window.images.image_shown,
            window.images.strip_shown,
        )

        def wait(done: Callable[[], bool], what: str) -> None:
            if done():
                return
            loop = QEventLoop()

            def check(*_args: object) -> None:
                if done():
                    loop.quit()

            for signal in wake_up:
                signal.connect(check)
            timer = QTimer()
            timer.setSingleShot(True)
            timer.timeout.connect(loop.quit)
            timer.start(int(timeout_s * 1000))
            loop.exec()
            for signal in wake_up:
                signal.disconnect(check)
            if not done():
                raise TimeoutError(f"{what} did not happen within {timeout_s} s")

        def painted() -> bool:
            return view.painted_frame_id >= window.last_request_id

        def idle() -> bool:  # the strip too: each drop starts from a quiet app
            images = window.images
            return painted() and images.strip_shown_id == images.strip_request_id

        wait(painted, "the first frame")
        if folder is not None:
            report["folder_import"] = measure_folder_import(window, Path(folder))
            report["folder"] = str(folder)
            report["device"] = window.engine.device_label
            report["threads"] = window.engine.plan.threads
        if folder_only:
            return report

        def drop(path: Path) -> None:
            mime = QMimeData()
            mime.setUrls([QUrl.fromLocalFile(str(path))])
            pos = QPointF(window.width() / 2, window.height() / 2)
            args = (Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
            enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, *args)
            QApplication.sendEvent(window, enter)
            QApplication.sendEvent(window, QDropEvent(pos, Qt.DropAction.CopyAction, mime, *args))

        shown: list[int] = []
        window.images.image_shown.connect(shown.append)
        drop_figures, decode_figures, encode_figures = {}, {}, {}
        for kind, paths in files.items():
            times = []
            for i in range(warmup + repeats):
                count = len(shown)
                start = time.perf_counter()
                drop(paths[i % 2])  # alternate, so no frame is a cache hit
                wait(lambda c=count: len(shown) > c and painted(), "the reconstruction")
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
                wait(idle, "the strip")
            drop_figures[kind] = percentiles(times, "_ms")
            decode_times, encode_times = [], []
            for i in range(warmup + repeats):
                start = time.perf_counter()
                pixels = load_image(paths[i % 2], info.channels, info.image_size)
                middle = time.perf_counter()
                window.engine.encode(pixels)
                end = time.perf_counter()
                if i >= warmup:
                    decode_times.append((middle - start) * 1000.0)
                    encode_times.append((end - middle) * 1000.0)
            decode_figures[kind] = percentiles(decode_times, "_ms")
            encode_figures[kind] = percentiles(encode_times, "_ms")
        report["drop_to_reconstruction"] = drop_figures
        report["file_decode"] = decode_figures
        report["encode"] = encode_figures
        # A and B are the last two dropped; drag the slider across, frame by frame.
        window.show_images_tab()
        slider = window.images.images_panel.t.slider
        positions = [*range(5, 100, 5), *range(95, 0, -5)]
        times = []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            slider.setValue(positions[i % len(positions)])
            wait(painted, "the interpolation frame")
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
        report["interpolation_frame"] = percentiles(times, "_ms")
        report["threads"] = torch_threads()
        report["device"] = window.engine.device_label
    worst_encode = max(f["p95_ms"] for f in report["encode"].values())
    report["targets"] = {
        "encode_p95_ms": TARGETS_MS["encode_p95"],
        "encode_met": worst_encode <= TARGETS_MS["encode_p95"],
        "interpolation_frame_p95_ms": TARGETS_MS["interpolation_frame_p95"],
        "interpolation_met": report["interpolation_frame"]["p95_ms"]
        <= TARGETS_MS["interpolation_frame_p95"],
    }
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m explorer_bench.images",
        description=__doc__.splitlines()[0].replace("``", ""),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", nargs="?", help="model (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per figure")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where to render: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps",
    )
    parser.add_argument("--folder", help="also time importing this folder (drop to done)")
    parser.add_argument(
        "--mnist",
        type=int,
        metavar="N",
        help="also time importing the first N MNIST test digits, written as PNGs from --data-dir",
    )
    parser.add_argument("--data-dir", default="data", help="where MNIST is (with --mnist)")
    parser.add_argument(
        "--folder-only", action="store_true", help="only the folder import (with --folder/--mnist)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.folder and args.mnist:
        parser.error("give --folder or --mnist, not both")
    if args.folder_only and not (args.folder or args.mnist):
        parser.error("--folder-only needs --folder or --mnist")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.folder
            if args.mnist:
                folder = mnist_folder(Path(tmp) / "mnist", args.mnist, args.data_dir)
            report = run_images_bench(
                args.checkpoint,
                args.repeats,
                num_threads=args.threads,
                device=args.device,
                folder=folder,
                folder_only=args.folder_only,
            )
    except (ValueError, TimeoutError) as exc:
        print(f"explorer_bench.images: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"Your images in the explorer; model: {report['model']} ({report['image']})")
    print(f"device: {report['device']}, torch threads: {report['threads']}, {args.repeats} repeats")
    if "folder_import" in report:
        f = report["folder_import"]
        print(
            f"folder import: {f['images']} images in {f['seconds']:.1f} s = "
            f"{f['images_per_s']:.0f} images/s; longest event-loop stall "
            f"{f['longest_stall_ms']:.0f} ms ({f['stalls_over_50_ms']} over 50 ms)"
        )
    if args.folder_only:
        return 0
    print(f"{'':34}{'p50 ms':>9}{'p95 ms':>9}")
    for key, title in (
        ("drop_to_reconstruction", "drop to reconstruction on screen"),
        ("file_decode", "file decode (load_image)"),
        ("encode", "encode (after decoding)"),
    ):
        for kind, f in report[key].items():
            print(f"{title + ', ' + kind.split('_')[0]:34}{f['p50_ms']:>9.1f}{f['p95_ms']:>9.1f}")
    f = report["interpolation_frame"]
    print(f"{'interpolation frame (slider)':34}{f['p50_ms']:>9.1f}{f['p95_ms']:>9.1f}")
    t = report["targets"]
    print(
        f"targets: encode p95 <= {t['encode_p95_ms']:.0f} ms "
        f"{'met' if t['encode_met'] else 'MISSED'}; interpolation frame p95 <= "
        f"{t['interpolation_frame_p95_ms']:.0f} ms "
        f"{'met' if t['interpolation_met'] else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
