"""``python -m explorer_bench.training``: what watching a run from the panel costs.

1. A real training run (MNIST) is started from the training panel, offscreen, and watched
   for ``--seconds`` while a 5 ms heartbeat timer records every gap in the GUI's event loop.
2. The very same trainer command then runs as a plain subprocess for the same number of
   steps, its stdout read at the end, while the same heartbeat runs in the idle GUI
   process: the baseline, which shows how much of a gap is the operating system giving
   the CPU to the trainers rather than the panel's own work.

Printed side by side: the trainer's images/s in both runs (the mean of its ``step``
events after the first, which holds the start-up), the longest gap and the 99th
percentile, and the CPU time the GUI process used per second of the run.
``--screenshot PATH`` saves the panel halfway through its run (outside the measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.cli import HelpFormatter

HEARTBEAT_MS = 5
DATA_CANDIDATES = ("../shared/data/mnist", "data/mnist", "data")


def build_parser() -> argparse.ArgumentParser:
    from explorer.training.process import PRESETS

    p = argparse.ArgumentParser(
        prog="python -m explorer_bench.training",
        description="What watching a run from the training panel costs: a real MNIST run "
        "watched offscreen with a 5 ms heartbeat, against the same trainer as a plain "
        "subprocess (the baseline); images/s, event-loop gaps and the GUI's CPU time.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--seconds", type=float, default=60.0, help="length of the panel's run, in seconds"
    )
    p.add_argument(
        "--data-dir", help=f"MNIST folder (default: the first of {', '.join(DATA_CANDIDATES)})"
    )
    p.add_argument(
        "--preset", default="mnist-small", choices=sorted(PRESETS), help="model size preset"
    )
    p.add_argument("--num-scales", type=int, help="instead of the preset's")
    p.add_argument("--mid-channels", type=int, help="instead of the preset's")
    p.add_argument("--num-blocks", type=int, help="instead of the preset's")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument(
        "--max-steps", type=int, default=100_000, help="the length the run is given (for the ETA)"
    )
    p.add_argument("--eval-every", type=int, default=200, help="steps between test evaluations")
    p.add_argument("--eval-limit", type=int, default=500, help="test images per evaluation")
    p.add_argument("--log-every", type=int, default=5, help="steps between progress events")
    p.add_argument("--threads", type=int, default=1, help="the trainer's CPU threads")
    p.add_argument(
        "--device", default="auto", help="the trainer's device: auto, cpu, cuda, cuda:N or mps"
    )
    p.add_argument("--screenshot", metavar="PATH", help="save the panel halfway through")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def model_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The preset's sizes, with any given on the command line instead."""
    from explorer.training.process import PRESETS

    sizes = dict(zip(("num_scales", "mid_channels", "num_blocks"), PRESETS[args.preset]))
    sizes.update({k: v for k in sizes if (v := getattr(args, k)) is not None})
    return sizes


def rate_of(events: list[dict[str, Any]]) -> float | None:
    """Mean images/s of the step events after the first (which includes start-up)."""
    rates = [e["images_per_s"] for e in events if e["event"] == "step"][1:]
    return statistics.fmean(rates) if rates else None


class Heartbeat:
    """A 5 ms precise timer; every gap between two beats is recorded, with the CPU time
    this process used meanwhile."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.gaps: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(self._beat)
        self._last = 0.0
        self._wall = self._cpu = 0.0

    def _beat(self) -> None:
        now = time.perf_counter()
        self.gaps.append((now - self._last) * 1000.0)
        self._last = now

    def start(self) -> None:
        self._last = time.perf_counter()
        self._wall -= time.perf_counter()
        self._cpu -= time.process_time()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self._wall += time.perf_counter()
        self._cpu += time.process_time()

    def figures(self) -> dict[str, Any]:
        gaps = self.gaps
        return {
            "beats": len(gaps),
            "longest_stall_ms": max(gaps) - HEARTBEAT_MS if gaps else None,
            "p99_gap_ms": statistics.quantiles(gaps, n=100)[98] if len(gaps) >= 100 else None,
            "gui_cpu_ms_per_s": 1000.0 * self._cpu / self._wall if self._wall else None,
        }


def run_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Wait inside Qt's event loop (sleeping here would be a stall of our own)."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    check = QTimer()
    check.setInterval(20)
    deadline = time.monotonic() + timeout_s
    check.timeout.connect(lambda: (condition() or time.monotonic() > deadline) and loop.quit())
    check.start()
    loop.exec()
    check.stop()
    return bool(condition())


def panel_run(args: argparse.Namespace, settings, screenshot: str | None) -> dict[str, Any]:
    from explorer.training.workspace import TrainingPanel

    panel = TrainingPanel(runs_dir=settings.out_dir.parent, probe_devices=False)
    panel.resize(1280, 820)
    panel.show()
    panel.form.apply(settings)
    panel.form.start_scan()
    if not run_until(panel.start_button.isEnabled, 120):
        raise SystemExit(f"training_bench: cannot start: {'; '.join(panel.problems())}")
    events: list[dict[str, Any]] = []
    panel.training_started.connect(lambda _out: panel.process.event_received.connect(events.append))
    heartbeat = Heartbeat()
    heartbeat.start()
    panel.start()
    started = time.monotonic()
    run_until(lambda: time.monotonic() - started > args.seconds / 2, args.seconds)
    if screenshot:
        heartbeat.stop()  # the grab is the bench's own work, not the panel's
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        panel.grab().save(screenshot)
        heartbeat.start()
    run_until(lambda: time.monotonic() - started > args.seconds or not panel.running, args.seconds)
    panel.stop()
    run_until(lambda: not panel.running, 300)
    heartbeat.stop()
    panel.close()
    done = [e for e in events if e["event"] == "done"]
    return {
        "steps": done[-1]["step"] if done else panel.last_step,
        "images_per_s": rate_of(events),
        **heartbeat.figures(),
    }


def subprocess_run(settings, steps: int) -> dict[str, Any]:
    command = replace(settings, max_steps=steps).command()
    events_path = settings.out_dir.parent / "plain-events.jsonl"
    heartbeat = Heartbeat()
    heartbeat.start()
    # stdout to a file, as the panel does: a pipe nobody reads would block a long run.
    with events_path.open("wb") as events_file:
        child = subprocess.Popen(command, stdout=events_file, stderr=subprocess.DEVNULL)
        run_until(lambda: child.poll() is not None, 3600)
    heartbeat.stop()
    events = [json.loads(line) for line in events_path.read_bytes().splitlines() if line.strip()]
    return {
        "steps": steps,
        "images_per_s": rate_of(events),
        "exit_status": child.returncode,
        **heartbeat.figures(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir or next((d for d in DATA_CANDIDATES if Path(d).is_dir()), None)
    if data_dir is None:
        print("training_bench: no MNIST folder found; pass --data-dir", file=sys.stderr)
        return 2
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from explorer.theme import apply_dark_theme
    from explorer.training.process import RunSettings

    app = QApplication.instance() or QApplication([])
    apply_dark_theme(app)
    with tempfile.TemporaryDirectory(prefix="training-bench-") as tmp:
        settings = RunSettings(
            dataset="mnist",
            data_dir=data_dir,
            preset=args.preset,
            **model_sizes(args),
            batch_size=args.batch_size,
            max_steps=args.max_steps,  # the panel's run is stopped after --seconds
            eval_every=args.eval_every,
            eval_limit=args.eval_limit,
            log_every=args.log_every,
            threads=args.threads,
            device=args.device,
            out=str(Path(tmp) / "panel"),
        )
        panel = panel_run(args, settings, args.screenshot)
        plain = subprocess_run(replace(settings, out=str(Path(tmp) / "plain")), panel["steps"])
    cost = None
    if panel["images_per_s"] and plain["images_per_s"]:
        cost = 100.0 * (1.0 - panel["images_per_s"] / plain["images_per_s"])
    report = {
        "panel": panel,
        "subprocess": plain,
        "throughput_cost_pct": cost,
        "cpu_count": os.cpu_count(),
        "preset": args.preset,
        "model": model_sizes(args),
        "batch_size": args.batch_size,
        "trainer_threads": args.threads,
    }
    if args.json:
        print(json.dumps(report))
        return 0

    def row(name: str, key: str, spec: str = ".1f") -> str:
        values = [format(r[key], spec) if r[key] is not None else "—" for r in (panel, plain)]
        return f"{name:34}{values[0]:>12}{values[1]:>14}"

    print(
        f"{panel['steps']} steps of {args.preset} {model_sizes(args)}, batch {args.batch_size}, "
        f"{args.threads} trainer thread(s), {os.cpu_count()} CPUs"
    )
    print(f"{'':34}{'panel':>12}{'subprocess':>14}")
    print(row("trainer images/s", "images_per_s"))
    print(row("longest event-loop stall (ms)", "longest_stall_ms"))
    print(row(f"p99 heartbeat gap (ms, {HEARTBEAT_MS} ms timer)", "p99_gap_ms"))
    print(row("GUI process CPU (ms per s)", "gui_cpu_ms_per_s"))
    print(f"throughput cost of watching from the panel: {cost:.1f} %" if cost is not None else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
