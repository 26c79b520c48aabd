"""``python -m explorer_bench``: ``realnvp bench``'s report with the explorer's own figures
beside it, for the same models. It takes ``realnvp bench``'s options, and adds to its keys:

- ``gui``: ``gui.<name>`` for the same models, from ``python -m explorer_bench.gui --json``
  run as a separate process for each model: slider-to-first-pixels (``p50_ms``,
  ``p95_ms``), slider-to-whole-grid (``whole_grid_p50_ms``, ``whole_grid_p95_ms``) and
  during a drag (``drag_p50_ms``, ``drag_p95_ms``) for ``images_1`` and ``images_16``
  (``cache`` and ``no_cache``), the one-image decode of the same run (``decode_1``), the
  render ``plan`` and ``first_pixels_16_p95_over_decode_1_p50``; on CUDA also
  ``gui.<name>_no_graphs``. ``gui.<name>.parity``: that one-image decode
  (``decode_1.by_threads``) at the thread count of ``render.<name>`` beside
  ``render.<name>.decode_ms.batch_1``: ``gui_p50_ms``, ``engine_p50_ms``, ``ratio``.
- ``draw`` (when the bundled model or ``--checkpoint`` is there): ``draw.stroke_to_answer``
  from ``python -m explorer_bench.draw --json``, the Draw tab's time from letting go of a
  stroke to its answer shown (``p50_ms``, ``p95_ms``, ``n``, ``answer_p50_ms``: the
  worker's encode alone).

The explorer's figures come from child processes (offscreen Qt), each model in a fresh
process as the app would run it. Tests never assert these times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from core.bench import bench_checkpoint
from core.bench import main as core_bench
from core.bench import print_report as print_core_report
from core.cli import HelpFormatter, bench_arguments
from core.training.device import pick_device, use_threads


def gui_latency(
    checkpoint: Path | None,
    quick: bool,
    threads: int | None = None,
    preset_name: str | None = None,
    repeats: int | None = None,
    device_name: str = "auto",
    graphs: bool = True,
) -> dict[str, Any] | None:
    """Run the explorer's own benchmark in a child process; ``None`` if it is unavailable.
    ``preset_name``: a model of that architecture with random weights instead."""
    cmd = [sys.executable, "-m", "explorer_bench.gui", "--json", "--device", device_name]
    if not graphs:
        cmd += ["--graphs", "off"]
    if threads is not None:  # otherwise the explorer's own default, as the app runs
        cmd += ["--threads", str(threads)]
    if preset_name is not None:
        cmd += ["--preset", preset_name]
    elif checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint)]
    if quick:
        cmd.append("--quick")
    elif repeats is not None:
        cmd += ["--repeats", str(repeats)]
    return _explorer_child(cmd, timeout_s=1200)


def _explorer_child(cmd: list[str], timeout_s: float) -> dict[str, Any] | None:
    """Run an explorer benchmark in a child process (offscreen Qt, so ``core`` never loads
    Qt) and read the JSON of its last line: ``None`` if it could not run (no explorer
    installed, timed out), ``{"error": ...}`` if it failed."""
    try:
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "unreadable output"}


def draw_latency(checkpoint: Path, quick: bool) -> dict[str, Any] | None:
    """The Draw tab's stroke-to-answer time, from ``python -m explorer_bench.draw --json``
    in a child process (``core`` never loads Qt); ``None`` if the explorer is not
    installed, ``{"error": ...}`` if the run failed."""
    cmd = [sys.executable, "-m", "explorer_bench.draw", str(checkpoint), "--json"]
    cmd += ["--strokes", "5" if quick else "20"]
    return _explorer_child(cmd, timeout_s=600)


def gui_parity(render: dict[str, Any], gui_decode: dict[str, Any] | None) -> dict[str, Any]:
    """The explorer's one-image decode (on its render thread, in the app's conditions)
    beside this process's own at the same thread count: ``gui_p50_ms``, ``engine_p50_ms``,
    ``ratio`` (1.0 is parity), ``threads``. ``ratio`` is ``None`` when the GUI figure
    lacks that thread count."""
    threads = render["threads"]
    engine = render["decode_ms"]["batch_1"]["p50"]
    gui = ((gui_decode or {}).get("by_threads") or {}).get(str(threads))
    return {
        "threads": threads,
        "gui_p50_ms": gui,
        "engine_p50_ms": engine,
        "ratio": round(gui / engine, 3) if gui else None,
    }


def explorer_figures(
    report: dict[str, Any],
    checkpoint: str | None,
    quick: bool,
    threads: int | None,
    render_presets: list[str] | None,
    device_name: str = "auto",
) -> None:
    """Add ``gui`` and ``draw`` to ``report`` (:func:`core.bench.run`'s, for the same
    ``checkpoint`` and ``render_presets``)."""
    bundled, render_name = bench_checkpoint(checkpoint)
    render_presets = ["cifar10"] if render_presets is None else render_presets
    report["gui"] = {}
    # On CUDA each model also without graphs (``<name>_no_graphs``).
    cuda = pick_device(device_name).type == "cuda"
    for graphs in (True, False) if cuda else (True,):
        suffix = "" if graphs else "_no_graphs"
        if bundled is not None:
            report["gui"][render_name + suffix] = gui_latency(
                bundled, quick, threads, device_name=device_name, graphs=graphs
            )
        for name in render_presets:  # big models: fewer moves keep the run short
            report["gui"][name + suffix] = gui_latency(
                None, quick, threads, name, 10, device_name=device_name, graphs=graphs
            )
    for name, entry in report["gui"].items():
        if isinstance(entry, dict) and name in report["render"]:
            entry["parity"] = gui_parity(report["render"][name], entry.get("decode_1"))
    if bundled is not None:
        report["draw"] = draw_latency(bundled, quick)


def print_report(report: dict[str, Any]) -> None:
    """:func:`core.bench.print_report`'s lines, then the explorer's."""
    from explorer_bench.drafts import describe_draft_drag

    print_core_report(report)
    draw = (report.get("draw") or {}).get("stroke_to_answer")
    if draw:
        print(
            f"\ndraw (bundled): stroke to answer p50 {draw['p50_ms']:.1f} ms, p95 "
            f"{draw['p95_ms']:.1f} ms over {draw['n']} strokes (encode on the answer worker "
            f"p50 {draw['answer_p50_ms']:.1f} ms)"
        )
    elif "draw" in report:
        print(f"\ndraw: {(report['draw'] or {}).get('error', 'not available')}")
    for name, g in (report.get("gui") or {}).items():
        if not g or "error" in g:
            print(f"\ngui {name}: {(g or {}).get('error', 'not available')}")
            continue
        d1 = g["decode_1"]
        print(
            f"\ngui {name} (slider to pixels, {g['plan']['threads']} render threads; one-image "
            f"decode p50 {d1['p50_ms']:.1f} ms p95 {d1['p95_ms']:.1f} ms):"
        )
        parity = g.get("parity")
        if parity and parity["ratio"] is not None:
            print(
                f"  GUI parity, one image at {parity['threads']} threads: the explorer's render "
                f"thread p50 {parity['gui_p50_ms']:.1f} ms against render {name}'s "
                f"{parity['engine_p50_ms']:.1f} ms ({parity['ratio']:.2f}x)"
            )
        for key, variants in g.items():
            if key.startswith("images_"):
                for variant, f in variants.items():
                    print(
                        f"  {key.removeprefix('images_'):>3} images {variant:>12}: first pixels "
                        f"p50 {f['p50_ms']:.1f} ms p95 {f['p95_ms']:.1f} ms | whole grid p50 "
                        f"{f['whole_grid_p50_ms']:.1f} ms p95 {f['whole_grid_p95_ms']:.1f} ms"
                    )
        drag = g.get("draft_drag") or {}
        if "skipped" in drag:
            print(f"  draft drag: {drag['skipped']}")
        for slider, f in drag.items():
            if slider != "skipped":
                print(f"  {describe_draft_drag(slider, f)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m explorer_bench",
        description="realnvp bench's figures with the explorer's own beside them "
        "(slider to pixels, the Draw tab's answer)",
        formatter_class=HelpFormatter,
    )
    bench_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_threads(args.threads)
    return core_bench(args, more=_explorer_figures, printer=print_report)


def _explorer_figures(report: dict[str, Any], args: argparse.Namespace) -> None:
    if not args.precision_only:
        explorer_figures(
            report, args.checkpoint, args.quick, args.threads, args.render_presets, args.device
        )


if __name__ == "__main__":
    sys.exit(main())
