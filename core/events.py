"""Training events: one JSON object per line on stdout, or a progress bar on stderr.

Event kinds (the GUI's contract): ``start``, ``step``, ``eval``, ``samples``,
``checkpoint``, ``done``, ``error``. Every event carries ``event`` and ``time``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, TextIO


class EventSink:
    """Writes events; ``enabled=False`` (ranks other than 0) writes nothing."""

    def __init__(self, mode: str = "bar", enabled: bool = True, stream: TextIO | None = None):
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"progress mode must be bar, json or none, got {mode!r}")
        self.mode = mode if enabled else "none"
        self.stream = stream
        self._total_steps = 0
        self._last_eval: float | None = None
        self._precision = ""

    def emit(self, kind: str, /, **fields: Any) -> None:
        if self.mode == "none":
            return
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        if self.mode == "json":
            out = self.stream or sys.stdout
            out.write(json.dumps(_finite(record)) + "\n")
            out.flush()
            return
        self._bar(record)

    def _bar(self, r: dict[str, Any]) -> None:
        err = self.stream or sys.stderr
        kind = r["event"]
        if kind == "start":
            self._total_steps = int(r.get("total_steps", 0))
            self._precision = f"  {r['precision']}" if r.get("precision") else ""
            how = f" in {r['precision_reason']}" if r.get("precision_reason") else ""
            err.write(
                f"training {r.get('parameters', 0):,} parameters on {r.get('device')}{how} "
                f"for {self._total_steps} steps -> {r.get('out')}\n"
            )
        elif kind == "step":
            total = max(self._total_steps, 1)
            done = int(30 * min(r["step"] / total, 1.0))
            test = f"  test {self._last_eval:.3f}" if self._last_eval is not None else ""
            err.write(
                f"\r[{'#' * done}{'.' * (30 - done)}] {r['step']}/{total} "
                f"epoch {r['epoch']}  {r['loss']:.3f} bits/dim{test}  "
                f"{r['images_per_s']:.0f} img/s{self._precision}   "
            )
        elif kind == "eval":
            self._last_eval = r["test_bpd"]
        elif kind == "done":
            err.write(f"\ndone: {r.get('reason', '')} at step {r.get('step')}\n")
        # "error" is left to the command line, which prints it as its one line
        err.flush()


def _finite(obj: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null so every line parses strictly."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
