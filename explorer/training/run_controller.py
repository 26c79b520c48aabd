"""The training page's run life cycle, apart from the page that shows it: start a run
(here or on an ssh host), follow one started earlier (a run folder, or File > Recent Runs),
stop, kill or leave it running, the end of a run and what the window's close does with one
in progress, and fetching a checkpoint from the run's host before it is opened.

The page (:class:`~explorer.training.workspace.TrainingPanel`) owns the widgets and draws
the events; this controller says what happens to the run and tells the page what to show.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

from core.runs import hosts
from core.runs.folder import STOP_FILE, LockInfo, complete_lines, parse_event, read_lock
from core.runs.host import RemoteRun
from core.runs.transport import RemoteError
from explorer.training.command_line import home_path
from explorer.training.process import EVENTS_FILE, LOG_FILE
from explorer.training.remote_run import (
    BlockingCall,
    HostChoice,
    TrainingRun,
    fetch_call,
    origin_text,
)

if TYPE_CHECKING:
    from explorer.training.workspace import TrainingPanel

STDERR_SHOWN = 4

# What closing the window does with a run in progress.
STOP, LEAVE, CANCEL = "stop", "leave", "cancel"


def ask_close_choice(parent: QWidget | None, out: str) -> str:
    """Ask whether to stop the run or leave it running: ``stop``, ``leave`` or ``cancel``."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Training in progress")
    box.setText("A training run is still in progress.")
    box.setInformativeText(
        "Stop it: it saves latest.pt first, and the window closes once it has.\n"
        f"Leave it running: it goes on writing checkpoints and events to {out}; "
        "open that folder in the training panel later to see its curves."
    )
    stop = box.addButton("Stop and Close", QMessageBox.ButtonRole.AcceptRole)
    leave = box.addButton("Leave Running", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(stop)
    box.exec()
    clicked = box.clickedButton()
    return STOP if clicked is stop else LEAVE if clicked is leave else CANCEL


class RunController(QObject):
    """Starts, follows, stops and opens the runs ``view`` shows. ``process`` is the run
    this page started or attached to; ``follower`` a reopened run folder still going."""

    _fetch_progressed = Signal(str, int, int)  # from the fetch's worker thread

    def __init__(self, view: TrainingPanel) -> None:
        super().__init__(view)
        self.view = view
        self.process: TrainingRun | None = None
        self.remote_run: RemoteRun | None = None  # the run on a host the page shows
        self.fetching: BlockingCall | None = None
        self.follower: TrainingRun | None = None  # a reopened run still going
        self.follow_stop_asked = False  # Stop pressed for the reopened run (its STOP file)
        self._followed_holder: LockInfo | None = None  # who holds it, read once on reopening
        self._close_after_stop: QWidget | None = None
        self._fetch_progressed.connect(self._on_fetch_progress)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def fetching_now(self) -> bool:
        return self.fetching is not None and not self.fetching.done

    def checkpoint_there(self, path: str | None) -> bool:
        """A checkpoint the page can open: a file here, or one on the run's host (fetched
        by "Open in Explorer")."""
        if not path:
            return False
        return self.remote_run is not None or Path(path).is_file()

    # -- starting and attaching ------------------------------------------------------------

    def start(self) -> bool:
        """Start a run with the form's settings; False (and the reason shown) if it cannot."""
        view, form = self.view, self.view.form
        if view.problems():
            view.update_controls()
            return False
        settings = form.settings()
        self.stop_following()
        form.cancel_scan()  # the trainer reads the data itself; free the CPU for it
        view.reset_monitor()
        choice = form.host_choice() if form.remote else None
        process = self._launch(lambda p: p.start(settings, choice, view.python))
        if process is None:
            return False
        if choice is None:
            self.set_remote(None)
            view.run_dir = process.settings.out_dir
            self._remember_run({"out": str(view.run_dir), "host": None, "state": "running"})
        else:
            view.run_dir = None
            self.remote_run = None  # until the host names the new run's folder
            view.where.setText(f"On {choice.host}: starting a run in {choice.runs_dir}…")
            view.where.show()
            view.host_changed.emit(choice.host)
        view.info.setText(f"Starting the trainer{f' on {choice.host}' if choice else ''}…")
        view.update_controls()
        view.command_line.show_run(process.settings, choice, view.python)
        view.append_log(f"$ {view.command.text()}")
        started = f"{choice.host}:{settings.train.out}" if choice else str(view.run_dir)
        view.training_started.emit(started)
        return True

    def _launch(self, begin: Callable[[TrainingRun], None]) -> TrainingRun | None:
        """A new run this page follows, started (or attached) by ``begin``; ``None``, and
        the reason shown, when that failed at once."""
        process = TrainingRun(self)
        process.event_received.connect(self.view.show_event)
        process.log_received.connect(self.view.append_log)
        process.failed.connect(self._on_failed)
        process.finished.connect(self._on_finished)
        process.run_started.connect(self._on_run_started)
        process.run_started.connect(lambda run, p=process: self.view.queue.watch(run, p))
        process.connection_changed.connect(self.view.show_connection)
        process.call_failed.connect(lambda text: self.view.show_message(text, error=True))
        try:
            begin(process)
        except RemoteError as exc:
            process.deleteLater()
            self.view.show_message(str(exc), error=True)
            return None
        self.process = process
        return process

    def attach_remote(self, run: RemoteRun) -> bool:
        """Follow a run on an ssh host started earlier (File > Recent Runs): its curves from
        the first event, then live until it ends; Stop and Kill work on it."""
        view = self.view
        if self.running:
            return False
        self.stop_following()
        view.reset_monitor()
        # The form shows where the run lives (and, from its start event, how it was
        # started); the command line is the terminal's way to follow it.
        view.form.show_host(
            HostChoice(run.host or "", run.python, run.runs_dir, run.config_file or "")
        )
        view.command_line.show_text(run.follow_command())
        if self._launch(lambda p: p.attach(run)) is None:
            return False
        view.run_dir = None
        view.host_changed.emit(run.host or "")
        view.info.setText(f"Following {run.name} on {run.host}…")
        view.update_controls()
        view.training_started.emit(f"{run.host}:{run.out}")
        return True

    def _on_run_started(self, run: RemoteRun) -> None:
        if not run.host:
            return  # a run here: its folder was known, and remembered, at Start
        # The host's Python, typed once: the command line reads it too.
        hosts.remember(
            run.host, python=run.python, runs_dir=run.runs_dir, ssh_config=run.config_file
        )
        self.set_remote(run)
        self.view.append_log(f"run folder on {run.host}: {run.out}")
        self._remember_run({**run.to_dict(), "state": "running"})

    def set_remote(self, run: RemoteRun | None) -> None:
        """The run the page shows lives on ``run``'s host (None: on this computer)."""
        self.remote_run = run
        self.view.show_where(run)

    def _remember_run(self, record: dict[str, Any]) -> None:
        if self.view.app_settings is not None:
            self.view.app_settings.remember_run(record)

    # -- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the trainer to save and finish; for a reopened run still going (started
        elsewhere: a terminal, an earlier window), through its folder's STOP file."""
        if not self.running and self.follower is not None and not self.follow_stop_asked:
            self._stop_followed()
            return
        if self.running and self.process is not None:
            self.process.stop()
            self.view.info.setText(
                self.view.queue.stopping_words()
                or "Stopping: the trainer saves latest.pt after this step…"
            )
            self.view.update_controls()

    def _stop_followed(self) -> None:
        view = self.view
        stop = Path(view.run_dir) / STOP_FILE
        try:
            stop.touch()
        except OSError as exc:
            view.show_message(f"cannot ask the run to stop: {exc.strerror or exc} ({stop})", True)
            return
        self.follow_stop_asked = True
        view.info.setText("Stopping: the run saves latest.pt after this step…")
        view.update_controls()

    def following_words(self) -> str:
        """What the page says of a reopened run that goes on: whose it is, and what Stop
        does; empty when it follows none."""
        if self.follower is None or self.running:
            return ""
        folder = Path(self.view.run_dir)
        holder = self._followed_holder
        who = ""
        if holder is not None:  # the page shows the run's command line already
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.started))
            who = f" (process {holder.pid} on {holder.host}, started {started})"
        if self.follow_stop_asked:
            return f"Asked the run in {home_path(folder)} to stop{who}: it saves, then ends"
        return (
            f"Following the run in {home_path(folder)}, started outside this window{who}; "
            "Stop asks it to save latest.pt and end"
        )

    def kill(self) -> None:
        """End the trainer at once."""
        if self.running and self.process is not None:
            self.process.kill()

    def leave_running(self) -> int | None:
        """Stop watching the run and let it go on by itself; returns its process id."""
        view = self.view
        if not self.running or self.process is None:
            return None
        pid = self.process.detach()
        if self.process.host is not None and self.remote_run is not None:
            view.append_log(f"left running on {self.remote_run.host}: {self.remote_run.out}")
        else:
            view.append_log(f"left running as process {pid}; it keeps writing to {view.run_dir}")
        self.process = None
        view.update_controls()
        view.training_stopped.emit("left running")
        return pid

    def confirm_close(self, parent: QWidget | None = None) -> bool:
        """For the main window's ``closeEvent``: True when the window may close now.

        With a run in progress it asks (the view's ``close_prompt``): Stop and close (the
        trainer saves, then ``parent`` is closed again; returns False meanwhile), Leave
        running (the run goes on without the window; returns True) or Cancel (False).
        Asked again while stopping, "Stop and close" kills the trainer.
        """
        if not self.running or self.process is None:
            return True
        if self.process.host is not None:
            # It runs on the host whatever the window does; File > Recent Runs re-attaches.
            self.leave_running()
            return True
        parent = parent or self.view.window()
        choice = self.view.close_prompt(parent, str(self.view.run_dir))
        if choice == LEAVE:
            self.leave_running()
            return True
        if choice == STOP:
            self._close_after_stop = parent
            if self.process.stop_requested:
                self.kill()
            else:
                self.stop()
                self.view.info.setText("Stopping: the window closes once latest.pt is saved…")
        return False

    # -- the end of a run ----------------------------------------------------------------------

    def _record_outcome(self, process: TrainingRun, outcome: str) -> None:
        """The run's end in File > Recent Runs: running, done, failed or stopped."""
        state = process.state or {"finished": "done", "killed": "failed"}.get(outcome, outcome)
        if process.run is None or self.view.app_settings is None:
            return
        if state in ("done", "failed", "stopped"):
            host, out = process.run.host, process.run.out
            self.view.app_settings.update_run(host, out, state=state, step=process.last_step)

    def _on_failed(self, message: str) -> None:
        # The message, then the trainer's last words on stderr where they add something.
        reason = self.process.error_message if self.process is not None else None
        tail = [
            line
            for line in list(self.process.stderr_tail if self.process else [])[-STDERR_SHOWN:]
            if line not in message and not (reason and reason in line)
        ]
        self.view.show_message("\n".join([message, *tail]), error=True)

    def _on_finished(self, exit_code: int) -> None:
        view, process = self.view, self.process
        if process is None:
            return
        done, outcome = process.done_event, process.outcome
        checkpoint = process.last_checkpoint
        if not self.checkpoint_there(checkpoint):
            checkpoint = None
        view.checkpoint = checkpoint
        if outcome == "killed":
            kept = f"; its newest checkpoint stays: {checkpoint}" if checkpoint else ""
            view.show_message(f"Killed at step {process.last_step}{kept}", error=True)
        elif outcome == "stopped" and done is None:
            view.show_message("Stopped before training began; nothing was saved.")
        where = f" on {process.host}" if process.host else ""
        view.info.setText(f"Run {outcome}{where} at step {process.last_step}")
        self._record_outcome(process, outcome)
        view.connection.hide()
        if self.remote_run is None:
            view.where.hide()  # a start the host refused: there is no run to name
        self.process = None
        view.update_controls()
        if view.form.scan_report is not None and not view.form.scan_report.finished:
            view.form.start_scan()
        view.form.refresh_out_suggestion()
        if process.settings is not None:
            view.command_line.run_ended(process.settings, view.form.settings())
            view.update_controls()
        if checkpoint:
            view.checkpoint_ready.emit(checkpoint)
            if view.open_when_done.isChecked() and outcome in ("finished", "stopped"):
                self.open_checkpoint(checkpoint)
        view.training_stopped.emit(outcome)
        if self._close_after_stop is not None:
            window, self._close_after_stop = self._close_after_stop, None
            QTimer.singleShot(0, window.close)

    # -- reopening earlier runs ----------------------------------------------------------------

    def open_run(self, folder: str | os.PathLike) -> bool:
        """Show the curves, samples and messages of the run in ``folder`` from its
        ``events.jsonl``; keeps following it if it has not ended."""
        view = self.view
        if self.running:
            return False
        folder = Path(folder)
        if not folder.is_dir():
            what = "is a file, not a run folder" if folder.exists() else "no such folder"
            view.show_message(f"{folder}: {what}", error=True)
            return False
        if not (folder / EVENTS_FILE).is_file():
            view.show_message(
                f"{folder} has no {EVENTS_FILE}: only runs started from this panel (or with "
                "its command line, which appends the events there) can be reopened.",
                error=True,
            )
            return False
        self.stop_following()
        view.reset_monitor()
        self.set_remote(None)
        view.run_dir = folder
        view.checkpoint = str(folder / "latest.pt") if (folder / "latest.pt").is_file() else None
        # What is there is shown now; a run that has not said its last word (one left
        # running) is then followed as any other run, from where this read ended.
        last, offset = None, 0
        while lines := complete_lines(folder / EVENTS_FILE, offset)[0]:
            offset = lines[-1][0]
            for _end, raw in lines:
                text = raw.decode("utf-8", "replace")
                event = parse_event(text)
                if event is not None:
                    last = event["event"]
                    view.show_event(event)
                elif text.strip():
                    view.append_log(text)
        log_offset, log = 0, []
        while lines := complete_lines(folder / LOG_FILE, log_offset)[0]:
            log_offset = lines[-1][0]
            log += [raw.decode("utf-8", "replace") for _, raw in lines]
        if log:
            view.append_log("\n".join(log))
        view.info.setText(f"Run in {home_path(folder)}")
        if last not in ("done", "error"):
            self.follower = TrainingRun(self)
            self.follower.event_received.connect(view.show_event)
            self.follower.log_received.connect(view.append_log)
            self.follower.finished.connect(lambda _code: self.stop_following())
            run = RemoteRun(str(folder.absolute()), python=view.python or sys.executable)
            self._followed_holder = read_lock(folder)
            self.follower.attach(run, offset, log_offset)
        view.update_controls()
        return True

    def stop_following(self) -> None:
        self.follow_stop_asked = False
        self._followed_holder = None
        if self.follower is not None:
            self.follower.detach()
            self.follower.deleteLater()
            self.follower = None
            self.view.update_controls()

    # -- opening the checkpoint ----------------------------------------------------------------

    def open_checkpoint(self, path: str) -> None:
        """Ask the explorer to open ``path``; a checkpoint on a host is first fetched into
        the run's local cache folder (atomic, SHA-256 verified, resumed if cut short)."""
        view, run = self.view, self.remote_run
        if run is None:
            view.open_checkpoint_requested.emit(path)
            return
        if self.fetching_now:
            return
        view.show_message(f"Fetching {Path(path).name} from {run.host}…")
        call = fetch_call(run, path, progress=self._fetch_progressed.emit, parent=self)
        call.succeeded.connect(lambda local, r=run, p=path: self._fetched(r, p, local))
        call.failed.connect(lambda text: view.show_message(f"Fetch failed: {text}", error=True))
        call.failed.connect(lambda _text: view.update_controls())
        self.fetching = call
        view.update_controls()

    def _on_fetch_progress(self, name: str, done: int, total: int) -> None:
        if self.fetching_now:
            where = self.remote_run.host if self.remote_run else "the host"
            self.view.show_message(
                f"Fetching {name} from {where}: {done / 1e6:.1f} / {total / 1e6:.1f} MB"
            )

    def _fetched(self, run: RemoteRun, path: str, local: str) -> None:
        view = self.view
        if view.app_settings is not None:
            view.app_settings.set_checkpoint_origin(local, origin_text(run, path))
        view.show_message(f"Fetched {Path(path).name} from {run.host} to {home_path(local)}")
        view.update_controls()
        view.open_checkpoint_requested.emit(local)
