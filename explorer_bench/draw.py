"""Stroke to answer: from letting go of a stroke on the Draw tab to the model's answer shown.

``python -m explorer_bench.draw [CHECKPOINT] [--strokes N] [--json]`` (default: the bundled
model) drives the real window offscreen with the threaded engine the app uses: it draws
strokes on the canvas with real mouse events (press, moves, release) and times each from
the release to the tab showing the answer for that stroke (its ``answer_shown`` signal:
encode, bits/dim, likelihood map and verdict, nearest classes, reconstruction, trace).
``realnvp bench`` runs it in a
child process and reports ``draw.stroke_to_answer``. Figures only; nothing here asserts a
time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from core.training.timing import p50, percentiles
from explorer_bench import bench_parser
from explorer_bench.gui import bench_window, wait_until

WINDOW_SIZE = (1366, 768)


def stroke_points(i: int, size: int) -> list[tuple[float, float]]:
    """A short curved stroke across the canvas, a different one for each ``i``."""
    angle = 0.7 * i
    cx, cy, r = size / 2, size / 2, size * 0.3
    return [
        (cx + r * math.cos(angle + t), cy + r * math.sin(angle + 1.3 * t))
        for t in np.linspace(0.0, 2.0, 12)
    ]


def measure_stroke_to_answer(
    checkpoint: str | os.PathLike | None, strokes: int = 20, timeout_s: float = 60.0
) -> dict[str, float]:
    """``p50_ms``, ``p95_ms`` and ``n`` from stroke release to its answer shown, and the
    worker's own encode time (``answer_p50_ms``) for comparison."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtTest import QTest

    with bench_window(checkpoint, probe_devices=False) as window:
        window.resize(*WINDOW_SIZE)
        window.show()
        panel = window.draw_panel
        window.show_explorer_tab(panel)
        wait_until(lambda: not window.engine.measuring, timeout_s)
        view = panel.view
        left = Qt.MouseButton.LeftButton

        def point(x: float, y: float) -> QPoint:
            rect = view.image_rect()
            scale = rect.width() / panel.canvas.size
            return QPoint(round(rect.left() + x * scale), round(rect.top() + y * scale))

        # The answer's time is taken when the tab has shown it (``answer_shown``, emitted
        # after the heat map, reconstruction, classes and trace are set), not when a poll of
        # the event loop next notices it: a 10 ms poll added about 5 ms to every figure.
        shown_at: dict[int, float] = {}
        panel.answer_shown.connect(lambda edit: shown_at.setdefault(edit, time.perf_counter()))
        times, answer_ms = [], []
        for i in range(strokes + 2):  # two warm-up strokes
            points = stroke_points(i, panel.canvas.size)
            QTest.mousePress(view, left, pos=point(*points[0]))
            for p in points[1:]:
                QTest.mouseMove(view, point(*p))
            start = time.perf_counter()
            QTest.mouseRelease(view, left, pos=point(*points[-1]))
            edit = panel.canvas.edits
            wait_until(lambda e=edit: e in shown_at, timeout_s, poll_s=0.001)
            if edit not in shown_at:
                raise TimeoutError(f"no answer for stroke {i} within {timeout_s:.0f} s")
            if i >= 2:
                times.append((shown_at[edit] - start) * 1000.0)
                answer_ms.append(panel.last_answer.elapsed_ms)
            if i % 6 == 5:
                # A fresh canvas now and then; its own answer is awaited, as a person takes
                # longer than one answer to start the next stroke (not waiting made every
                # sixth stroke wait for the blank canvas's answer: 78 against 40 ms).
                panel.clear()
                wait_until(lambda e=panel.canvas.edits: e in shown_at, timeout_s, poll_s=0.001)
        figures = percentiles(times, "_ms")
        figures["answer_p50_ms"] = round(p50(answer_ms), 3)
        figures["dropped"] = panel.worker.dropped
        return figures


def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("draw", __doc__.splitlines()[0])
    parser.add_argument("--strokes", type=int, default=20, help="strokes drawn and timed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        figures = measure_stroke_to_answer(args.checkpoint, args.strokes)
    except (ValueError, TimeoutError) as exc:
        print(f"explorer_bench.draw: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"stroke_to_answer": figures}))
    else:
        print(
            f"stroke to answer: p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms "
            f"over {figures['n']} strokes (the worker's encode p50 "
            f"{figures['answer_p50_ms']:.1f} ms; {figures['dropped']} requests replaced by "
            "newer ones)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
