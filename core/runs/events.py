"""Training events: one JSON object per line on stdout, or a progress bar on stderr.

Event kinds (the GUI's contract): ``start``, ``step``, ``eval``, ``samples``,
``checkpoint``, ``warning`` (``message``: something the user should know, the run goes on),
``progress`` (``task``, ``done``, ``total``: work between steps that takes a while, such as
the class statistics after the last step), ``done``, ``error``. Every event carries
``event`` and ``time``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

from core.training.bars import bar


class EventSink:
    """Writes events; ``enabled=False`` (ranks other than 0) writes nothing.

    When the reader goes away (``realnvp train --progress json | head``) the sink falls
    silent and sets ``closed``; the trainer takes that as a request to save and stop.
    """

    def __init__(self, mode: str = "bar", enabled: bool = True, stream: TextIO | None = None):
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"progress mode must be bar, json or none, got {mode!r}")
        self.mode = mode if enabled else "none"
        self.stream = stream
        self.closed = False
        self._total_steps = 0
        self._last_eval: float | None = None
        self._precision = ""
        self._last_eval_step: int | None = None
        self._record: TextIO | None = None
        self._drawn: tqdm | None = None  # the bar on the current line: steps or a task
        self._task: str | None = None  # the task whose bar is drawn (None: the steps')
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    def record_to(self, path: str | os.PathLike | None) -> None:
        """Also append every event, as a JSON line, to ``path`` (the run's ``events.jsonl``);
        ``None`` closes it. A record that cannot be written (a full disk) is dropped, never
        the run."""
        if self._record is not None:
            with contextlib.suppress(OSError):
                self._record.close()
            self._record = None
        if path is not None:
            with contextlib.suppress(OSError):
                self._record = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def listen(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Also hand every event to ``listener`` (the run's TensorBoard log)."""
        self._listeners.append(listener)

    def emit(self, kind: str, /, **fields: Any) -> None:
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        if self._record is not None:
            try:
                self._record.write(json.dumps(_finite(record)) + "\n")
                self._record.flush()
            except OSError:
                self.record_to(None)
        for listener in self._listeners:
            listener(record)
        if self.mode == "none":
            return
        self.show(record)

    def show(self, record: dict[str, Any]) -> None:
        """Write an event as this sink does, ``time`` included: for events made elsewhere
        (a run followed on another machine draws the same progress bar)."""
        if self.mode == "none":
            return
        out = self.stream or (sys.stdout if self.mode == "json" else sys.stderr)
        try:
            if self.mode == "json":
                out.write(json.dumps(_finite(record)) + "\n")
                out.flush()
            else:
                self._bar(record, out)
        except BrokenPipeError:
            self.mode, self.closed = "none", True
            silence(out)

    def note(self, text: str) -> None:
        """A line of the caller's own on the bar's stream (a lost connection, a failure),
        starting below a drawn progress line."""
        err = self.stream or sys.stderr
        self._end_line()
        err.write(f"{text}\n")
        err.flush()

    def _end_line(self) -> None:
        """End the drawn bar (its last state stays on its line), so what follows starts on a
        line of its own."""
        if self._drawn is not None:
            self._drawn.close()
            self._drawn = None

    def _bar(self, r: dict[str, Any], err: TextIO) -> None:
        kind = r["event"]
        if kind == "start":
            self._total_steps = int(r.get("total_steps", 0))
            self._precision = f"  {r['precision']}" if r.get("precision") else ""
            how = f" in {r['precision_reason']}" if r.get("precision_reason") else ""
            what = f"{r.get('parameters', 0):,} parameters on {r.get('device')}{how}"
            if r.get("resumed"):
                head = f"resuming at step {r.get('step', 0)} of {self._total_steps}: {what}"
            else:
                head = f"training {what} for {self._total_steps} steps"
            err.write(f"{head} -> {r.get('out')}\n")
        elif kind == "step":
            step = int(r["step"])
            test = f"  test {self._last_eval:.3f}" if self._last_eval is not None else ""
            facts = (
                f"epoch {r['epoch']}  {r['loss']:.3f} bits/dim{test}  "
                f"{r['images_per_s']:.0f} img/s{self._precision}"
            )
            if self._drawn is None or self._task is not None:
                # The steps go on below a finished task's line.
                self._end_line()
                steps = bar("", self._total_steps, stream=err, initial=step, postfix=facts)
                self._drawn, self._task = steps, None
            else:
                self._drawn.set_postfix_str(facts, refresh=False)
                self._drawn.update(step - self._drawn.n)
        elif kind == "progress":
            task, done, total = str(r.get("task")), int(r["done"]), int(r["total"])
            # A new task starts below the step line, which keeps the last loss in view.
            if task != self._task or self._drawn is None:
                self._end_line()
                self._drawn, self._task = bar(task, total, stream=err, initial=done), task
            else:
                self._drawn.update(done - self._drawn.n)
        elif kind == "eval":
            self._last_eval, self._last_eval_step = r["test_bpd"], r.get("step")
        elif kind == "done":
            # The final evaluation comes after the last step line: say it here.
            test, best = r.get("test_bpd"), r.get("best_test_bpd")
            result = ""
            if isinstance(test, float):
                result = f", test {test:.4f} bits/dim"
                if self._last_eval_step not in (None, r.get("step")):  # stopped between evals
                    result += f" (evaluated at step {self._last_eval_step})"
            if isinstance(best, float) and best != test:
                result += f", best {best:.4f}"
            self._end_line()
            err.write(
                f"done: {r.get('reason', '')} at step {r.get('step')}{result}; "
                f"checkpoint {r.get('checkpoint')}\n"
            )
        elif kind == "warning":
            self._end_line()
            err.write(f"warning: {r.get('message')}\n")
        # "error" is left to the command line, which prints it as its one line
        err.flush()


def silence(stream: TextIO) -> None:
    """After a broken pipe: point the stream's file descriptor at the null device, so
    neither later writes nor the interpreter's flush at exit raise again or print a
    traceback (the recipe of Python's ``signal`` documentation)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not backed by a file: nothing is flushed at exit
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def _finite(obj: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null so every line parses strictly."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
