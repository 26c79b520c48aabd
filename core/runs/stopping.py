"""Stopping a run cleanly: SIGINT, SIGTERM, SIGUSR1 or a ``STOP`` file in the output folder
ask the loop to save and finish instead of dying mid-step (the file works on every platform
and under ``torchrun``). Under Slurm, SIGUSR1 (sent before the job's time limit) and SIGTERM
(a preemption) also requeue the job (:mod:`core.runs.slurm`)."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

from core.runs.folder import STOP_FILE  # noqa: F401  (the trainer reads it from here)

# SIGUSR1 is what an sbatch script's --signal=USR1@90 sends; Windows has none.
SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)
REQUEUE_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class StopSignals:
    """SIGINT / SIGTERM / SIGUSR1 ask the loop to save and finish instead of dying
    mid-step; ``received`` is the first one that came."""

    def __init__(self) -> None:
        self.requested = False
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in SIGNALS:
            # Outside the main thread there is no signal handling; the flag stays unset.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
