"""Stopping a run cleanly: SIGINT, SIGTERM or a ``STOP`` file in the output folder ask the
loop to save and finish instead of dying mid-step (the file works on every platform and under
``torchrun``)."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

from core.runs.folder import STOP_FILE  # noqa: F401  (the trainer reads it from here)


class StopSignals:
    """SIGINT / SIGTERM ask the loop to save and finish instead of dying mid-step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread there is no signal handling; the flag stays unset.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
