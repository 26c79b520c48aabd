"""A run folder belongs to one run: the lock, the refusal sentences and the run's state.

Every launcher (``realnvp train``, rank 0 under ``torchrun``, the training page, the remote
launcher) goes through :func:`claim_run_folder` before a trainer writes anything, and every
reader (the training page, File > Recent Runs, a remote ``status --json``) asks
:func:`run_state`. Torch-free, so the GUI process can use it.

The rule:

* ``OUT/run.lock`` (JSON: pid, host, start time, command line) names the process holding
  the folder. It is created with an atomic link, so of two trainers starting together one
  wins and the other is refused with a sentence naming the winner. It is removed when the
  run ends normally and stays when the process is killed; a lock whose process is gone (same
  host: the pid is dead, or now belongs to a process started later) is taken over, and
  that is said. A lock from another host is never guessed about: the sentence names the
  host and how to free the folder.
* A folder holding an earlier run (a checkpoint, or events of training steps) is refused
  unless the caller resumes it or asks for a fresh start (``overwrite``), which moves the
  old checkpoints, samples and TensorBoard files into ``previous-YYYYMMDD-HHMMSS/`` and
  copies the old event and log files there before emptying them (emptied, not moved: a
  launcher may already hold them open as the new trainer's stdout and stderr).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shlex
import shutil
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The run folder's files, named here once for the trainer, the agent and the page.
LOCK_FILE = "run.lock"
EVENTS_FILE = "events.jsonl"  # the trainer's stdout: one JSON event a line
LOG_FILE = "trainer.log"  # the trainer's stderr
STOP_FILE = "STOP"  # created in the run folder, it asks the run to save and finish
LAUNCH_FILE = "launch.json"  # what the agent started there: process, host, argv
MAX_READ = 256 * 1024  # bytes of a run file read at a time
EXIT_FILE = "exit.json"  # the trainer's exit status, written by the agent's supervisor
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files (core/training/tensorboard.py)
CHECKPOINT_SUFFIX = ".pt"
PREVIOUS_PREFIX = "previous-"
STATES = ("none", "running", "done", "failed", "stopped")


class RunFolderError(Exception):
    """A run folder that cannot be used now; the message is one sentence for the user."""


# -- the lock ----------------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (Linux ``/proc``); ``None`` elsewhere.
    Stored in the lock so a pid reused by a later process does not look like the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie, ended and not yet reaped,
    does not). On Windows it is asked, never signalled: ``os.kill`` there ends a process."""
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        kernel = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        try:
            kernel.GetExitCodeProcess(handle, ctypes.byref(code))
        finally:
            kernel.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    except OSError:
        return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _command_line() -> str:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


@dataclass(frozen=True)
class LockInfo:
    """Who holds a run folder: the content of ``OUT/run.lock``."""

    pid: int
    host: str
    started: float  # seconds since the epoch
    command: str = ""
    token: str = ""
    pid_start: int | None = None

    @classmethod
    def for_this_process(cls, command: str | None = None) -> LockInfo:
        pid = os.getpid()
        return cls(
            pid=pid,
            host=socket.gethostname(),
            started=time.time(),
            command=command if command is not None else _command_line(),
            token=uuid.uuid4().hex,
            pid_start=process_start_ticks(pid),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LockInfo:
        start = data.get("pid_start")
        return cls(
            pid=int(data["pid"]),
            host=str(data["host"]),
            started=float(data.get("started", 0.0)),
            command=str(data.get("command", "")),
            token=str(data.get("token", "")),
            pid_start=int(start) if start is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool | None:
        """Whether the holder still runs; ``None`` when it is on another host (unknowable)."""
        if not self.on_this_host:
            return None
        if not pid_alive(self.pid):
            return False
        if self.pid_start is not None:
            now = process_start_ticks(self.pid)
            if now is not None and now != self.pid_start:
                return False  # the pid now belongs to a later process
        return True

    def describe(self) -> str:
        """``process 4242 on host-a (started 2026-12-05 07:15:00: realnvp train ...)``."""
        command = f": {self.command}" if self.command else ""
        if len(command) > 120:
            command = command[:117] + "..."
        return f"process {self.pid} on {self.host} (started {_clock(self.started)}{command})"


def read_launch(out: str | os.PathLike) -> dict[str, Any]:
    """``OUT/launch.json``: what a launcher started there (empty when there is none)."""
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((Path(out) / LAUNCH_FILE).read_text())
        if isinstance(record, dict):
            return record
    return {}


def read_lock(out: str | os.PathLike) -> LockInfo | None:
    """The lock in ``out``, or ``None`` when there is none. A lock that cannot be read (being
    written this instant, or damaged) is reported as held by an unknown process on this
    host with pid 0, so it is never mistaken for a free folder for longer than a moment."""
    path = Path(out) / LOCK_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        text = ""
    try:
        return LockInfo.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        return LockInfo(pid=0, host=socket.gethostname(), started=mtime, command="unreadable lock")


class RunLock:
    """The claim of one run on its folder; :meth:`release` (or leaving the ``with`` block)
    removes the lock if it is still this one's. ``warnings`` holds what the claim had to say
    (a stale lock taken over, an earlier run moved aside); ``previous`` is where
    ``overwrite`` moved the earlier run, if it did."""

    def __init__(
        self,
        out: Path,
        info: LockInfo,
        warnings: list[str] | None = None,
        previous: Path | None = None,
    ) -> None:
        self.out = out
        self.info = info
        self.warnings = list(warnings or [])
        self.previous = previous
        self.released = False

    @property
    def path(self) -> Path:
        return self.out / LOCK_FILE

    def held(self) -> bool:
        """Whether the folder's lock is still this one (it is gone if the folder was removed)."""
        current = read_lock(self.out)
        return current is not None and current.token == self.info.token

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.held():
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- the state of a run --------------------------------------------------------------------------


@dataclass
class RunState:
    """What a run folder holds, read from ``events.jsonl``, its checkpoints and the lock.

    ``state``: ``none`` (no run yet), ``running`` (a live process holds the lock, or one on
    another host does), ``done`` (finished its steps), ``stopped`` (stopped early, or a
    folder with checkpoints but no events), ``failed`` (an ``error`` event, or events that
    end without ``done`` and no live holder: killed)."""

    state: str = "none"
    step: int | None = None
    max_steps: int | None = None
    test_bpd: float | None = None
    test_step: int | None = None
    holder: LockInfo | None = None
    message: str | None = None  # the error sentence of a failed run
    checkpoints: list[str] = field(default_factory=list)

    @property
    def has_run(self) -> bool:
        """Whether there is an earlier run here that a new one would overwrite."""
        return self.state != "none"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["holder"] = self.holder.to_dict() if self.holder else None
        return data

    def describe(self) -> str:
        """``a finished run (step 400 of 400, test 1.7640 bits/dim at step 400)``."""
        kind = {
            "none": "no run",
            "running": "a running run",
            "done": "a finished run",
            "stopped": "a stopped run",
            "failed": "a failed run",
        }[self.state]
        bits = []
        if self.step is not None:
            of = f" of {self.max_steps}" if self.max_steps else ""
            bits.append(f"step {self.step:,}{of}")
        if self.test_bpd is not None and math.isfinite(self.test_bpd):
            at = f" at step {self.test_step:,}" if self.test_step is not None else ""
            bits.append(f"test {self.test_bpd:.4f} bits/dim{at}")
        if not bits and self.checkpoints:
            bits.append(", ".join(self.checkpoints))
        return f"{kind} ({', '.join(bits)})" if bits else kind


def parse_event(line: str | bytes) -> dict[str, Any] | None:
    """One trainer event (a JSON object with an ``event`` name), or ``None`` for a line that
    is not one: the one reader of ``events.jsonl`` lines, here, in the agent and the page."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("event"), str) else None


def complete_lines(path: Path, offset: int) -> tuple[list[tuple[int, bytes]], int]:
    """Complete lines after ``offset`` (at most :data:`MAX_READ` bytes, so no read stalls
    its reader), each with the offset after it; a file now shorter than ``offset`` was
    replaced: from its start."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset = 0
            f.seek(offset)
            data = f.read(min(MAX_READ, size - offset))
    except OSError:
        return [], offset
    lines, pos = [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    for raw in data[: end + 1].splitlines(keepends=True):
        pos += len(raw)
        lines.append((pos, raw.rstrip(b"\r\n")))
    return lines, pos


def read_events(path: str | os.PathLike, after: int = 0) -> list[dict[str, Any]]:
    """Every event of a run's ``events.jsonl`` (or of the run folder holding it) after byte
    ``after``, in order; none for a file that cannot be read."""
    path = Path(path)
    if path.is_dir():
        path = path / EVENTS_FILE
    try:
        with path.open("rb") as f:
            f.seek(after)
            data = f.read()
    except OSError:
        return []
    events = (parse_event(line.decode("utf-8", "replace")) for line in data.split(b"\n"))
    return [e for e in events if e is not None]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def checkpoint_files(out: str | os.PathLike) -> list[str]:
    """Names of the checkpoints at the top of ``out`` (``latest.pt``, ``best.pt``), sorted."""
    try:
        return sorted(
            p.name
            for p in Path(out).iterdir()
            if p.suffix == CHECKPOINT_SUFFIX and p.is_file() and not p.name.startswith(".")
        )
    except OSError:
        return []


def run_state(out: str | os.PathLike) -> RunState:
    """The state of the run in ``out`` (see :class:`RunState`); a folder that does not exist
    is ``none``."""
    out = Path(out)
    state = RunState(checkpoints=checkpoint_files(out))
    trained = False
    phase = "none"  # none | started | done | stopped | failed
    for e in read_events(out / EVENTS_FILE):
        kind = e["event"]
        step = _int(e.get("step"))
        if kind == "start":
            phase, state.message = "started", None
            state.max_steps = _int(e.get("total_steps"))
        elif kind == "step":
            trained = True
        elif kind == "eval":
            state.test_bpd, state.test_step = _float(e.get("test_bpd")), step
        elif kind == "done":
            phase = "done" if e.get("reason") == "finished" else "stopped"
        elif kind == "error":
            phase, state.message = "failed", str(e.get("message", ""))
        if step is not None and kind in ("start", "step", "eval", "checkpoint", "done"):
            state.step = step
    holder = read_lock(out)
    alive = holder.alive() if holder is not None else False
    if holder is not None and alive is not False:
        state.holder, state.state = holder, "running"
    elif phase in ("done", "stopped", "failed"):
        state.state = phase
    elif phase == "started":
        # Events that end without done or error, and nobody holds the folder: killed.
        state.state = "failed" if (trained or state.checkpoints) else "none"
        if state.state == "failed":
            state.message = "the run ended without saying so (killed, or its machine went down)"
    elif state.checkpoints:
        state.state = "stopped"  # checkpoints from a run without an event log
    if state.state == "failed" and not (trained or state.checkpoints) and phase == "failed":
        # A run that failed before its first step (a typo in the data folder) left nothing
        # to lose: the folder is free for the next try.
        state.state = "none"
    if holder is not None and alive is False:
        state.holder = holder  # stale: shown, and taken over by the next claim
    return state


# -- claiming ----------------------------------------------------------------------------------


def _link_lock(out: Path, info: LockInfo) -> bool:
    """Create ``out/run.lock`` holding ``info`` if there is none, atomically and whole:
    written to a temporary file, then hard-linked into place (which fails if the name exists).
    Returns False when a lock is already there."""
    tmp = out / f".{LOCK_FILE}.{info.token}.tmp"
    target = out / LOCK_FILE
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info.to_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        # A file system without hard links (FAT, some network shares): exclusive create.
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info.to_dict(), f)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _holder_sentence(out: Path, holder: LockInfo) -> str:
    if holder.on_this_host:
        return (
            f"{out} is in use by another run: {holder.describe()}; wait for it or stop it "
            "(create a STOP file in the folder), or choose another output folder"
        )
    return (
        f"{out} is in use by a run on {holder.host}: {holder.describe()}; if that run is "
        f"over, remove {out / LOCK_FILE}, or choose another output folder"
    )


def _prepare_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} is a file, not a folder; choose a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f"{out} cannot be created: part of the path is a file") from None
    except NotADirectoryError:
        raise RunFolderError(f"{out} cannot be created: part of the path is a file") from None
    except PermissionError:
        raise RunFolderError(f"{out} cannot be created: permission denied") from None
    except OSError as exc:
        raise RunFolderError(f"{out} cannot be created: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunFolderError(f"{out} is not writable; choose another output folder")


def _earlier_run_sentence(out: Path, state: RunState, how: str) -> str:
    return f"{out} already holds {state.describe()}; {how}"


CLI_CHOICES = (
    "pass --resume to continue it, or --overwrite to start afresh (the old files are kept "
    "in a previous-DATE folder inside it), or choose another output folder"
)


def check_run_folder(
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    choices: str = CLI_CHOICES,
    ask_slurm: bool = True,
) -> RunState:
    """Raise :class:`RunFolderError` when a run may not start in ``out`` now (the sentence a
    claim would give), else return the folder's state. Creates nothing; ``choices`` is the
    advice for a folder that holds an earlier run (the training page words it its own way).
    ``ask_slurm=False`` leaves out the question to Slurm whether the batch job named in the
    folder's ``launch.json`` still holds it (:func:`core.runs.slurm.job_holding`, up to 5 s
    when the controller does not answer): the training page asks it off its GUI thread."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} is a file, not a folder; choose a folder for the run")
    state = run_state(out)
    if state.state == "running" and state.holder is not None:
        raise RunFolderError(_holder_sentence(out, state.holder))
    # No trainer holds the lock of a batch job still in the queue: its job id does.
    from core.runs.slurm import job_holding

    held_by_job = job_holding(out, read_launch(out)) if ask_slurm else None
    if held_by_job is not None:
        raise RunFolderError(held_by_job)
    if state.has_run and not (resume or overwrite):
        raise RunFolderError(_earlier_run_sentence(out, state, choices))
    return state


def new_run_folder(runs: Path) -> Path | None:
    """A fresh ``run-YYYYmmdd-HHMMSS`` folder name in ``runs`` (``-2``, ``-3``, ... after it
    where that is taken): the one naming of a new run, for the agent and the training page;
    ``None`` when a thousand are taken."""
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        out = runs / (stamp if i == 1 else f"{stamp}-{i}")
        if not out.exists():
            return out
    return None


def previous_folder_name(now: float | None = None) -> str:
    return PREVIOUS_PREFIX + time.strftime("%Y%m%d-%H%M%S", time.localtime(now))


def _move_earlier_run(out: Path) -> Path | None:
    """Move the earlier run in ``out`` into a new ``previous-DATE/`` folder inside it: the
    checkpoints and samples moved, the event and log files copied and then emptied."""
    movable = [out / n for n in checkpoint_files(out)]
    movable += [out / n for n in (SAMPLES_DIR, TENSORBOARD_DIR) if (out / n).is_dir()]
    copied = [
        out / n for n in (EVENTS_FILE, LOG_FILE) if (out / n).is_file() and (out / n).stat().st_size
    ]
    if not movable and not copied:
        return None
    name, n = previous_folder_name(), 1
    dest = out / name
    while dest.exists():
        n += 1
        dest = out / f"{name}-{n}"
    dest.mkdir()
    for path in movable:
        os.replace(path, dest / path.name)
    for path in copied:
        shutil.copy2(path, dest / path.name)
        os.truncate(path, 0)  # O_APPEND writers (>>, QProcess Append) go on at the start
    return dest


def claim_run_folder(
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
) -> RunLock:
    """Make ``out`` this process's run folder, or raise :class:`RunFolderError`.

    Creates ``out``; refuses a file, a folder held by a live process (naming it), and a
    folder holding an earlier run unless ``resume`` (continue it) or ``overwrite`` (move it
    aside into ``previous-DATE/``). A lock left by a dead process on this host is taken over,
    which the returned lock's ``warnings`` say."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; choose one")
    out = Path(out)
    _prepare_folder(out)
    check_run_folder(out, resume=resume, overwrite=overwrite)
    info = LockInfo.for_this_process(command)
    warnings: list[str] = []
    for _attempt in range(3):
        try:
            if _link_lock(out, info):
                break
        except OSError as exc:
            raise RunFolderError(
                f"{out}: cannot write the lock file ({exc.strerror or exc})"
            ) from None
        holder = read_lock(out)
        if holder is None:
            continue  # released between the two looks: try again
        if holder.alive() is not False:
            raise RunFolderError(_holder_sentence(out, holder))
        # A stale lock: check it is still the same one, then take it over.
        again = read_lock(out)
        if again != holder:
            continue
        with contextlib.suppress(FileNotFoundError):
            (out / LOCK_FILE).unlink()
        warnings.append(f"took over {out} from {holder.describe()}, which is no longer running")
    else:
        raise RunFolderError(f"{out}: could not take the lock; another run keeps claiming it")
    lock = RunLock(out, info, warnings)
    if overwrite:
        try:
            lock.previous = _move_earlier_run(out)
        except OSError as exc:
            lock.release()
            raise RunFolderError(
                f"{out}: could not move the earlier run aside ({exc.strerror or exc})"
            ) from None
        if lock.previous is not None:
            lock.warnings.append(f"the earlier run in {out} is kept in {lock.previous}")
    return lock


def same_file(stream: Any, path: str | os.PathLike) -> bool:
    """Whether ``stream`` (a file object, e.g. stdout) writes to ``path``: a launcher that
    redirects the trainer's stdout into ``OUT/events.jsonl`` is told apart from a terminal."""
    try:
        a = os.fstat(stream.fileno())
        b = os.stat(path)
    except (AttributeError, OSError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, hex: how a fetched copy is checked against the run's."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
