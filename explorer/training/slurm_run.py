"""A Slurm run on the training page: its place in the queue, then curves as for any run.

A batch job may wait in the queue for minutes or days before the trainer writes its first
event, and waits again after a requeue. :class:`QueueWatch` asks the host for the run's
status (the run agent's ``status``, whose ``scheduler`` fields are Slurm's,
:func:`core.runs.slurm.job_status`) while no trainer runs (from the submit to the trainer's
``start``, and from a ``requeue`` event to the next ``start``), on a worker thread: after
:data:`QUEUE_POLL_MS` at first, then twice as long after each answer that says nothing new
(state, reason, place, expected start), up to :data:`QUEUE_POLL_MAX_MS`, and from the start
again once something changed. A job that waits for a day asks the cluster's controller
about 3,000 times rather than 29,000; the trainer's start is seen from its own events, not
from this question, so it shows as soon as it comes whatever the pace. Slurm's words go on
the page and in the window's status bar: "Waiting in the Slurm queue (Resources), job 12".
While the trainer runs its events say the rest, so the host is not asked; once more at the
end, for the job's last state, which is kept with the run in File > Recent Runs. A requeue
(the trainer's ``requeue`` event) is a dashed vertical mark on the loss curve at its step.

Stop on a job still in the queue, and Kill on any, is ``scancel`` (the run agent's
``stop`` and ``kill``): the page says so in one sentence, "Slurm job 12 cancelled before it
started" or "Slurm job 12 cancelled at step 340; its checkpoints stay: …/latest.pt".
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

QUEUE_POLL_MS = 3000  # the first questions' pace, and after any change
QUEUE_POLL_MAX_MS = 30_000  # the slowest, for a job that waits on and on
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
        self.process: TrainingRun | None = None
        self.job: dict[str, Any] | None = None
        self.trainer_running = False  # a start or step event since the last requeue
        self.trainer_started = False  # a start or step event at all
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
        self.run, self.process, self.job = run, process, None
        self.trainer_running = self.trainer_started = False
        self._timer.setInterval(QUEUE_POLL_MS)
        if process.job_id:
            # The job's settings for this login node, typed once (as its Python is).
            self.panel.form.slurm.remember(run.host)
            self._show({"job_id": process.job_id, "state": "PENDING"})
        process.event_received.connect(self._on_event)
        process.finished.connect(self._finished)
        self._ask()

    def stop(self) -> None:
        self._timer.stop()
        self.run = self.process = None

    @property
    def interval_ms(self) -> int:
        """How long until the next question, once the last one is answered."""
        return self._timer.interval()

    @property
    def polling(self) -> bool:
        """Whether the host will be asked again (the job waits in the queue)."""
        return self._timer.isActive()

    def stopping_words(self) -> str | None:
        """What Stop does to a job still waiting in the queue (no trainer would read the
        stop file: the agent cancels it), or ``None`` when a trainer runs or may."""
        if self.job is None or self.trainer_running or queue_sentence(self.job) is None:
            return None
        return f"Cancelling Slurm job {self.job['job_id']}: it is still waiting in the queue…"

    def _finished(self, _code: int) -> None:
        run, job, process = self.run, self.job, self.process
        self.stop()
        if run is None or job is None or process is None:
            return
        cancelled = process.kill_requested or (
            process.stop_requested and process.done_event is None and process.state == "stopped"
        )
        if cancelled:  # scancel, by Stop on a queued job or by Kill
            self.panel.show_message(self._cancelled_words(job["job_id"], process))
        # One last look, for File > Recent Runs: how the job ended in Slurm's words.
        self._status_call(run, lambda status: self._ended(run, status.scheduler))

    def _ended(self, run: RemoteRun, job: dict[str, Any] | None) -> None:
        self._remember(run, job)
        if job and self.panel.remote_run == run:  # the page still shows this run
            self._show_where(run, job)

    def _cancelled_words(self, job_id: str, process: TrainingRun) -> str:
        if not self.trainer_started:
            return f"Slurm job {job_id} cancelled before it started"
        checkpoint = self.panel.checkpoint
        kept = f"; its checkpoints stay: {checkpoint}" if checkpoint else ""
        return f"Slurm job {job_id} cancelled at step {process.last_step}{kept}"

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("start", "step") and not self.trainer_running:
            # The trainer runs: its events say the rest until a requeue.
            self.trainer_running = self.trainer_started = True
            self._timer.stop()
            if self.job is not None and self.run is not None:
                waiting = {"reason": None, "position": None, "expected_start": None}
                running = {**self.job, **waiting, "state": "RUNNING"}
                self._remember(self.run, running)
                self._show(running)
        elif kind == "requeue":
            self.trainer_running = False
            self._timer.setInterval(QUEUE_POLL_MS)
            self._ask()  # back in the queue: its place there, until the trainer starts again

    def _ask(self) -> None:
        run = self.run
        if run is None or (self._call is not None and not self._call.done):
            return
        if self._call is not None:
            self._call.deleteLater()  # answered: a job waiting for days keeps one, not each
        self._call = self._status_call(run, lambda status: self._answered(run, status))

    def _status_call(self, run: RemoteRun, then: Any) -> BlockingCall:
        call = BlockingCall(lambda: host_for(run).status(run), self)
        call.succeeded.connect(then)
        # A host away: the follower says so and retries; so does this, at its pace.
        call.failed.connect(lambda _text: self._ask_later(run))
        return call.start()

    def _ask_later(self, run: RemoteRun) -> None:
        if run == self.run and not self.trainer_running:
            self._timer.start()

    def _answered(self, run: RemoteRun, status: RunStatus) -> None:
        if run != self.run:
            return
        if status.scheduler is None:
            self.stop()  # a run of no scheduler
            return
        if self.job is None and not self.panel.form.where.slurm:
            self.panel.form.where.set_remote(True, slurm=True)  # a Slurm run followed again
        news = _waiting_facts(status.scheduler) != _waiting_facts(self.job)
        if not self.trainer_running or self.job is None:  # not one asked before the start
            self._remember(run, status.scheduler)
            self._show(status.scheduler)
        pace = QUEUE_POLL_MS if news else min(2 * self._timer.interval(), QUEUE_POLL_MAX_MS)
        self._timer.setInterval(pace)
        self._ask_later(run)

    def _remember(self, run: RemoteRun, job: dict[str, Any] | None) -> None:
        settings = self.panel.app_settings
        if job and settings is not None:
            settings.update_run(run.host, run.out, scheduler=job)

    def _show(self, job: dict[str, Any]) -> None:
        """Slurm's words on the page and in the status bar while no trainer runs."""
        self.job = job
        panel = self.panel
        if self.run is not None:
            self._show_where(self.run, job)
        stopping = self.process is not None and (
            self.process.stop_requested or self.process.kill_requested
        )
        if self.trainer_running or stopping:
            return
        sentence = queue_sentence(job)
        if sentence is None and job.get("state") == "RUNNING":
            sentence = f"Slurm job {job['job_id']} runs on {job.get('nodes') or 'its node'}: "
            sentence += "the trainer is starting…"
        if sentence is not None:
            panel.info.setText(sentence)
            panel.queue_changed.emit(sentence)

    def _show_where(self, run: RemoteRun, job: dict[str, Any]) -> None:
        """The job beside the run folder, in Slurm's words."""
        state = job.get("state") or "no longer known to Slurm"
        self.panel.where.setText(f"On {run.host}, Slurm job {job['job_id']} {state}: {run.out}")


def _waiting_facts(job: dict[str, Any] | None) -> tuple[Any, ...]:
    """What the page shows of a job waiting in the queue; an answer that changes none of it
    slows the questions down."""
    job = job or {}
    return tuple(job.get(k) for k in ("state", "reason", "position", "expected_start"))
