"""Draft frames during a drag: how fast a drag's frames come with drafts and without, and
when the exact frame arrives after the last move.

The measurement drives the real window offscreen with the threaded engine the app uses and
its measured render plan. A drag is a series of moves of one slider (the finest level's
direction slider, whose frames reuse the coarser levels from the level cache, or the
temperature, whose frames decode every level), each sent once the previous move's pixels
are painted. Drags with drafts and with drafts turned off (every frame float32, as before)
alternate, so both see the same load from the rest of the machine. The first move of a
drag is a new edit and always exact: it is not timed.

``python -m explorer_bench.drafts [CKPT | --preset NAME] [--json] [--drags N] [--moves N]``
prints ``render.draft`` (:func:`core.bench.render_drafts` at the plan's thread count: the
decode alone, interleaved, and the draft test's figures) and ``gui.draft_drag`` (per
slider: ``draft_frame_p50_ms`` / ``float32_frame_p50_ms``, the frame time the status bar
shows, and their ``frame_ratio``; ``draft_p50_ms`` / ``float32_p50_ms`` from a move to its
pixels painted and their ``ratio``, p95s, and
``exact_after_last_move_p50_ms`` / ``_max_ms``: from the last move to the exact frame
reaching the window, with drafts). ``realnvp bench`` runs a short drag in its GUI figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from core.training.timing import p50, p95
from explorer_bench import bench_parser
from explorer_bench.gui import WINDOW_SIZE, bench_window, random_checkpoint, wait_until

# Positions a drag moves through, in the slider's steps: never the same twice in a row.
DRAG_STEPS = {"offset": (-30, 30, 5), "temperature": (60, 100, 4)}


def _wait(signal: Any, done: Any, timeout_s: float) -> None:
    """Run Qt's event loop until ``done()`` holds, waking on ``signal``."""
    from PySide6.QtCore import QEventLoop, QTimer

    if done():
        return
    loop = QEventLoop()

    def check(*_args: Any) -> None:
        if done():
            loop.quit()

    signal.connect(check)
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(loop.quit)
    timer.start(int(timeout_s * 1000))
    loop.exec()
    signal.disconnect(check)
    if not done():
        raise TimeoutError(f"no frame within {timeout_s} s")


def _drag(
    window: Any, slider: Any, positions: list[int], timeout_s: float, screenshot: str | None
) -> tuple[list[float], list[float], float]:
    """One drag through ``positions``: the ms of each move after the first to its pixels
    painted, the frame times of those moves' frames (``Frame.elapsed_ms``, the status
    bar's figure), and the ms from the last move to the exact frame in the window.
    ``screenshot``: a PNG of the window as the last move's draft shows."""
    view = window.samples_panel.view
    window.state.end_edit()  # a new drag: its first move is exact
    times: list[float] = []
    frames: list[Any] = []
    start = time.perf_counter()
    for i, position in enumerate(positions):
        if i == 1:
            window.engine.frame_rendered.connect(frames.append)
        start = time.perf_counter()
        slider.setValue(position)
        painted = lambda: view.painted_frame_id >= window.last_request_id  # noqa: E731
        _wait(view.frame_painted, painted, timeout_s)
        if i:
            times.append((time.perf_counter() - start) * 1000.0)
    if len(positions) > 1:
        window.engine.frame_rendered.disconnect(frames.append)
    shown = window.shown_frame
    if screenshot and shown is not None and shown.draft:
        window.grab().save(screenshot)
    drawn = [f.elapsed_ms for f in frames if f.target == "samples"]

    def exact() -> bool:
        frame = window.last_frame
        return frame is not None and frame.request_id == window.last_request_id

    _wait(window.frame_shown, exact, timeout_s)
    return times, drawn, (time.perf_counter() - start) * 1000.0


def measure_draft_drag(
    checkpoint: str | None,
    drags: int = 6,
    moves: int = 12,
    n_images: int = 16,
    sliders: tuple[str, ...] = ("offset", "temperature"),
    timeout_s: float = 120.0,
    report: dict | None = None,
    plan: Any = None,
    screenshot: str | None = None,
) -> dict[str, Any]:
    """Per slider: ``draft_frame_p50_ms``, ``float32_frame_p50_ms`` and ``frame_ratio`` (the
    frame time, ``Frame.elapsed_ms`` as the status bar shows it, of the timed moves' frames),
    ``draft_p50_ms``, ``float32_p50_ms``, ``ratio`` (move to pixels painted, draft / float32),
    ``draft_p95_ms``, ``float32_p95_ms``, ``exact_after_last_move_p50_ms`` and
    ``exact_after_last_move_max_ms`` (with drafts), ``drafts`` (draft frames drawn) and
    ``moves`` (timed moves each way); ``skipped`` (why) where the plan draws no drafts of
    ``n_images``. ``plan``: the engine's render plan (default: measured after loading, and
    waited for); ``report`` receives the plan used (``"plan"``). ``screenshot``: a PNG of
    the window showing a draft, taken in the last drag with drafts."""
    with bench_window(checkpoint, probe_devices=False, device="cpu", plan=plan) as window:
        engine = window.engine
        wait_until(lambda: not engine.measuring, timeout_s * 10)
        if report is not None:
            report["plan"] = engine.plan
        window.state.set_n_images(n_images)
        window.resize(*WINDOW_SIZE)
        window.show()
        controls = {
            "offset": window.levels_panel.rows[0].offset.slider,
            "temperature": window.samples_panel.temperature.slider,
        }
        out: dict[str, Any] = {}
        if not engine.plan.draft_for(n_images):
            return {"skipped": f"no drafts for {n_images} images: {engine.plan.draft_note}"}
        for name in sliders:
            low, high, step = DRAG_STEPS[name]
            path = list(range(low, high, step)) + list(range(high, low, -step))
            positions = [path[i % len(path)] for i in range(1 + moves)]
            times: dict[str, list[float]] = {"draft": [], "float32": []}
            frame_ms: dict[str, list[float]] = {"draft": [], "float32": []}
            exact_after: list[float] = []
            drawn = engine.drafts_drawn
            for r in range(drags):
                # Alternating, and in turn first, so both see the same machine.
                for mode in ("draft", "float32") if r % 2 == 0 else ("float32", "draft"):
                    engine.drafts_enabled = mode == "draft"
                    last = r == drags - 1 and name == sliders[-1]
                    shot = screenshot if mode == "draft" and last else None
                    moved, drawn_ms, after = _drag(
                        window, controls[name], positions, timeout_s, shot
                    )
                    times[mode] += moved
                    frame_ms[mode] += drawn_ms
                    if mode == "draft":
                        exact_after.append(after)
            engine.drafts_enabled = True
            move_p50 = {m: p50(t) for m, t in times.items()}
            frame_p50 = {m: p50(t) for m, t in frame_ms.items()}
            out[name] = {
                "draft_frame_p50_ms": round(frame_p50["draft"], 2),
                "float32_frame_p50_ms": round(frame_p50["float32"], 2),
                "frame_ratio": round(frame_p50["draft"] / frame_p50["float32"], 3),
                "draft_p50_ms": round(move_p50["draft"], 2),
                "float32_p50_ms": round(move_p50["float32"], 2),
                "ratio": round(move_p50["draft"] / move_p50["float32"], 3),
                "draft_p95_ms": round(p95(times["draft"]), 2),
                "float32_p95_ms": round(p95(times["float32"]), 2),
                "exact_after_last_move_p50_ms": round(p50(exact_after), 2),
                "exact_after_last_move_max_ms": round(max(exact_after), 2),
                "drafts": engine.drafts_drawn - drawn,
                "moves": len(times["draft"]),
            }
    return out


def draft_plan_summary(plan: Any) -> dict:
    """The render plan's draft choice as JSON."""
    return {
        "threads": plan.threads,
        "drafts": {str(b): on for b, on in plan.drafts.items()},
        "note": plan.draft_note,
        "error": dict(plan.draft_error),
        "ms": {str(b): dict(ms) for b, ms in plan.draft_ms.items()},
    }


def render_figures(checkpoint: str | None, threads: int, repeats: int) -> dict[str, Any]:
    """:func:`core.bench.render_drafts` of the model at ``threads`` (run after the window
    has closed: this thread's team would slow the render thread's frames)."""
    import torch

    from core.bench import render_drafts
    from core.files.checkpoint import load_checkpoint
    from core.files.resources import bundled_model_path
    from core.flow.inference import fold_for_inference

    model, _ = load_checkpoint(checkpoint or bundled_model_path(), map_location="cpu")
    torch.set_num_threads(threads)
    out = render_drafts(fold_for_inference(model), (1, 16), repeats, torch.device("cpu"))
    return {"threads": threads, **out}


def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("drafts", __doc__.splitlines()[0])
    parser.add_argument(
        "--preset", help="a model of this architecture with random weights (e.g. cifar10)"
    )
    parser.add_argument("--drags", type=int, default=6, help="drags each way per slider")
    parser.add_argument("--moves", type=int, default=12, help="timed moves per drag")
    parser.add_argument("--repeats", type=int, default=20, help="decodes each way (render)")
    parser.add_argument(
        "--sliders",
        nargs="+",
        choices=sorted(DRAG_STEPS),
        default=["offset", "temperature"],
        help="which sliders to drag (default: offset temperature)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--screenshot", metavar="PNG", help="save the window as it shows a draft during a drag"
    )
    return parser


def describe_draft_drag(slider: str, f: dict[str, Any]) -> str:
    """One line of a driven drag's figures (``gui.<name>.draft_drag.<slider>``)."""
    return (
        f"{slider} drag, draft against float32 (p50): frame time {f['draft_frame_p50_ms']:.1f} "
        f"/ {f['float32_frame_p50_ms']:.1f} ms ({f['frame_ratio']:.2f}x), move to pixels "
        f"{f['draft_p50_ms']:.1f} / {f['float32_p50_ms']:.1f} ms ({f['ratio']:.2f}x; p95 "
        f"{f['draft_p95_ms']:.1f} / {f['float32_p95_ms']:.1f} ms; {f['moves']} moves, "
        f"{f['drafts']} drafts); the exact frame {f['exact_after_last_move_p50_ms']:.1f} ms "
        f"after the last move (at most {f['exact_after_last_move_max_ms']:.1f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint and args.preset:
        parser.error("give a checkpoint or --preset, not both")
    used: dict = {}
    try:
        with (
            random_checkpoint(args.preset)
            if args.preset
            else contextlib.nullcontext(args.checkpoint)
        ) as path:
            drag = measure_draft_drag(
                path,
                args.drags,
                args.moves,
                sliders=tuple(args.sliders),
                report=used,
                screenshot=args.screenshot,
            )
            plan = used["plan"]
            render = render_figures(path, plan.threads, args.repeats)
    except (ValueError, TimeoutError) as exc:
        print(f"explorer_bench.drafts: {exc}", file=sys.stderr)
        return 1
    model = f"{args.preset} preset, random weights" if args.preset else args.checkpoint or "bundled"
    report = {
        "model": model,
        "plan": draft_plan_summary(plan),
        "render": {"draft": render},
        "gui": {"draft_drag": drag},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    from core.bench import describe_drafts

    print(f"Draft frames, model: {model}; render threads {plan.threads}")
    print(f"plan: {plan.draft_note}")
    print(f"render (decode alone, interleaved): {describe_drafts(render)}")
    if "skipped" in drag:
        print(f"drag: {drag['skipped']}")
    for name, f in drag.items():
        if name != "skipped":
            print(describe_draft_drag(name, f))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
