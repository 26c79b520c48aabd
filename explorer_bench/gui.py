"""GUI frame latency: from a slider change to the new pixels painted on screen.

The measurement drives the real window offscreen, with the threaded engine the app uses:
it moves the finest level's direction slider (the edit the level cache speeds up: the
coarser levels are reused) and waits until the samples view has painted the frame made for
that position. ``python -m explorer_bench.gui [CHECKPOINT] [--json] [--quick]`` prints the
figures; ``realnvp bench`` runs it that way, in a child process, so ``core`` never loads
Qt. :func:`measure_gui_latency` is the measurement itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SLIDER_POSITIONS = (40, -40)  # in hundredths of the level's typical latent norm
WINDOW_SIZE = (1320, 820)


def measure_gui_latency(
    checkpoint: str | os.PathLike | None,
    n_images: int = 1,
    use_cache: bool = True,
    repeats: int = 30,
    *,
    warmup: int = 3,
    num_threads: int | None = None,
    device: str = "auto",
    timeout_s: float = 60.0,
    compile: bool = False,
) -> dict[str, float]:
    """``{"p50_ms", "p95_ms"}`` of slider-to-pixels latency over ``repeats`` moves.

    ``checkpoint=None`` opens what the app opens without an argument: the bundled model,
    or an untrained random model of the same architecture when it is missing.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QEventLoop, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from explorer.engine.render import RenderEngine
    from explorer.main_window import MainWindow
    from explorer.settings import ExplorerSettings
    from explorer.theme import quiet_offscreen_messages

    quiet_offscreen_messages()
    app = QApplication.instance() or QApplication(["realnvp-bench"])
    with tempfile.TemporaryDirectory() as tmp:
        # Never the user's settings: a throwaway INI file.
        qsettings = QSettings(str(Path(tmp) / "bench.ini"), QSettings.Format.IniFormat)
        window = MainWindow(
            RenderEngine(device=device, num_threads=num_threads, compile=compile),
            ExplorerSettings(qsettings),
        )
        try:
            if checkpoint is None:
                window.open_default()
            elif not window.open_checkpoint(checkpoint):
                raise ValueError(window.last_error)
            window.engine.cache_enabled = use_cache
            window.engine.wait_for_compile()  # measure the steady state, not the build
            window.state.set_n_images(n_images)
            window.resize(*WINDOW_SIZE)
            window.show()
            view = window.samples_panel.view
            slider = window.levels_panel.rows[0].offset.slider

            def wait_for(request_id: int) -> None:
                if view.painted_frame_id >= request_id:
                    return
                loop = QEventLoop()

                def painted(frame_id: int) -> None:
                    if frame_id >= request_id:
                        loop.quit()

                view.frame_painted.connect(painted)
                timer = QTimer()
                timer.setSingleShot(True)
                timer.timeout.connect(loop.quit)
                timer.start(int(timeout_s * 1000))
                loop.exec()
                view.frame_painted.disconnect(painted)
                if view.painted_frame_id < request_id:
                    raise TimeoutError(f"no frame painted within {timeout_s} s")

            wait_for(window.last_request_id)
            times: list[float] = []
            for i in range(warmup + repeats):
                position = SLIDER_POSITIONS[i % len(SLIDER_POSITIONS)]
                start = time.perf_counter()
                slider.setValue(position)
                wait_for(window.last_request_id)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
        finally:
            window.close()
            app.processEvents()
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
    }


def describe_model(checkpoint: str | os.PathLike | None) -> str:
    from explorer.settings import DEFAULT_CHECKPOINT

    if checkpoint is not None:
        return str(checkpoint)
    if DEFAULT_CHECKPOINT.is_file():
        return f"{DEFAULT_CHECKPOINT} (bundled)"
    return "untrained random model, mnist-small architecture (bundled model not found)"


def run_suite(
    checkpoint: str | os.PathLike | None,
    repeats: int = 30,
    num_threads: int | None = None,
    device: str = "auto",
    image_counts: tuple[int, ...] = (1, 16),
    compile: bool = False,
) -> dict:
    """Every figure the explorer reports, as a JSON-ready dict::

    {"model": ..., "images_1": {"cache": {"p50_ms", "p95_ms"}, "no_cache": {...}},
     "images_16": {...}, "threads": ..., "repeats": ...}
    """
    from explorer.engine.render import torch_threads

    report: dict = {"model": describe_model(checkpoint), "repeats": repeats}
    for n_images in image_counts:
        report[f"images_{n_images}"] = {
            "cache" if use_cache else "no_cache": measure_gui_latency(
                checkpoint,
                n_images,
                use_cache,
                repeats,
                warmup=1 if repeats < 10 else 3,
                num_threads=num_threads,
                device=device,
                compile=compile,
            )
            for use_cache in (True, False)
        }
    report["threads"] = torch_threads()
    report["compile"] = compile
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m explorer_bench.gui", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", nargs="?", help="model (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 30")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--compile",
        choices=("on", "off"),
        default="off",
        help="the engine's background torch.compile (as realnvp-explorer --compile), "
        "measured once it is built",
    )
    args = parser.parse_args(argv)
    try:
        report = run_suite(
            args.checkpoint,
            repeats=5 if args.quick else args.repeats,
            num_threads=args.threads,
            device=args.device,
            compile=args.compile == "on",
        )
    except (ValueError, TimeoutError) as exc:
        print(f"explorer_bench.gui: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"GUI latency, slider change to pixels on screen; model: {report['model']}")
    print(f"torch threads: {report['threads']}, {report['repeats']} moves per figure")
    print(f"{'images':>6}  {'cache':>8}  {'p50 ms':>8}  {'p95 ms':>8}")
    for key, figures in report.items():
        if key.startswith("images_"):
            for cache, f in figures.items():
                print(
                    f"{key.removeprefix('images_'):>6}  {cache:>8}  "
                    f"{f['p50_ms']:>8.1f}  {f['p95_ms']:>8.1f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
