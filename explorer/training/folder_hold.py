"""Whether the Slurm batch job that a run folder's ``launch.json`` names still holds the
folder, asked off the GUI thread for the training form.

The question is ``squeue`` on this computer (:func:`core.runs.slurm.job_holding`): usually
a few milliseconds, but up to 5 s when the cluster's controller does not answer, and the
form checks its output folder after every edit. So each folder's answer is asked on a
short-lived thread, kept for :data:`FRESH_S`, and asked again after that while the folder
is still shown; the form says "checking" until the first answer comes.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from core.runs.folder import read_launch
from core.runs.slurm import job_holding, launch_job_id
from explorer.training.remote_run import BlockingCall

FRESH_S = 10.0  # how long an answer stands before the next look at the folder asks again


class SlurmHold(QObject):
    """Answers :meth:`problem` from what Slurm last said; ``changed`` when an answer
    arrives (the form then checks its settings again)."""

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._answers: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._calls: dict[tuple[str, str], BlockingCall] = {}  # the last question per folder

    def problem(self, out: Path) -> str | None:
        """Why no run may start in ``out`` because of its batch job: the last answer, or
        "checking" until the first; ``None`` when the folder names no job or it is over."""
        launch = read_launch(out)
        job_id = launch_job_id(launch)
        if job_id is None:
            return None
        key = (str(out), job_id)
        answer = self._answers.get(key)
        if key not in self.asking and (answer is None or time.monotonic() - answer[0] > FRESH_S):
            self._ask(key, out, launch)
        if answer is None:
            return f"checking whether Slurm job {job_id} still holds {out}…"
        return answer[1]

    @property
    def asking(self) -> set[tuple[str, str]]:
        """The (folder, job id) pairs whose question still waits for Slurm."""
        return {key for key, call in self._calls.items() if not call.done}

    @property
    def checking(self) -> bool:
        """Whether a folder is waiting for its first answer."""
        return any(key not in self._answers for key in self._calls)  # answered ones are done

    def _ask(self, key: tuple[str, str], out: Path, launch: dict) -> None:
        earlier = self._calls.pop(key, None)
        if earlier is not None:
            earlier.deleteLater()  # answered: one object per folder, not one per question
        call = BlockingCall(lambda: job_holding(out, launch), self)
        call.succeeded.connect(lambda sentence: self._on_answered(key, sentence))
        # A defect of ours (BlockingCall logs it): free, as when the controller does not
        # answer, so the form never says "checking" for ever; sbatch has the last say.
        call.failed.connect(lambda _why: self._on_answered(key, None))
        self._calls[key] = call
        call.start()

    def _on_answered(self, key: tuple[str, str], sentence: str | None) -> None:
        self._answers[key] = (time.monotonic(), sentence)
        self.changed.emit()
