"""Runs, here or on an ssh host, as the training page sees them: the Qt side of
:mod:`core.runs.host`.

The host API blocks (every call is an agent command, through ssh for a host), so nothing
here calls it on the GUI thread: :class:`BlockingCall` runs one call on a thread of its own
and answers on the GUI thread, and :class:`TrainingRun` starts a run (``local_host()`` or
an ssh host: the same agent, the same argv) and follows it through the API's one
long-lived follow stream on a worker thread, turning its updates into signals. A host's
sample grids are fetched into the run's local cache folder as the trainer writes them
(verified by SHA-256), so the page shows them from a local file; checkpoints stay on the
host until "Open in Explorer".

A lost connection never ends a run: the follower says "connection lost, retrying in N s"
(:attr:`TrainingRun.connection_changed`) and resumes from the byte offset of the last
event it passed on, so no event is shown twice or missed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from PySide6.QtCore import QObject, Signal

from core.runs.host import (
    DEFAULT_PYTHON,
    DEFAULT_RUNS_DIR,
    FetchProgress,
    Follower,
    FollowUpdate,
    RemoteRun,
    RunHost,
    default_cache_dir,
    host_for,
    local_host,
    ssh_host,
)
from core.runs.slurm import SlurmRequest, job_words
from core.runs.transport import RemoteError
from explorer.training.process import RunSettings, absolute_path

log = logging.getLogger(__name__)

FINISHED_CODES = {"done": 0, "stopped": 0, "failed": 1}
STDERR_LINES = 40  # the trainer's last words kept for a failure's sentence


@dataclass(frozen=True)
class HostChoice:
    """Where the form says a run goes: an ssh config alias or ``user@host[:port]``, the
    host's Python, its runs folder and an optional ssh config file (``ssh -F``)."""

    host: str
    python: str = DEFAULT_PYTHON
    runs_dir: str = DEFAULT_RUNS_DIR
    config_file: str = ""
    slurm: SlurmRequest | None = None  # a batch job of the host's Slurm: its request

    def run_host(self) -> RunHost:
        """The API's host; raises :class:`RemoteError` (one sentence) for a bad name or a
        missing config file. Connects to nothing."""
        if not self.host.strip():
            raise RemoteError("choose the ssh host", "bad-input")
        return ssh_host(
            self.host.strip(),
            python=self.python.strip() or DEFAULT_PYTHON,
            runs_dir=self.runs_dir.strip() or DEFAULT_RUNS_DIR,
            config_file=self.config_file.strip() or None,
        )


def remote_name(path: str, run: RemoteRun) -> str | None:
    """``path`` (an absolute path on the host, as the trainer's events name files) relative
    to the run folder, or ``None`` when it lies outside it."""
    try:
        return str(PurePosixPath(path).relative_to(PurePosixPath(run.out)))
    except ValueError:
        return None


def fetch_file(
    host: RunHost, run: RemoteRun, path: str, progress: FetchProgress | None = None
) -> str:
    """Fetch ``path`` of ``run`` (a path on the host, as the events name it) into the run's
    cache folder (:func:`~core.runs.host.default_cache_dir`), verified; the local path."""
    name = remote_name(path, run)
    if name is None:
        raise RemoteError(f"{path} is not inside the run folder {run.out}", "bad-input")
    result = host.fetch(run, default_cache_dir(run), names=[name], progress=progress)
    if not result.files:
        raise RemoteError(f"{name} is not in the run folder {run.out} on {host.label}")
    return str(result.files[0])


def origin_text(run: RemoteRun, path: str) -> str:
    """How the explorer names a fetched file: ``HOST:/path/on/the/host``."""
    return f"{run.host or 'this computer'}:{path}"


class BlockingCall(QObject):
    """One blocking call (a remote API call) on a daemon thread; ``succeeded(result)`` or
    ``failed(sentence)`` arrives on the GUI thread. A daemon thread, not a ``QThread``, so a
    host that takes its time never holds the window from closing."""

    succeeded = Signal(object)
    failed = Signal(str)

    def __init__(self, call: Callable[[], Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.call = call
        self.done = False
        self.succeeded.connect(self._mark_done)
        self.failed.connect(self._mark_done)

    def start(self) -> BlockingCall:
        threading.Thread(target=self._run, daemon=True, name="remote-call").start()
        return self

    def _mark_done(self, *_args: object) -> None:
        self.done = True

    def _run(self) -> None:
        try:
            result = self.call()
        except RemoteError as exc:
            _emit(self.failed, str(exc))
        except OSError as exc:  # e.g. no ssh program, a cache folder that cannot be written
            _emit(self.failed, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        except Exception as exc:  # a defect of ours: said, never a page left waiting forever
            log.exception("remote call failed")
            _emit(self.failed, f"unexpected {type(exc).__name__}: {exc}")
        else:
            _emit(self.succeeded, result)


def _emit(signal: Any, *args: object) -> None:
    # The receiver may be gone (its window closed) while a host still answered.
    with contextlib.suppress(RuntimeError):
        signal.emit(*args)


class TrainingRun(QObject):
    """One run, on this computer or on an ssh host, started or followed through the same
    host interface (:mod:`core.runs.host`): :meth:`start` launches it (detached: it outlives
    this window and the connection), :meth:`attach` follows a run started earlier (File >
    Recent Runs, a reopened run folder). Nothing after the start depends on where it runs.

    ``event_received`` carries each JSON event in order; ``log_received`` the trainer's
    stderr; ``failed`` a message for the user when the run ended without its ``done``
    event (and was not killed on purpose); ``finished`` the exit status last (-1 when
    unknown); ``run_started(RemoteRun)`` once the agent named the run folder;
    ``connection_changed(text)`` with "connection lost, retrying in N s" while a host is
    away and ``""`` when it is back; ``call_failed(sentence)`` when Stop or Kill did not
    reach the host.
    """

    event_received = Signal(dict)
    log_received = Signal(str)
    failed = Signal(str)
    finished = Signal(int)
    run_started = Signal(object)  # RemoteRun
    connection_changed = Signal(str)
    call_failed = Signal(str)
    _updated = Signal(object)  # FollowUpdate, from the worker

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings: RunSettings | None = None
        self.run: RemoteRun | None = None
        self.run_host: RunHost | None = None
        self.follower: Follower | None = None
        self.state: str | None = None
        self.lost: str = ""
        self.attached = False  # followed, not started here
        self.stop_requested = self.kill_requested = False
        self.done_event: dict[str, Any] | None = None
        self.error_message: str | None = None
        self.last_step = 0
        self.last_checkpoint: str | None = None
        self.job_id: str | None = None  # a Slurm run's job
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._started = self._ended = False
        self._calls: list[BlockingCall] = []
        self._updated.connect(self._on_update)

    @property
    def host(self) -> str | None:
        """The ssh host the run lives on; ``None`` for this computer."""
        return self.run_host.host if self.run_host is not None else None

    @property
    def pid(self) -> int | None:
        """The process started for the run (its trainer's supervisor), once started."""
        return self.run.pid if self.run is not None else None

    @property
    def running(self) -> bool:
        return self._started and not self._ended

    # -- starting and attaching ---------------------------------------------------------------

    def start(
        self, settings: RunSettings, choice: HostChoice | None = None, python: str | None = None
    ) -> None:
        """Start ``realnvp train`` with the form's settings; returns at once. ``choice``:
        the ssh host (paths are the host's, as typed: ``~/x`` is its home, and
        ``settings.train.out`` a run folder there, relative: inside the runs folder, empty for a
        new one); ``None``: this computer with ``python``, paths made absolute here."""
        if self.running:
            raise RuntimeError("a training run is already in progress")
        if choice is None:
            self.run_host = local_host(python)
            settings = settings.with_values(out=absolute_path(settings.train.out))
            args = settings.trainer_args()
        else:
            self.run_host = choice.run_host()
            args = settings.trainer_args(str)  # the agent expands ~ there
        self.settings = settings
        self._started = True
        out = settings.train.out or None
        host = self.run_host
        slurm = choice.slurm if choice is not None else None

        def work() -> None:
            if slurm is not None:
                run, self.job_id = host.submit(args, slurm, out=out)
            else:
                run = host.start(args, out=out, gpus=settings.gpus)
            _emit(self._updated, run)
            self._follow(host, run)

        self._spawn(work)

    def attach(self, run: RemoteRun, offset: int = 0, log_offset: int = 0) -> None:
        """Follow a run started earlier from byte ``offset`` of its events (0: the curves
        fill at once) and ``log_offset`` of its log."""
        if self.running:
            raise RuntimeError("a training run is already in progress")
        self.run_host = host_for(run)
        self._started = self.attached = True
        self._set_run(run)
        host = self.run_host
        self._spawn(lambda: self._follow(host, run, offset, log_offset))

    def _spawn(self, work: Callable[[], None]) -> None:
        """``work`` (start, then follow) on a worker thread; a failure ends the run."""
        call = BlockingCall(work, self)
        call.failed.connect(self._on_worker_failed)
        call.start()

    def _set_run(self, run: RemoteRun) -> None:
        self.run = run
        if self.settings is not None:
            self.settings = self.settings.with_values(out=run.out)
        self.run_started.emit(run)
        if self.kill_requested:  # Kill or Stop pressed while the agent was starting it
            self._call(lambda host, r: host.kill(r))
        elif self.stop_requested:
            self._call(lambda host, r: host.stop(r))

    # -- the worker ---------------------------------------------------------------------------

    def _follow(self, host: RunHost, run: RemoteRun, offset: int = 0, log_offset: int = 0) -> None:
        """On the worker thread: pass every update on, a host's sample grid once it is
        here."""
        follower = host.follow(run, offset, log_offset)
        self.follower = follower
        if self._ended:
            follower.close()
        for update in follower:
            event = update.event
            if run.host and update.kind == "event" and event and event.get("event") == "samples":
                update = replace(update, event=self._fetched_samples(host, run, event))
            _emit(self._updated, update)
            if self._ended:
                follower.close()

    def _fetched_samples(
        self, host: RunHost, run: RemoteRun, event: dict[str, Any]
    ) -> dict[str, Any]:
        """The event with ``path`` a local copy of the host's grid (``remote_path`` the
        host's); unchanged when the copy failed (the page then shows no new grid)."""
        path = str(event.get("path", ""))
        try:
            local = fetch_file(host, run, path)
        except (RemoteError, OSError):
            return event  # a lost connection: the follower notices and retries
        return {**event, "path": local, "remote_path": path}

    # -- on the GUI thread --------------------------------------------------------------------

    def _on_update(self, update: FollowUpdate | RemoteRun) -> None:
        if self._ended:
            return
        if isinstance(update, RemoteRun):
            self._set_run(update)
            return
        if update.kind == "event" and update.event is not None:
            self._on_event(update.event)
        elif update.kind == "log" and update.text:
            self.stderr_tail.extend(line for line in update.text.splitlines() if line.strip())
            self.log_received.emit(update.text)
        elif update.kind == "lost":
            self.lost = update.text
            self.connection_changed.emit(update.text)
        elif update.kind == "connected":
            if self.lost:
                self.lost = ""
                self.connection_changed.emit("")
        elif update.kind == "ended":
            self._on_ended(update.state or "failed", update.text, update.code)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind in ("step", "eval", "done") and isinstance(event.get("step"), int):
            self.last_step = event["step"]
        if kind == "checkpoint" and event.get("kind") == "latest":
            self.last_checkpoint = event.get("path")
        elif kind == "done":
            self.done_event = event
            self.last_checkpoint = event.get("checkpoint") or self.last_checkpoint
        elif kind == "error":
            self.error_message = str(event.get("message", "unknown error"))
        self.event_received.emit(event)

    @property
    def outcome(self) -> str:
        """How the run ended: its ``done`` event's reason (``finished``, ``stopped``, ...),
        ``killed``, ``stopped`` (while still starting) or ``failed``."""
        if self.done_event is not None:
            return str(self.done_event.get("reason", "finished"))
        if self.kill_requested:
            return "killed"
        return "stopped" if self.stop_requested and self.last_step == 0 else "failed"

    def _on_ended(self, state: str, message: str, code: int | None) -> None:
        self.state = state
        if self.done_event is not None or self.kill_requested or state != "failed":
            self._end(None, FINISHED_CODES.get(state, 1) if code is None else code)
        else:  # stopped while still starting, or failed
            failure = None if self.outcome == "stopped" else self._failure_message(code, message)
            self._end(failure, -1 if code is None else code)

    def _failure_message(self, code: int | None, message: str) -> str:
        """One sentence, the same for a run here and one on a host: how it ended (the
        trainer's exit status, where its supervisor wrote it) and why."""
        where = f" on {self.host}" if self.host else ""
        if code == 3:
            head = f"Training diverged{where}"
        elif code == 4:  # core.training.trainer.SaveFailedError
            head = f"Saving failed{where}"
        elif code is None:
            head = f"The run{where} failed"
        elif code < 0:
            head = f"The trainer{where} crashed"
        else:
            head = f"The trainer{where} stopped with exit status {code}"
        tail = self.stderr_tail[-1] if self.stderr_tail else ""
        reason = self.error_message or message or tail
        return f"{head}: {reason}" if reason else f"{head} before finishing."

    def _on_worker_failed(self, message: str) -> None:
        if not self._ended:
            self.state = "failed"
            self._end(message[:1].upper() + message[1:], -1)

    def _end(self, message: str | None, code: int = -1) -> None:
        self._ended = True
        self._stop_following()
        if message is not None:
            self.failed.emit(message)
        self.finished.emit(code)

    # -- stop, kill, leave --------------------------------------------------------------------

    def _call(self, action: Callable[[RunHost, RemoteRun], object]) -> None:
        host, run = self.run_host, self.run
        if host is None or run is None:
            return
        call = BlockingCall(lambda: action(host, run), self)
        call.failed.connect(self.call_failed)
        self._calls = [c for c in self._calls if not c.done] + [call]
        call.start()

    def stop(self) -> None:
        """Write ``OUT/STOP`` (the agent asks again once the trainer has started): the
        trainer saves ``latest.pt`` and finishes; the follower sees its ``done`` event."""
        if self.running and not self.stop_requested:
            self.stop_requested = True
            self._call(lambda host, run: host.stop(run))  # before the run exists: on start

    def kill(self) -> None:
        """End the run's process group at once; checkpoints written stay."""
        if self.running:
            self.kill_requested = True
            self._call(lambda host, run: host.kill(run))

    def detach(self) -> int | None:
        """Stop following; the run goes on (File > Recent Runs, or its folder, follows it
        again). Returns the process started for it."""
        if self.running:
            self._ended = True
            self._stop_following()
        return self.pid

    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.close()

    # -- fetching -----------------------------------------------------------------------------


def fetch_call(
    run: RemoteRun,
    path: str,
    progress: Callable[[str, int, int], None] | None = None,
    parent: QObject | None = None,
) -> BlockingCall:
    """A started :class:`BlockingCall` that fetches ``path`` of ``run`` into its cache
    folder (:func:`~core.runs.host.default_cache_dir`) and answers the local path."""

    def report(name: str, done: int, total: int) -> None:
        with contextlib.suppress(RuntimeError):  # its page was closed while fetching
            progress(name, done, total)

    return BlockingCall(
        lambda: fetch_file(host_for(run), run, path, progress and report), parent
    ).start()


def run_entry_text(record: dict[str, Any]) -> str:
    """A remembered run as File > Recent Runs lists it: ``run-… on HOST — running (step
    1,200 / 5,000)``. A run here is read from its folder, so its state is current."""
    out = str(record["out"])
    host = record.get("host")
    state, step, total = record.get("state", "running"), record.get("step"), None
    if not host:
        state, step, total = local_run_state(Path(out), state)
    total = total or record.get("max_steps")
    progress = ""
    if isinstance(step, int) and step:
        progress = (
            f" (step {step:,} / {total:,})" if isinstance(total, int) else f" (step {step:,})"
        )
    where = f"on {host}" if host else "on this computer"
    job = record.get("scheduler")
    job = f" · {job_words(job)}" if isinstance(job, dict) and job.get("job_id") else ""
    return f"{PurePosixPath(out).name} {where} — {state}{progress}{job}"


def local_run_state(out: Path, remembered: str = "running") -> tuple[str, int | None, int | None]:
    """``(state, step, max_steps)`` of a run folder here, by the rule the trainer and the
    CLI share (:func:`core.runs.folder.run_state`: its events and its lock);
    ``missing`` for a folder that is gone, the remembered state for one with no run yet."""
    from core.runs.folder import run_state

    if not out.is_dir():
        return "missing", None, None
    state = run_state(out)
    name = remembered if state.state == "none" else state.state
    return name, state.step, state.max_steps
