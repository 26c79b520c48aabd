"""Running the trainer from the GUI: the command line, the process and its event stream.

Nothing here is a widget, and nothing here imports torch: the trainer
(``python -m core train --progress json``) runs as a child process, and the two small jobs
that need ``core`` (checking a data set, listing devices) run as child processes of this
module (``python -m explorer.training.process scan|devices``), so the GUI process never
loads torch.

The trainer writes its stdout, one JSON event per line, straight into
``OUT/events.jsonl`` and its stderr into ``OUT/trainer.log`` (both appended); the GUI
follows the two files. Pipes would tie the trainer's life to the GUI's (the first event
written after the GUI exits would fail with a broken pipe), whereas files let a run be
left running when the window closes, and let any earlier run be reopened from its output
folder to see its curves (:func:`read_event_log`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import shlex
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QProcess, QTimer, Signal

from core.config import DATASET_GEOMETRY, TRAIN_OPTIONS, geometry_problem  # noqa: F401
from core.config import PRESETS as CORE_PRESETS
from core.runs.folder import EVENTS_FILE, LOG_FILE, STOP_FILE, parse_event
from core.runs.folder import read_events as read_event_log  # noqa: F401
from core.runs.host import RunHost, local_host

# QProcess.terminate is SIGTERM only on POSIX (on Windows it posts WM_CLOSE, which a console
# program never sees); the stop file works everywhere.
SIGTERM_STOPS = os.name == "posix"
POLL_MS = 100  # how often a running trainer's files are read; events are never later
MAX_READ = 256 * 1024  # bytes per poll (about 1,500 events), so no poll stalls the GUI
STDERR_LINES = 40
DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "folder": "Folder of images"}
# (num_scales, mid_channels, num_blocks) of each preset, read from core.config's (torch-free).
PRESETS = {name: config.sizes for name, config in CORE_PRESETS.items()}
THUMBNAILS = 8
THUMBNAIL_SIZE = 48


# -- settings and the command line -----------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """One training run as the form describes it; :meth:`command` is what runs."""

    dataset: str = "mnist"
    data_dir: str = ""
    download: bool = False
    channels: int = 3  # folders only; MNIST and CIFAR-10 fix their own
    image_size: int = 32  # folders only
    preset: str | None = "mnist-small"  # None: the three sizes below, as given
    num_scales: int = 3
    mid_channels: int = 16
    num_blocks: int = 2
    batch_size: int = TRAIN_OPTIONS["batch_size"].default
    lr: float = TRAIN_OPTIONS["lr"].default
    lr_schedule: str = TRAIN_OPTIONS["lr_schedule"].default
    ema: float = TRAIN_OPTIONS["ema"].default
    init_from: str = ""  # a checkpoint (or "bundled") whose weights a new run starts from
    time_limit: str = ""  # as typed: 90m, 2h, HH:MM:SS; empty: none
    epochs: int = TRAIN_OPTIONS["epochs"].default
    max_steps: int | None = None  # overrides epochs
    device: str = TRAIN_OPTIONS["device"].default
    gpus: int = 1  # more than one runs torchrun, one process per GPU
    out: str = ""
    resume: str = ""  # a checkpoint: data, model and optimizer then come from it
    overwrite: bool = False  # a new run in a folder holding an earlier one, moved aside
    eval_every: int = TRAIN_OPTIONS["eval_every"].default
    eval_limit: int | None = None
    log_every: int = TRAIN_OPTIONS["log_every"].default
    seed: int = TRAIN_OPTIONS["seed"].default
    threads: int | None = None
    compile: bool = False
    flip: bool = False

    @property
    def geometry(self) -> tuple[int, int]:
        """``(channels, image_size)`` of the model."""
        return DATASET_GEOMETRY.get(self.dataset, (self.channels, self.image_size))

    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser()

    def model_flags(self) -> list[str]:
        sizes = (self.num_scales, self.mid_channels, self.num_blocks)
        if self.preset and PRESETS.get(self.preset) == sizes:
            return ["--preset", self.preset]
        return [
            "--num-scales",
            str(self.num_scales),
            "--mid-channels",
            str(self.mid_channels),
            "--num-blocks",
            str(self.num_blocks),
        ]

    def command(self, python: str | None = None) -> list[str]:
        """The trainer's argv. Paths are made absolute so the command works from anywhere."""
        python = python or sys.executable
        if self.gpus > 1:
            launcher = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(self.gpus)]
        else:
            launcher = [python]
        before, after = self._options(_absolute)
        out = ["--out", _absolute(self.out)]
        return [*launcher, "-m", "core", "train", "--progress", "json", *before, *out, *after]

    def trainer_args(self, path: Callable[[str], str] | None = None) -> list[str]:
        """The trainer's options without ``--progress`` and ``--out``: what a launcher on
        another machine (``realnvp remote HOST train``) adds its own to. ``path`` maps each
        path (``str``: as typed, for the agent on a host to expand)."""
        before, after = self._options(path or _absolute)
        return [*before, *after]

    def _options(self, path: Callable[[str], str]) -> tuple[list[str], list[str]]:
        """The trainer's options before and after ``--out``."""
        args: list[str] = []
        if self.resume:
            # Data, model, batch size and learning rate come from the checkpoint.
            args += ["--resume", path(self.resume)]
        else:
            args += ["--dataset", self.dataset, "--data-dir", path(self.data_dir)]
            if self.dataset == "folder":
                args += ["--channels", str(self.channels), "--image-size", str(self.image_size)]
            elif self.download:
                args.append("--download")
            if self.init_from:
                # The model's size is the checkpoint's.
                args += [
                    "--init-from",
                    self.init_from if self.init_from == "bundled" else path(self.init_from),
                ]
            else:
                args += self.model_flags()
            args += ["--batch-size", str(self.batch_size), "--lr", f"{self.lr:g}"]
            args += ["--lr-schedule", self.lr_schedule, "--ema", f"{self.ema:g}"]
            args += ["--seed", str(self.seed)]
            if self.eval_limit:
                args += ["--eval-limit", str(self.eval_limit)]
            if self.flip:
                args.append("--flip")
            if self.overwrite:
                args.append("--overwrite")
        after = ["--max-steps", str(self.max_steps)] if self.max_steps else []
        after = after or ["--epochs", str(self.epochs)]
        # Under torchrun each process takes the GPU of its local rank.
        after += ["--device", "cuda" if self.gpus > 1 else self.device]
        after += ["--eval-every", str(self.eval_every), "--log-every", str(self.log_every)]
        if self.time_limit:
            after += ["--time-limit", self.time_limit]
        if self.threads:
            after += ["--threads", str(self.threads)]
        if self.compile:
            after.append("--compile")
        return args, after

    def shell_command(self, python: str | None = None) -> str:
        """The command to paste in a terminal, with the two files the panel reads."""
        out = self.out_dir
        return (
            f"{join_command(self.command(python))} >> {_quote(str(out / EVENTS_FILE))} "
            f"2>> {_quote(str(out / LOG_FILE))}"
        )


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else path


def _quote(text: str) -> str:
    return subprocess.list2cmdline([text]) if os.name == "nt" else shlex.quote(text)


def join_command(argv: list[str]) -> str:
    return subprocess.list2cmdline(argv) if os.name == "nt" else shlex.join(argv)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 10 min``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# -- reading JSON lines ----------------------------------------------------------------------


class LineBuffer:
    """Bytes in, complete lines out; a partial last line waits for the rest."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[str]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        # Split on bytes first: a multi-byte character cut between two reads stays whole.
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest, self._partial = self._partial, b""
        return [rest.decode("utf-8", "replace").rstrip("\r")] if rest.strip() else []


class FileTail:
    """New complete lines appended to a file since the last read, at most ``MAX_READ``
    bytes at a time; ``pending`` says whether more was already there."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self.pending = False
        self._buffer = LineBuffer()

    @classmethod
    def at_end(cls, path: Path) -> FileTail:
        try:
            return cls(path, path.stat().st_size)
        except OSError:
            return cls(path, 0)

    def read(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start over
                    self.offset, self._buffer = 0, LineBuffer()
                f.seek(self.offset)
                data = f.read(MAX_READ) if size > self.offset else b""
        except OSError:
            return []
        self.offset += len(data)
        self.pending = size > self.offset
        return self._buffer.feed(data) if data else []

    def flush(self) -> list[str]:
        return self._buffer.flush()


class RunFollower(QObject):
    """Follows a run's ``events.jsonl`` and ``trainer.log`` while something appends to them.

    Used for the run the panel started and for a reopened run that may still be going
    (one left running when the window closed).
    """

    event_received = Signal(dict)
    log_received = Signal(str)
    caught_up = Signal()  # the log ends with the run's done or error event

    def __init__(self, out: Path, from_start: bool, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.out = out
        self.last_kind: str | None = None
        make = FileTail if from_start else FileTail.at_end
        self.events = make(out / EVENTS_FILE)
        self.log = make(out / LOG_FILE)
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)

    def start(self) -> None:
        self.poll()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def poll(self, final: bool = False) -> None:
        """Emit what was appended. A long file comes in slices, one per timer tick, so the
        GUI stays responsive; ``final`` reads to the end, last unterminated line too."""
        while True:
            lines = self.events.read()
            if final and not self.events.pending:
                lines += self.events.flush()
            for line in lines:
                event = parse_event(line)
                if event is not None:
                    self.last_kind = event["event"]
                    self.event_received.emit(event)
                elif line.strip():  # the contract says JSON only; show anything else as text
                    self.log_received.emit(line)
            if not (final and self.events.pending):
                break
        log_lines = self.log.read()
        while final and self.log.pending:
            log_lines += self.log.read()
        if final:
            log_lines += self.log.flush()
        if log_lines:
            self.log_received.emit("\n".join(log_lines))
        # The rest of a long file follows as soon as the event loop is idle.
        self.timer.setInterval(0 if self.events.pending else POLL_MS)
        if self.last_kind in ("done", "error") and not self.events.pending:
            self.caught_up.emit()


# -- the training process --------------------------------------------------------------------


class _Process(QProcess):
    def release(self) -> None:
        """Forget the child without ending it: a QProcess kills a child that is still
        running when it is destroyed, unless it believes the child has already gone."""
        self.setProcessState(QProcess.ProcessState.NotRunning)


class RunProcess(QObject):
    """What the panel follows of one run, wherever it runs: its events in order, its
    messages, and how it ended. :class:`TrainingProcess` is a trainer on this computer;
    :class:`~explorer.training.remote_run.RemoteTrainingProcess` one on an ssh host.

    ``event_received`` carries each JSON event in order; ``log_received`` the trainer's
    stderr; ``failed`` a message for the user when the run ended without its ``done``
    event (and was not killed on purpose); ``finished`` the exit status last (-1 after a
    crash or a kill).
    """

    event_received = Signal(dict)
    log_received = Signal(str)
    failed = Signal(str)
    finished = Signal(int)

    host: str | None = None  # None: this computer

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings: RunSettings | None = None
        self.stop_requested = False
        self.kill_requested = False
        self.done_event: dict[str, Any] | None = None
        self.error_message: str | None = None
        self.last_step = 0
        self.last_checkpoint: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._started = False
        self._ended = False

    def _reset(self) -> None:
        self.stop_requested = self.kill_requested = self._ended = False
        self.done_event = self.error_message = self.last_checkpoint = None
        self.last_step = 0
        self.stderr_tail.clear()
        self._started = True

    @property
    def running(self) -> bool:
        return self._started and not self._ended

    def stop(self) -> None:
        """Ask the trainer to save ``latest.pt`` and finish."""
        raise NotImplementedError

    def kill(self) -> None:
        """End the trainer at once; checkpoints already written stay."""
        raise NotImplementedError

    def detach(self) -> int | None:
        """Stop following the run and let it go on by itself."""
        raise NotImplementedError

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start" and self.stop_requested:
            self._stop_again()
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

    def _stop_again(self) -> None:
        """A stop asked for while the trainer was starting is asked for again once it has
        started: the trainer removes a stale stop file before it says start."""

    def _on_log(self, text: str) -> None:
        self.stderr_tail.extend(line for line in text.splitlines() if line.strip())
        self.log_received.emit(text)

    def _failure_message(self, code: int, crashed: bool) -> str:
        if code == 3:
            head = "Training diverged"
        elif code == 4:  # core.training.trainer.SaveFailedError
            head = "Saving failed"
        elif crashed:
            head = "The trainer crashed"
        else:
            head = f"The trainer stopped with exit status {code}"
        reason = self.error_message or (self.stderr_tail[-1] if self.stderr_tail else "")
        return f"{head}: {reason}" if reason else f"{head} before finishing."

    def _end(self, message: str | None, code: int = -1) -> None:
        self._ended = True
        self._stop_following()
        if message is not None:
            self.failed.emit(message)
        self.finished.emit(code)

    def _stop_following(self) -> None:
        """Whatever reads the run's events stops."""


class TrainingProcess(RunProcess):
    """One trainer process on this computer: start, stop (save and finish), kill, or
    leave it running (the signals are :class:`RunProcess`'s)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.process: _Process | None = None
        self.follower: RunFollower | None = None
        self.argv: list[str] = []

    @property
    def pid(self) -> int | None:
        return (self.process.processId() or None) if self.process is not None else None

    def start(self, settings: RunSettings, python: str | None = None) -> None:
        """Start the trainer. Raises ``OSError`` when the output folder cannot be written;
        a trainer that cannot start is reported through ``failed`` and ``finished``."""
        if self.running:
            raise RuntimeError("a training run is already in progress")
        out = Path(_absolute(settings.out))
        out.mkdir(parents=True, exist_ok=True)
        for name in (EVENTS_FILE, LOG_FILE):
            with (out / name).open("ab"):  # fails here, with a clear OSError, if read-only
                pass
        self.settings = replace(settings, out=str(out))
        self.argv = self.settings.command(python)
        self._reset()

        self.follower = RunFollower(out, from_start=False, parent=self)
        self.follower.event_received.connect(self._on_event)
        self.follower.log_received.connect(self._on_log)
        process = _Process(self)
        process.setProgram(self.argv[0])
        process.setArguments(self.argv[1:])
        process.setStandardOutputFile(str(out / EVENTS_FILE), QProcess.OpenModeFlag.Append)
        process.setStandardErrorFile(str(out / LOG_FILE), QProcess.OpenModeFlag.Append)
        process.setStandardInputFile(QProcess.nullDevice())
        if sys.platform != "win32":
            # Its own session: Ctrl+C or a closed terminal of the GUI does not reach it,
            # and it outlives the GUI when left running.
            params = QProcess.UnixProcessParameters()
            params.flags = QProcess.UnixProcessFlag.CreateNewSession
            process.setUnixProcessParameters(params)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self.process = process
        self.follower.start()
        process.start()

    def stop(self) -> None:
        """Ask the trainer to save ``latest.pt`` and finish: the stop file in its output
        folder, which works on every platform and under ``torchrun`` (which then exits
        with status 0), and, for one process on POSIX, SIGTERM too, which the trainer
        notices within the step. ``torchrun`` gets no signal: it would end its workers
        and exit with an error."""
        if self.running and self.process is not None and self.settings is not None:
            self.stop_requested = True
            self._write_stop_file()
            if SIGTERM_STOPS and self.settings.gpus <= 1:
                self.process.terminate()

    def _write_stop_file(self) -> None:
        if self.settings is not None:
            with contextlib.suppress(OSError):  # the folder the trainer itself writes to
                (self.settings.out_dir / STOP_FILE).touch()

    def kill(self) -> None:
        """End the trainer at once; checkpoints already written stay."""
        if self.running and self.process is not None:
            self.kill_requested = True
            self.process.kill()

    def detach(self) -> int | None:
        """Stop following the run and let it go on by itself; returns its process id.

        It keeps writing ``events.jsonl``, ``trainer.log`` and its checkpoints in its
        output folder, where the panel can reopen it later.
        """
        if not self.running or self.process is None:
            return None
        pid = self.pid
        if self.follower is not None:
            self.follower.poll()
            self.follower.stop()
        self.process.finished.disconnect(self._on_finished)
        self.process.errorOccurred.disconnect(self._on_error)
        self.process.release()
        self._ended = True
        return pid

    def _stop_again(self) -> None:
        self._write_stop_file()

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and not self._ended:
            self._end(f"Could not start the trainer ({self.argv[0]}): {self.process.errorString()}")

    def _on_finished(self, exit_code: int, status: QProcess.ExitStatus) -> None:
        if self._ended:
            return
        if self.follower is not None:
            self.follower.poll(final=True)
        crashed = status == QProcess.ExitStatus.CrashExit
        code = -1 if crashed else exit_code
        if self.done_event is not None or self.kill_requested:
            self._end(None, code)
        elif self.stop_requested and self.last_step == 0:
            self._end(None, code)  # stopped while still starting: nothing to save yet
        else:
            self._end(self._failure_message(code, crashed), code)

    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.stop()


# -- child jobs: checking a data set, listing devices ------------------------------------------


@dataclass
class ScanReport:
    """What a data check found so far. ``readable`` counts images the trainer can load."""

    dataset: str
    data_dir: str
    files: int | None = None
    checked: int = 0
    readable: int = 0
    train: int | None = None
    test: int | None = None
    finished: bool = False
    missing: bool = False  # MNIST / CIFAR-10 absent, to be downloaded by the trainer
    error: str | None = None
    skipped_names: list[str] = field(default_factory=list)  # unreadable files, folder-relative
    thumbnails: list[np.ndarray] = field(default_factory=list)  # uint8 (C, H, W)


class JsonLinesJob(QObject):
    """A short run agent job (``scan``, ``devices``) that answers in JSON lines on stdout."""

    line_received = Signal(dict)
    ended = Signal(str)  # "" on success, else a message

    def __init__(self, argv: list[str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._done = False
        self.process = QProcess(self)
        self.process.setProgram(argv[0])
        self.process.setArguments(argv[1:])
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)

    def start(self) -> None:
        self.process.start()

    def cancel(self) -> None:
        self._done = True
        if self.process.state() != QProcess.ProcessState.NotRunning:
            self.process.kill()
            self.process.waitForFinished(1000)  # a killed child goes at once

    def _read(self) -> None:
        # Whole lines only: a partial last line waits for the rest.
        while not self._done and self.process.canReadLine():
            line = bytes(self.process.readLine().data()).decode("utf-8", "replace")
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    self.line_received.emit(record)

    def _on_finished(self, exit_code: int, status: QProcess.ExitStatus) -> None:
        if self._done:
            return
        self._read()
        self._done = True
        if status == QProcess.ExitStatus.CrashExit or exit_code:
            err = bytes(self.process.readAllStandardError().data()).decode("utf-8", "replace")
            lines = [line for line in err.splitlines() if line.strip()]
            self.ended.emit(lines[-1] if lines else f"exit status {exit_code}")
        else:
            self.ended.emit("")

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and not self._done:
            self._done = True
            program = self.process.program()
            self.ended.emit(f"could not start {program}: {self.process.errorString()}")


class DataScan(QObject):
    """Counts the readable images of a data set and makes a few thumbnails, in a child
    process with the trainer's own loaders; ``updated`` carries the growing report."""

    updated = Signal(object)  # ScanReport

    def __init__(
        self,
        dataset: str,
        data_dir: str,
        download: bool = False,
        parent: QObject | None = None,
        host: RunHost | None = None,
    ) -> None:
        """``host``: check the folder on that ssh host (by default this computer), with the
        run agent's ``scan`` there, so the answer is what the trainer there will find; the
        agent takes the folder as typed (``~`` is that machine's home)."""
        super().__init__(parent)
        self.report = ScanReport(dataset, data_dir)
        self.host = host
        args = [dataset, data_dir] + (["--download"] if download else [])
        self.job = JsonLinesJob((host or local_host()).agent_command("scan", *args), self)
        self.job.line_received.connect(self._on_line)
        self.job.ended.connect(self._on_ended)

    def start(self) -> None:
        self.job.start()

    def cancel(self) -> None:
        self.job.cancel()

    def _on_line(self, record: dict[str, Any]) -> None:
        r = self.report
        kind = record.get("kind")
        if kind == "thumbnail":
            shape = tuple(record["shape"])
            pixels = np.frombuffer(base64.b64decode(record["data"]), np.uint8)
            r.thumbnails.append(pixels.reshape(shape))
        elif kind == "error":
            r.error, r.finished = str(record.get("message")), True
        else:
            if "skipped" in record:
                r.skipped_names = [str(n) for n in record["skipped"]]
            for key in ("files", "checked", "readable", "train", "test", "missing"):
                if key in record:
                    setattr(r, key, record[key])
            r.finished = r.finished or kind == "done"
        self.updated.emit(r)

    def _on_ended(self, message: str) -> None:
        if not self.report.finished:
            self.report.finished = True
            where = f" on {self.host.label}" if self.host is not None else ""
            if self.host is not None:
                explained = self.host.transport.explain(255, message)
                message = str(explained) if explained is not None else message
            reason = f"could not check the data{where}: {message}"
            self.report.error = self.report.error or reason
            self.updated.emit(self.report)


class DeviceProbe(QObject):
    """Asks a child process which devices torch sees; ``found`` carries
    ``[(name, label), ...]`` (``auto`` and ``cpu`` first) and the number of CUDA devices."""

    found = Signal(list, int)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.job = JsonLinesJob(local_host().agent_command("devices"), self)
        self.job.line_received.connect(self._on_line)

    def start(self) -> None:
        self.job.start()

    def cancel(self) -> None:
        self.job.cancel()

    def _on_line(self, record: dict[str, Any]) -> None:
        devices = [(str(d["name"]), str(d["label"])) for d in record.get("devices", [])]
        self.found.emit(devices, int(record.get("cuda", 0)))
