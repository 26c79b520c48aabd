"""GUI frame latency: from a slider change to the new pixels painted on screen.

The measurement drives the real window offscreen, with the threaded engine the app uses:
it moves the finest level's direction slider (the edit the level cache speeds up: the
coarser levels are reused) and waits until the samples view has painted the frame made for
that position: first its first pixels (with progressive rendering, the selected image), then
the whole grid. A second series moves the slider again as soon as the first pixels are on
screen, as a drag does, so the rest of each grid is preempted.

``python -m explorer_bench.gui [--checkpoint CKPT | --preset NAME] [--json] [--quick]``
prints the figures (``--preset``: a model of that architecture with random weights; the
timing does not depend on the weights); ``realnvp bench`` runs it that way, in a child
process, so ``core`` never loads Qt. :func:`measure_gui_latency` is the measurement itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import HelpFormatter
from core.training.timing import p50, p95

SLIDER_POSITIONS = (40, -40)  # in hundredths of the level's typical latent norm
WINDOW_SIZE = (1320, 820)


@contextlib.contextmanager
def bench_window(
    checkpoint: str | os.PathLike | None, *, probe_devices: bool = True, **engine_options: Any
) -> Iterator[Any]:
    """The real main window, offscreen, over throwaway settings (never the user's), with
    ``checkpoint`` open (``None``: what the app opens without an argument); closed at the
    end. ``engine_options`` go to :class:`~explorer.engine.render.RenderEngine`."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from explorer.engine.render import RenderEngine
    from explorer.main_window import MainWindow
    from explorer.settings import ExplorerSettings
    from explorer.theme import quiet_offscreen_messages

    quiet_offscreen_messages()
    app = QApplication.instance() or QApplication(["realnvp-bench"])
    with tempfile.TemporaryDirectory() as tmp:
        qsettings = QSettings(str(Path(tmp) / "bench.ini"), QSettings.Format.IniFormat)
        window = MainWindow(
            RenderEngine(**engine_options),
            ExplorerSettings(qsettings),
            probe_devices=probe_devices,
        )
        try:
            if checkpoint is None:
                window.open_default()
            elif not window.open_checkpoint(checkpoint):
                raise ValueError(window.last_error)
            yield window
        finally:
            window.close()
            app.processEvents()


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
    plan: Any = None,
    report: dict | None = None,
    graphs: bool = True,
) -> dict[str, float]:
    """Slider-to-pixels latency over ``repeats`` moves, in milliseconds: ``p50_ms`` and
    ``p95_ms`` to the first pixels of the new frame, ``whole_grid_p50_ms`` and
    ``whole_grid_p95_ms`` to the whole grid, ``drag_p50_ms`` and ``drag_p95_ms`` to the first
    pixels when each move follows the previous one's first pixels at once.

    ``checkpoint=None`` opens what the app opens without an argument: the bundled model,
    or an untrained random model of the same architecture when it is missing. ``plan``: the
    engine's :class:`~explorer.engine.plan.RenderPlan` (default: measured after loading,
    and waited for). ``report``: a dict that receives the plan used (``"plan"``).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QEventLoop, QTimer

    with bench_window(
        checkpoint,
        probe_devices=False,
        device=device,
        num_threads=num_threads,
        compile=compile,
        plan=plan,
        graphs=graphs,
    ) as window:
        window.engine.cache_enabled = use_cache
        window.engine.wait_for_compile()  # measure the steady state, not the build
        wait_until(lambda: not window.engine.measuring, timeout_s * 10)
        if report is not None:
            report["plan"] = window.engine.plan
        window.state.set_n_images(n_images)
        window.resize(*WINDOW_SIZE)
        window.show()
        view = window.samples_panel.view
        slider = window.levels_panel.rows[0].offset.slider

        def wait_for(request_id: int, whole: bool = False) -> None:
            def done() -> bool:
                painted = view.painted_complete_id if whole else view.painted_frame_id
                return painted >= request_id

            if done():
                return
            loop = QEventLoop()

            def painted(_frame_id: int) -> None:
                if done():
                    loop.quit()

            view.frame_painted.connect(painted)
            timer = QTimer()
            timer.setSingleShot(True)
            timer.timeout.connect(loop.quit)
            timer.start(int(timeout_s * 1000))
            loop.exec()
            view.frame_painted.disconnect(painted)
            if not done():
                raise TimeoutError(f"no frame painted within {timeout_s} s")

        wait_for(window.last_request_id, whole=True)
        first: list[float] = []
        whole: list[float] = []
        for i in range(warmup + repeats):
            position = SLIDER_POSITIONS[i % len(SLIDER_POSITIONS)]
            start = time.perf_counter()
            slider.setValue(position)
            wait_for(window.last_request_id)
            first_ms = (time.perf_counter() - start) * 1000.0
            wait_for(window.last_request_id, whole=True)
            if i >= warmup:
                first.append(first_ms)
                whole.append((time.perf_counter() - start) * 1000.0)
        drag: list[float] = []
        for i in range(warmup + repeats):  # the next move as soon as pixels show
            start = time.perf_counter()
            slider.setValue(SLIDER_POSITIONS[i % len(SLIDER_POSITIONS)] + i % 7)
            wait_for(window.last_request_id)
            if i >= warmup:
                drag.append((time.perf_counter() - start) * 1000.0)
        wait_for(window.last_request_id, whole=True)
    return {
        "p50_ms": p50(first),
        "p95_ms": p95(first),
        "whole_grid_p50_ms": p50(whole),
        "whole_grid_p95_ms": p95(whole),
        "drag_p50_ms": p50(drag),
        "drag_p95_ms": p95(drag),
    }


def wait_until(condition: Any, timeout_s: float, poll_s: float = 0.01) -> None:
    """Run Qt's event loop until ``condition()`` holds (or the time is up), sleeping
    ``poll_s`` between turns."""
    from PySide6.QtWidgets import QApplication

    deadline = time.perf_counter() + timeout_s
    while not condition() and time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(poll_s)


@contextlib.contextmanager
def random_checkpoint(preset_name: str, seed: int = 0) -> Iterator[Path]:
    """A temporary checkpoint of the ``preset_name`` architecture with random weights
    (moved off the identity start, as the explorer's untrained model), for timing."""
    import torch

    from core.bench import random_model
    from core.files.checkpoint import save_checkpoint
    from core.flow.model import preset
    from explorer.engine.devices import set_thread_team

    # One thread, as the app's GUI thread computes: a thread team made here would slow
    # every render-thread frame measured after it (see set_thread_team).
    set_thread_team(1)
    model = random_model(preset(preset_name), torch.device("cpu"), seed)
    with tempfile.TemporaryDirectory() as tmp:
        yield save_checkpoint(
            Path(tmp) / f"{preset_name}-random.pt", model, meta={"dataset": "random"}
        )


def measure_map(
    checkpoint: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    n_map: int = 2000,
    repeats: int = 30,
    *,
    warmup: int = 3,
    num_threads: int | None = None,
    device: str = "auto",
    timeout_s: float = 900.0,
) -> dict[str, float]:
    """The latent map: seconds to compute a map of ``n_map`` test images (load, encode,
    principal components; the job runs on its worker thread as in the app), then pointer
    move to pixels while dragging the current image on the map (one image, the map's
    default level), ``{"map_images", "map_s", "p50_ms", "p95_ms"}``."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QEvent, QEventLoop, QPointF, Qt, QTimer
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    with bench_window(checkpoint, device=device, num_threads=num_threads) as window:
        window.resize(*WINDOW_SIZE)
        window.show()
        panel = window.map_panel
        window.show_tab(panel)
        panel.set_data_dir(data_dir)
        panel.count.setValue(n_map)
        view = window.samples_panel.view

        def wait(done, what: str) -> None:
            loop = QEventLoop()
            timer = QTimer()
            timer.timeout.connect(lambda: done() and loop.quit())
            timer.start(1)
            deadline = QTimer()
            deadline.setSingleShot(True)
            deadline.timeout.connect(loop.quit)
            deadline.start(int(timeout_s * 1000))
            if not done():
                loop.exec()
            timer.stop()
            if not done():
                raise TimeoutError(f"no {what} within {timeout_s} s")

        start = time.perf_counter()
        task = panel.compute()
        wait(lambda: task is None or task.finished, "map")
        map_s = time.perf_counter() - start
        if panel.map is None:
            raise ValueError(panel.status.text())
        xs, ys = panel.map.points[:, 0], panel.map.points[:, 1]
        viewport = panel.view.viewport()
        a = panel.view.viewport_point(float(np.percentile(xs, 20)), float(np.percentile(ys, 20)))
        b = panel.view.viewport_point(float(np.percentile(xs, 80)), float(np.percentile(ys, 80)))

        def send(kind, pos: QPointF, buttons) -> None:
            button = (
                Qt.MouseButton.NoButton
                if kind == QEvent.Type.MouseMove
                else Qt.MouseButton.LeftButton
            )
            event = QMouseEvent(
                kind,
                pos,
                QPointF(viewport.mapToGlobal(pos.toPoint())),
                button,
                buttons,
                Qt.KeyboardModifier.NoModifier,
            )
            QApplication.sendEvent(viewport, event)

        left = Qt.MouseButton.LeftButton
        # Make a test image the current one, then press on empty space (the plot's
        # margin beyond the last point), which starts a drag, and drag through the cloud.
        panel.show_point(0)
        empty = panel.view.viewport_point(
            float(xs.max() + 0.04 * np.ptp(xs)), float(ys.max() + 0.04 * np.ptp(ys))
        )
        send(QEvent.Type.MouseButtonPress, empty, left)
        wait(lambda: view.painted_frame_id >= window.last_request_id, "frame")
        times: list[float] = []
        for i in range(warmup + repeats):
            t = (i % 9 + 1) / 9.0  # never the same position twice in a row
            pos = a + (b - a) * (t if (i // 9) % 2 == 0 else 1 - t + 1 / 9.0)
            before = window.last_request_id
            begin = time.perf_counter()
            send(QEvent.Type.MouseMove, pos, left)
            if window.last_request_id == before:
                raise ValueError("a pointer move on the map did not move the image")
            wait(lambda: view.painted_frame_id >= window.last_request_id, "frame")
            if i >= warmup:
                times.append((time.perf_counter() - begin) * 1000.0)
        send(QEvent.Type.MouseButtonRelease, b, Qt.MouseButton.NoButton)
    return {
        "map_images": len(panel.map),
        "map_s": map_s,
        "p50_ms": p50(times),
        "p95_ms": p95(times),
    }


def describe_model(checkpoint: str | os.PathLike | None) -> str:
    from explorer.settings import DEFAULT_CHECKPOINT

    if checkpoint is not None:
        return str(checkpoint)
    if DEFAULT_CHECKPOINT.is_file():
        return f"{DEFAULT_CHECKPOINT} (bundled)"
    return "untrained random model, mnist-small architecture (bundled model not found)"


def one_image_decode_ms(
    checkpoint: str | os.PathLike | None,
    plan: Any,
    repeats: int,
    device: str = "auto",
    threads: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """The explorer's one-image decode, as the app runs it: a threaded engine whose model
    the GUI thread opened, one-image frames without the level cache on its render thread
    (the frame's own time, not its delivery), ``p50_ms`` and ``p95_ms`` with the threads of
    ``plan``. ``by_threads``: the p50 with each of ``threads`` (default 1 and every core),
    the thread counts alternating frame by frame, so ``realnvp bench`` can set it beside
    its own one-image decode at the same count (``gui.<name>.parity``)."""
    from dataclasses import replace

    from PySide6.QtWidgets import QApplication

    from explorer.engine.plan import thread_candidates
    from explorer.engine.render import RenderEngine, RenderRequest
    from explorer.settings import DEFAULT_CHECKPOINT

    app = QApplication.instance() or QApplication(["realnvp-bench"])
    counts = tuple(dict.fromkeys((plan.threads, *(threads or thread_candidates()))))
    engine = RenderEngine(device=device, threaded=True, plan=plan)
    engine.cache_enabled = False
    frames: list[Any] = []
    engine.frame_rendered.connect(frames.append)
    times: dict[int, list[float]] = {t: [] for t in counts}
    try:
        path = checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT
        info = engine.open_checkpoint(path) if Path(path).is_file() else engine.open_random()
        rng = np.random.default_rng(0)
        for i in range(2 + repeats):
            for count in counts:
                engine.plan = replace(plan, threads=count)
                latents = [
                    rng.standard_normal((1, *s), dtype=np.float32) for s in info.latent_shapes
                ]
                frames.clear()
                engine.submit(RenderRequest(i, info.model_id, tuple(latents)))
                wait_until(lambda: bool(frames), 60.0)
                if not frames:
                    raise TimeoutError("the engine rendered no frame within 60 s")
                if i >= 2:
                    times[count].append(frames[-1].elapsed_ms)
    finally:
        engine.shutdown()
        app.processEvents()
    own = times[plan.threads]
    return {
        "p50_ms": p50(own),
        "p95_ms": p95(own),
        "by_threads": {str(t): round(p50(v), 3) for t, v in times.items()},
    }


def plan_summary(plan: Any) -> dict:
    """The render plan as JSON: threads, measured decode times, whether a 16-image grid
    renders progressively and in chunks of how many."""
    grid = 16
    return {
        "threads": plan.threads,
        "decode_ms": {
            str(t): {str(b): ms for b, ms in f.items()} for t, f in plan.decode_ms.items()
        },
        "progressive_16": plan.progressive(grid),
        "chunk_16": plan.chunk_size(grid - 1) if plan.progressive(grid) else None,
        "budget_ms": plan.budget_ms,
        "precision": plan.precision,
    }


def run_suite(
    checkpoint: str | os.PathLike | None,
    repeats: int = 30,
    num_threads: int | None = None,
    device: str = "auto",
    image_counts: tuple[int, ...] = (1, 16),
    compile: bool = False,
    baseline: bool = False,
    model_name: str | None = None,
    graphs: bool = True,
    map_data_dir: str | os.PathLike | None = None,
    map_images: int = 2000,
) -> dict:
    """Every figure the explorer reports, as a JSON-ready dict::

    {"model": ..., "images_1": {"cache": {"p50_ms", "p95_ms", "whole_grid_p50_ms", ...},
     "no_cache": {...}}, "images_16": {...}, "decode_1": {"p50_ms", "p95_ms"},
     "plan": {...}, "threads": ..., "repeats": ...,
     "map": {"map_images", "map_s", "p50_ms", "p95_ms"},   (with ``map_data_dir``)
     "draft_drag": {...}}   (16 images on the CPU: explorer_bench.drafts.measure_draft_drag)

    The engine's render plan is measured once, in the first window, and reused by the
    others. ``baseline``: also ``whole_frames`` beside ``cache`` (interleaved move series):
    the cached figures with whole frames at the fixed default thread count, as the engine
    rendered before render plans.
    """
    from explorer.engine.plan import default_plan
    from explorer.engine.render import interactive_threads

    report: dict = {"model": model_name or describe_model(checkpoint), "repeats": repeats}
    plan = None
    warmup = 1 if repeats < 10 else 3
    for n_images in image_counts:
        figures: dict = {}
        # The whole-frames baseline sits between the others, so the series alternate.
        variants = ["cache", "whole_frames", "no_cache"] if baseline else ["cache", "no_cache"]
        for name in variants:
            used: dict = {}
            chosen = plan
            if name == "whole_frames":
                chosen = default_plan(num_threads or interactive_threads(), num_threads is not None)
            figures[name] = measure_gui_latency(
                checkpoint,
                n_images,
                name != "no_cache",
                repeats,
                warmup=warmup,
                num_threads=num_threads,
                device=device,
                compile=compile,
                plan=chosen,
                report=used,
                graphs=graphs,
            )
            if plan is None:
                plan = used["plan"]
        report[f"images_{n_images}"] = figures
    if map_data_dir is not None:
        report["map"] = measure_map(
            checkpoint,
            map_data_dir,
            map_images,
            repeats,
            warmup=warmup,
            num_threads=num_threads,
            device=device,
        )
    report["decode_1"] = one_image_decode_ms(checkpoint, plan, repeats, device)
    report["plan"] = plan_summary(plan)
    report["threads"] = plan.threads
    report["compile"] = compile
    report["graphs"] = graphs
    if 16 in image_counts and plan.device == "cpu":
        from explorer_bench.drafts import measure_draft_drag

        # A short driven drag each way (python -m explorer_bench.drafts runs a longer one).
        report["draft_drag"] = measure_draft_drag(
            checkpoint, drags=2, moves=4 if repeats < 10 else 8, plan=plan
        )
    if 16 in image_counts:
        first = report["images_16"]["cache"]["p95_ms"]
        report["first_pixels_16_p95_over_decode_1_p50"] = round(
            first / report["decode_1"]["p50_ms"], 3
        )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m explorer_bench.gui",
        description=__doc__.splitlines()[0].replace("``", ""),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", nargs="?", help="model (default: the bundled model)")
    parser.add_argument("--checkpoint", dest="checkpoint_option", metavar="CKPT", help="model")
    parser.add_argument(
        "--preset", help="a model of this architecture with random weights (e.g. cifar10)"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed frames per figure")
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 30")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where to render: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps",
    )
    parser.add_argument(
        "--images", type=int, nargs="+", default=[1, 16], help="grid sizes (default: 1 16)"
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also whole frames at the default thread count, interleaved (before render plans)",
    )
    parser.add_argument(
        "--compile",
        choices=("on", "off"),
        default="off",
        help="the engine's background torch.compile (as realnvp-explorer --compile), "
        "measured once it is built",
    )
    parser.add_argument(
        "--graphs",
        choices=("on", "off"),
        default="on",
        help="CUDA graphs on a GPU (as realnvp-explorer --graphs)",
    )
    parser.add_argument(
        "--data-dir",
        help="also time the latent map: computing it from the data set's test images in this "
        "folder, and dragging on it (pointer move to pixels)",
    )
    parser.add_argument(
        "--map-images", type=int, default=2000, help="with --data-dir: test images in the map"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint_option or args.checkpoint
    if checkpoint and args.preset:
        parser.error("give a checkpoint or --preset, not both")
    try:
        with (
            random_checkpoint(args.preset) if args.preset else contextlib.nullcontext(checkpoint)
        ) as path:
            report = run_suite(
                path,
                repeats=5 if args.quick else args.repeats,
                num_threads=args.threads,
                device=args.device,
                image_counts=tuple(args.images),
                compile=args.compile == "on",
                baseline=args.baseline,
                model_name=f"{args.preset} preset, random weights" if args.preset else None,
                graphs=args.graphs == "on",
                map_data_dir=args.data_dir,
                map_images=args.map_images,
            )
    except (ValueError, TimeoutError) as exc:
        print(f"explorer_bench.gui: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"GUI latency, slider change to pixels on screen; model: {report['model']}")
    plan = report["plan"]
    print(
        f"render threads: {plan['threads']}, {report['repeats']} moves per figure; "
        f"one-image decode p50 {report['decode_1']['p50_ms']:.1f} ms "
        f"p95 {report['decode_1']['p95_ms']:.1f} ms"
    )
    print(
        f"{'images':>6}  {'variant':>12}  {'first p50':>9}  {'first p95':>9}  "
        f"{'grid p50':>9}  {'grid p95':>9}  {'drag p95':>9}"
    )
    for key, figures in report.items():
        if key.startswith("images_"):
            for variant, f in figures.items():
                print(
                    f"{key.removeprefix('images_'):>6}  {variant:>12}  {f['p50_ms']:>9.1f}  "
                    f"{f['p95_ms']:>9.1f}  {f['whole_grid_p50_ms']:>9.1f}  "
                    f"{f['whole_grid_p95_ms']:>9.1f}  {f['drag_p95_ms']:>9.1f}"
                )
    if "map" in report:
        m = report["map"]
        print(f"latent map of {m['map_images']} test images computed in {m['map_s']:.1f} s")
        print(
            f"{'1':>6}  {'map drag':>12}  {m['p50_ms']:>9.1f}  {m['p95_ms']:>9.1f}"
            "   (pointer move to pixels, one image)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
