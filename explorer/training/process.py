"""The training page's run settings and command line, and its two questions to the run
agent (checking a data set, listing devices).

Nothing here is a widget, and nothing here imports torch. A run itself, here or on an ssh
host, is started and followed through the host interface (:mod:`core.runs.host`, wrapped
for Qt by :mod:`explorer.training.remote_run`); the data check and the device list are the
run agent's ``scan`` and ``devices`` operations, run as child processes, so the GUI process
never loads torch. The trainer writes its events into ``OUT/events.jsonl`` and its
messages into ``OUT/trainer.log``, so a run can be left running when the window closes and
any earlier run reopened from its folder (:func:`core.runs.folder.read_events`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QProcess, Signal

from core.config import (
    MODEL_SIZES,
    TRAIN_OPTIONS,
    TrainConfig,
    dataset_geometry,
    train_flags,
)
from core.config import PRESETS as CORE_PRESETS
from core.runs.folder import EVENTS_FILE, LOG_FILE
from core.runs.host import RunHost, join_command, local_host, trainer_argv

DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "folder": "Folder of images"}
# (num_scales, mid_channels, num_blocks) of each preset, read from core.config's (torch-free).
PRESETS = {name: config.sizes for name, config in CORE_PRESETS.items()}
# The model the form shows first: the default preset's sizes, and a folder's 3 x 32 images.
DEFAULT_MODEL = dict(zip(MODEL_SIZES, (3, 32, *PRESETS["mnist-small"])))
# A new run as the form starts: no data folder or output folder chosen yet.
NEW_RUN = TrainConfig(data_dir="", out="")
THUMBNAILS = 8
THUMBNAIL_SIZE = 48


# -- settings and the command line -----------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """One training run as the form describes it: the run's :class:`TrainConfig`, the
    model's sizes, and how it starts; :meth:`command` is what runs."""

    train: TrainConfig = NEW_RUN
    # core.config.MODEL_SIZES; in_channels and image_size count for folders only
    model: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MODEL))
    preset: str | None = "mnist-small"  # None: the sizes of ``model``, as given
    gpus: int = 1  # more than one runs torchrun, one process per GPU
    resume: str = ""  # a checkpoint: data, model and optimizer then come from it
    overwrite: bool = False  # a new run in a folder holding an earlier one, moved aside
    threads: int | None = None

    def with_values(self, **values: Any) -> RunSettings:
        """These settings with some values changed, by field name: a :class:`TrainConfig`
        field, a model size, or one of this class's own."""
        train = {k: values.pop(k) for k in list(values) if k in TRAIN_OPTIONS}
        model = {k: values.pop(k) for k in list(values) if k in MODEL_SIZES}
        return replace(
            self, train=replace(self.train, **train), model={**self.model, **model}, **values
        )

    @property
    def geometry(self) -> tuple[int, int]:
        """``(channels, image_size)`` of the model."""
        return dataset_geometry(
            self.train.dataset, self.model["in_channels"], self.model["image_size"]
        )

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out).expanduser()

    def command(self, python: str | None = None) -> list[str]:
        """The trainer's argv, as the run agent builds it (:func:`core.runs.host.trainer_argv`).
        Paths are made absolute so the command works from anywhere."""
        out = Path(absolute_path(self.train.out))
        return trainer_argv(python or sys.executable, self.gpus, self.trainer_args(), out)

    def trainer_args(self, path: Callable[[str], str] | None = None) -> list[str]:
        """The trainer's options (:func:`core.config.train_flags`). ``path`` maps each path
        (``str``: as typed, for the agent on a host to expand; by default absolute)."""
        path = path or absolute_path
        # Under torchrun each process takes the GPU of its local rank.
        train = replace(self.train, device="cuda") if self.gpus > 1 else self.train
        return train_flags(
            train,
            self.model,
            preset=self.preset,
            resume=self.resume,
            overwrite=self.overwrite,
            threads=self.threads,
            path=path,
        )

    def shell_command(self, python: str | None = None) -> str:
        """The command to paste in a terminal, with the two files the panel reads."""
        out = self.out_dir
        return (
            f"{join_command(self.command(python))} >> {join_command([str(out / EVENTS_FILE)])} "
            f"2>> {join_command([str(out / LOG_FILE)])}"
        )


def absolute_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else path


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


class DataScan(JsonLinesJob):
    """Counts the readable images of a data set and makes a few thumbnails, in a child
    process with the trainer's own loaders (the run agent's ``scan``); ``updated`` carries
    the growing report."""

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
        args = [dataset, data_dir] + (["--download"] if download else [])
        super().__init__((host or local_host()).agent_command("scan", *args), parent)
        self.report = ScanReport(dataset, data_dir)
        self.host = host
        self.line_received.connect(self._on_line)
        self.ended.connect(self._on_ended)

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
