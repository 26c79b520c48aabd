"""A Slurm run on the training page: its place in the queue, then curves as for any run.

A batch job may wait in the queue for minutes or days before the trainer writes its first
event, and waits again after a requeue. :class:`QueueWatch` asks the host for the run's
status (the run agent's ``status``, whose ``scheduler`` fields are Slurm's,
:func:`core.runs.slurm.job_status`) every :data:`QUEUE_POLL_MS` while the page follows the
run, on a worker thread, and while no trainer runs shows Slurm's words on the page and in
the window's status bar: "Waiting in the Slurm queue (Resources), job 12". The job's last
state is kept with the run in File > Recent Runs. A requeue (the trainer's ``requeue``
event) is a dashed vertical mark on the loss curve at its step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, QTimer

from core.runs.host import RemoteRun, RunStatus, host_for
from core.runs.slurm import queue_sentence
from explorer.training.remote_run import BlockingCall, TrainingRun

if TYPE_CHECKING:
    from explorer.training.workspace import TrainingPanel

QUEUE_POLL_MS = 3000
REQUEUE_COLOUR = "#ce93d8"


def requeue_mark(step: int, requeues: object = None) -> pg.InfiniteLine:
    """The loss curve's mark of a requeue at ``step``: the run went back to the queue
    there and resumed from that step's ``latest.pt``."""
    label = f"requeue {requeues}" if isinstance(requeues, int) else "requeue"
    line = pg.InfiniteLine(
        pos=step,
        angle=90,
        movable=False,
        pen=pg.mkPen(REQUEUE_COLOUR, width=1, style=Qt.PenStyle.DashLine),
        label=label,
        labelOpts={"position": 0.92, "color": REQUEUE_COLOUR, "anchors": [(1, 1), (1, 1)]},
    )
    line.setToolTip(f"Requeued at step {step:,}: resumed from latest.pt")
    return line


class QueueWatch(QObject):
    """Follows the Slurm job of the run ``panel`` shows (see the module docstring)."""

    def __init__(self, panel: TrainingPanel) -> None:
        super().__init__(panel)
        self.panel = panel
        self.run: RemoteRun | None = None
        self.job: dict[str, Any] | None = None
        self.trainer_running = False  # a start or step event since the last requeue
        self._call: BlockingCall | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(QUEUE_POLL_MS)
        self._timer.timeout.connect(self._ask)

    def watch(self, run: RemoteRun, process: TrainingRun) -> None:
        """Follow ``run``'s job: one submitted here (``process.job_id``), or a run on a
        host followed again, which may be a Slurm run (its first status says)."""
        if not run.host or not (process.job_id or process.attached):
            return
        self.run, self.job, self.trainer_running = run, None, False
        if process.job_id:
            # The job's settings for this login node, typed once (as its Python is).
            self.panel.form.slurm.remember(run.host)
            self._show({"job_id": process.job_id, "state": "PENDING"})
        process.event_received.connect(self._on_event)
        process.finished.connect(self._finished)
        self._ask()

    def stop(self) -> None:
        self._timer.stop()
        self.run = None

    def _finished(self, _code: int) -> None:
        # One last look, for File > Recent Runs: how the job ended in Slurm's words.
        run = self.run
        self.stop()
        if run is not None and self.job is not None:
            self._status_call(run, lambda status: self._remember(run, status.scheduler))

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("start", "step"):
            self.trainer_running = True
        elif kind == "requeue":
            self.trainer_running = False

    def _ask(self) -> None:
        run = self.run
        if run is None or (self._call is not None and not self._call.done):
            return
        self._call = self._status_call(run, lambda status: self._answered(run, status))

    def _status_call(self, run: RemoteRun, then: Any) -> BlockingCall:
        call = BlockingCall(lambda: host_for(run).status(run), self)
        call.succeeded.connect(then)
        # A host away: the follower says so and retries; so does this, at its pace.
        call.failed.connect(lambda _text: self._timer.start() if self.run is run else None)
        return call.start()

    def _answered(self, run: RemoteRun, status: RunStatus) -> None:
        if run != self.run:
            return
        if status.scheduler is None:
            self.stop()  # a run of no scheduler
            return
        if self.job is None and not self.panel.form.where.slurm:
            self.panel.form.where.set_remote(True, slurm=True)  # a Slurm run followed again
        self._remember(run, status.scheduler)
        self._show(status.scheduler)
        self._timer.start()

    def _remember(self, run: RemoteRun, job: dict[str, Any] | None) -> None:
        settings = self.panel.app_settings
        if job and settings is not None:
            settings.update_run(run.host, run.out, scheduler=job)

    def _show(self, job: dict[str, Any]) -> None:
        """Slurm's words on the page and in the status bar while no trainer runs."""
        self.job = job
        panel = self.panel
        if self.run is not None:  # the job beside the run folder, in Slurm's words
            state = job.get("state") or "no longer known to Slurm"
            panel.where.setText(
                f"On {self.run.host}, Slurm job {job['job_id']} {state}: {self.run.out}"
            )
        if self.trainer_running:
            return
        sentence = queue_sentence(job)
        if sentence is None and job.get("state") == "RUNNING":
            sentence = f"Slurm job {job['job_id']} runs on {job.get('nodes') or 'its node'}: "
            sentence += "the trainer is starting…"
        if sentence is not None:
            panel.info.setText(sentence)
            panel.queue_changed.emit(sentence)
