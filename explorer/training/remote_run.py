"""Runs on an ssh host, seen by the training page exactly as local ones: the Qt side of
:mod:`core.runs.host`.

The remote API blocks (every call is an ssh command), so nothing here calls it on the GUI
thread: :class:`BlockingCall` runs one call on a thread of its own and answers on the GUI
thread, and :class:`RemoteTrainingProcess` follows a run through the API's one long-lived
follow stream (one ssh process on the host's shared connection, not one per poll) on a
worker thread, turning its updates into the same signals a local
:class:`~explorer.training.process.TrainingProcess` sends. Sample grids are fetched into
the run's local cache folder as the trainer writes them (verified by SHA-256), so the page
shows them from a local file; checkpoints stay on the host until "Open in Explorer".

A lost connection never ends a run: the follower says "connection lost, retrying in N s"
(:attr:`RemoteTrainingProcess.connection_changed`) and resumes from the byte offset of the
last event it passed on, so no event is shown twice or missed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from PySide6.QtCore import QObject, Signal

from core.runs.host import (
    DEFAULT_PYTHON,
    DEFAULT_RUNS_DIR,
    FetchResult,
    Follower,
    FollowUpdate,
    RemoteRun,
    RunHost,
    default_cache_dir,
    host_for,
    ssh_host,
)
from core.runs.transport import RemoteError
from explorer.training.process import RunProcess, RunSettings

FINISHED_CODES = {"done": 0, "stopped": 0, "failed": 1}


@dataclass(frozen=True)
class HostChoice:
    """Where the form says a run goes: an ssh config alias or ``user@host[:port]``, the
    host's Python, its runs folder and an optional ssh config file (``ssh -F``)."""

    host: str
    python: str = DEFAULT_PYTHON
    runs_dir: str = DEFAULT_RUNS_DIR
    config_file: str = ""

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
        else:
            _emit(self.succeeded, result)


def _emit(signal: Any, *args: object) -> None:
    # The receiver may be gone (its window closed) while a host still answered.
    with contextlib.suppress(RuntimeError):
        signal.emit(*args)


class RemoteTrainingProcess(RunProcess):
    """A run on an ssh host, followed as the page follows a local one.

    :meth:`start` launches it (detached there: it outlives this window and the
    connection), :meth:`attach` follows a run started earlier (File > Recent Runs).
    Besides :class:`RunProcess`'s signals: ``run_started(RemoteRun)`` once the host named
    the run folder, ``connection_changed(text)`` with "connection lost, retrying in N s"
    while the host is away and ``""`` when it is back, ``call_failed(sentence)`` when Stop
    or Kill did not reach the host.
    """

    run_started = Signal(object)  # RemoteRun
    connection_changed = Signal(str)
    call_failed = Signal(str)
    _updated = Signal(object)  # FollowUpdate, from the worker
    _worker_failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.run: RemoteRun | None = None
        self.run_host: RunHost | None = None
        self.follower: Follower | None = None
        self.cache: Path | None = None
        self.state: str | None = None
        self.lost: str = ""
        self.attached = False  # followed from File > Recent Runs, not started here
        self._calls: list[BlockingCall] = []
        self._updated.connect(self._on_update)
        self._worker_failed.connect(self._on_worker_failed)

    @property
    def host(self) -> str | None:  # type: ignore[override]
        return self.run_host.label if self.run_host is not None else None

    # -- starting and attaching ---------------------------------------------------------------

    def start(self, settings: RunSettings, choice: HostChoice) -> None:
        """Start ``realnvp train`` on the host with the form's settings; returns at once.
        Paths are the host's (``~/x`` is the host's home); ``settings.out`` is a run folder
        there (relative: inside the runs folder), empty for a new one."""
        if self.running:
            raise RuntimeError("a training run is already in progress")
        self.run_host = choice.run_host()
        self.settings = settings
        self._reset()
        # Paths as typed: the agent expands ~ there and takes a relative --out or --resume
        # inside the runs folder, a relative data folder in the home folder.
        args = settings.trainer_args(str)
        out = settings.out or None
        host = self.run_host

        def work() -> None:
            run = host.start(args, out=out, gpus=settings.gpus)
            _emit(self._updated, run)
            self._follow(host, run)

        self._spawn(work)

    def attach(self, run: RemoteRun) -> None:
        """Follow a run started earlier, from its first event (the curves fill at once)."""
        if self.running:
            raise RuntimeError("a training run is already in progress")
        self.run_host = host_for(run)
        self._reset()
        self.attached = True
        self._set_run(run)
        host = self.run_host
        self._spawn(lambda: self._follow(host, run))

    def _spawn(self, work: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                work()
            except RemoteError as exc:
                _emit(self._worker_failed, str(exc))
            except OSError as exc:
                _emit(self._worker_failed, f"{exc.strerror or exc}")

        threading.Thread(target=guarded, daemon=True, name="remote-follow").start()

    def _set_run(self, run: RemoteRun) -> None:
        self.run = run
        self.cache = default_cache_dir(run)
        if self.settings is not None:
            self.settings = replace(self.settings, out=run.out)
        self.run_started.emit(run)
        if self.stop_requested:  # Stop pressed while the host was still starting it
            self._call(lambda host, r: host.stop(r))

    # -- the worker ---------------------------------------------------------------------------

    def _follow(self, host: RunHost, run: RemoteRun) -> None:
        """On the worker thread: pass every update on, a sample grid once it is here."""
        follower = host.follow(run)
        self.follower = follower
        cache = default_cache_dir(run)
        for update in follower:
            event = update.event
            if update.kind == "event" and event and event.get("event") == "samples":
                update = replace(update, event=self._fetched_samples(host, run, cache, event))
            _emit(self._updated, update)
            if self._ended:
                follower.close()

    def _fetched_samples(
        self, host: RunHost, run: RemoteRun, cache: Path, event: dict[str, Any]
    ) -> dict[str, Any]:
        """The event with ``path`` a local copy of the host's grid (``remote_path`` the
        host's); unchanged when the copy failed (the page then shows no new grid)."""
        path = str(event.get("path", ""))
        name = remote_name(path, run)
        if name is None:
            return event
        try:
            result = host.fetch(run, cache, names=[name])
        except (RemoteError, OSError):
            return event  # a lost connection: the follower notices and retries
        if not result.files:
            return event
        return {**event, "path": str(result.files[0]), "remote_path": path}

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
            self._on_log(update.text)
        elif update.kind == "lost":
            self.lost = update.text
            self.connection_changed.emit(update.text)
        elif update.kind == "connected":
            if self.lost:
                self.lost = ""
                self.connection_changed.emit("")
        elif update.kind == "ended":
            self._on_ended(update.state or "failed", update.text)

    def _on_ended(self, state: str, message: str) -> None:
        self.state = state
        code = FINISHED_CODES.get(state, 1)
        if self.done_event is not None or self.kill_requested or state != "failed":
            self._end(None, code)
        else:
            reason = message or self.error_message or ""
            host = self.host or "the host"
            self._end(
                f"The run on {host} failed: {reason}"
                if reason
                else self._failure_message(code, False),
                code,
            )

    def _on_worker_failed(self, message: str) -> None:
        if not self._ended:
            self.state = "failed"
            self._end(message[:1].upper() + message[1:], -1)

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
        """Write ``OUT/STOP`` on the host: the trainer saves ``latest.pt`` and finishes;
        the follower sees its ``done`` event."""
        if self.running and not self.stop_requested:
            self.stop_requested = True
            self._call(lambda host, run: host.stop(run))  # before the run exists: on start

    def kill(self) -> None:
        """Signal the run's process group on the host; checkpoints written stay."""
        if self.running:
            self.kill_requested = True
            self._call(lambda host, run: host.kill(run))

    def detach(self) -> int | None:
        """Stop following; the run goes on on the host (File > Recent Runs re-attaches)."""
        if self.running:
            self._ended = True
            self._stop_following()
        return None

    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.close()

    # -- fetching -----------------------------------------------------------------------------


def fetch_call(
    run: RemoteRun,
    path: str,
    progress: Callable[[str, int, int], None] | None = None,
    cancel: threading.Event | None = None,
    parent: QObject | None = None,
) -> BlockingCall:
    """A started :class:`BlockingCall` that fetches ``path`` of ``run`` into its cache
    folder (:func:`~core.runs.host.default_cache_dir`) and answers the local path."""

    def work() -> str:
        host = host_for(run)
        name = remote_name(path, run)
        if name is None:
            raise RemoteError(f"{path} is not inside the run folder {run.out}", "bad-input")
        result: FetchResult = host.fetch(
            run, default_cache_dir(run), names=[name], progress=progress, cancel=cancel
        )
        if not result.files:
            raise RemoteError(f"{name} is not in the run folder {run.out} on {host.label}")
        return str(result.files[0])

    return BlockingCall(work, parent).start()


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
    return f"{PurePosixPath(out).name} {where} — {state}{progress}"


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
