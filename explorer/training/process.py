"""The training page's run settings and command line, and its two questions to the run
agent (checking a data set, listing devices).

Nothing here is a widget, and nothing here imports torch. A run itself, here or on an ssh
host, is started and followed through the host interface (:mod:`core.runs.host`, wrapped
for Qt by :mod:`explorer.training.remote_run`); the data check and the device list are the
run agent's ``scan`` and ``devices`` operations, run as child processes, so the GUI process
never loads torch. The trainer writes its events into ``OUT/events.jsonl`` and its
messages into ``OUT/trainer.log``, so a run can be left running when the window closes and
any earlier run reopened from its folder (:func:`read_event_log`).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QProcess, Signal

from core.config import DATASET_GEOMETRY, TRAIN_OPTIONS, geometry_problem  # noqa: F401
from core.config import PRESETS as CORE_PRESETS
from core.runs.folder import EVENTS_FILE, LOG_FILE, STOP_FILE, parse_event  # noqa: F401
from core.runs.folder import read_events as read_event_log  # noqa: F401
from core.runs.host import RunHost, local_host, trainer_argv

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
        """The trainer's argv, as the run agent builds it (:func:`core.runs.host.trainer_argv`).
        Paths are made absolute so the command works from anywhere."""
        out = Path(absolute_path(self.out))
        return trainer_argv(python or sys.executable, self.gpus, self.trainer_args(), out)

    def trainer_args(self, path: Callable[[str], str] | None = None) -> list[str]:
        """The trainer's options without ``--progress`` and ``--out``, which the agent adds.
        ``path`` maps each path (``str``: as typed, for the agent on a host to expand)."""
        path = path or absolute_path
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
        return args + after

    def shell_command(self, python: str | None = None) -> str:
        """The command to paste in a terminal, with the two files the panel reads."""
        out = self.out_dir
        return (
            f"{join_command(self.command(python))} >> {_quote(str(out / EVENTS_FILE))} "
            f"2>> {_quote(str(out / LOG_FILE))}"
        )


def absolute_path(path: str) -> str:
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
