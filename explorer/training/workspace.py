"""The training panel: configure a run, start the trainer, watch it learn, open the result.

The panel runs ``python -m core train --progress json`` (or ``torchrun`` for several GPUs)
as a separate process and reads nothing but its JSON events (see
:mod:`explorer.training.process`): live curves of training and test bits/dim, images/s,
a progress bar with ETA, the newest sample grids and the trainer's messages.

With *Run on: SSH host* the same page starts the run on that host and follows it through
:mod:`explorer.training.remote_run`: the curves, sample previews, ETA and messages are
those of a local run, the page and the status bar name the host, "connection lost,
retrying in N s" shows while the host is away (the run goes on), and "Open in Explorer"
fetches the checkpoint into a local cache folder first.

Every run keeps its event stream in ``OUT/events.jsonl`` and its messages in
``OUT/trainer.log``, so "Open run folder…" shows the curves of any earlier run, and follows
one that is still going (for example one left running when the window closed).

The page is the view: the form, the curves, the previews and the messages. What happens to
the run (start, follow, stop, kill, leave running, fetch its checkpoint) is
:class:`~explorer.training.run_controller.RunController`'s; the command line it shows is
:mod:`explorer.training.command_line`'s.

For the main window::

    panel.open_checkpoint_requested.connect(window.open_checkpoint)
    # in closeEvent:
    if not panel.confirm_close(window):
        event.ignore()

Preview it alone with ``python -m explorer.training.workspace``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QColor,
    QFont,
    QImage,
    QPainter,
    QPaintEvent,
    QPalette,
    QPen,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from core.config import MODEL_SIZES, TRAIN_OPTIONS
from core.runs.host import RemoteRun
from core.runs.transport import stop_started_masters
from explorer.settings import ExplorerSettings
from explorer.training.command_line import CommandLine, home_path
from explorer.training.form import TrainingForm
from explorer.training.process import EVENTS_FILE, PRESETS, RunSettings, format_duration
from explorer.training.remote_run import TrainingRun, origin_text
from explorer.training.run_controller import RunController, ask_close_choice
from explorer.training.slurm_run import QueueWatch, requeue_mark

TRAIN_COLOUR = "#4ea1ff"
TEST_COLOUR = "#ffb74d"
PLOT_BACKGROUND = "#17191c"
NO_STEPS_TEXT = ""  # an empty bar: "No run yet" is said just below it
ERROR_STYLE = (
    "QLabel { background: #4a1f1f; color: #ffd0cc; padding: 6px 8px; border-radius: 4px; }"
)
WARNING_STYLE = (
    "QLabel { background: #5a4510; color: #ffe7a8; padding: 4px 8px; border-radius: 4px; }"
)
REASON_STYLE = "color: #ffb74d;"  # why Start is off
FOLLOWING_STYLE = "color: #9ccff5;"  # whose run the page follows: news, not a fault
NOTE_STYLE = "QLabel { background: #1f3a2a; color: #c8f0d4; padding: 6px 8px; border-radius: 4px; }"
LOG_LINES = 5000
REDRAW_MS = 250
RATE_WINDOW = 20  # step events the ETA averages over


def settings_of_run(event: dict[str, Any], folder: Path, base: RunSettings) -> RunSettings:
    """The settings a run was started with, from its ``start`` event (``base`` for what the
    event does not say), so a reopened run shows them in the form."""
    train, model = event.get("train_config") or {}, event.get("model_config") or {}
    picked = {k: v for k, v in train.items() if k in TRAIN_OPTIONS and k != "out"}
    picked.update({k: v for k, v in model.items() if k in MODEL_SIZES and isinstance(v, int)})
    sizes = tuple(model.get(k) for k in MODEL_SIZES[2:])
    if all(isinstance(v, int) for v in sizes):
        picked["preset"] = next((n for n, value in PRESETS.items() if value == sizes), None)
    if isinstance(picked.get("data_dir"), str):
        picked["data_dir"] = home_path(picked["data_dir"])
    if isinstance(event.get("threads"), int) and event["threads"] > 0:
        picked["threads"] = event["threads"]  # the run's own count, not "default"
    gpus = max(1, int(event.get("world_size") or 1))
    return base.with_values(**picked, out=home_path(folder), resume="", gpus=gpus)


class SampleView(QWidget):
    """One image scaled to fit, pixels kept crisp when enlarged."""

    def __init__(self, placeholder: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image = QImage()
        self.placeholder = placeholder  # said in the empty box, in place of a black one
        self.setMinimumSize(120, 80)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_image(self, image: QImage) -> None:
        self.image = image
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(360, 200)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        if self.image.isNull():
            # Nothing yet: the plot's background, a dashed outline and what will come.
            painter.fillRect(self.rect(), QColor(PLOT_BACKGROUND))
            pen = QPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.drawRect(self.rect().adjusted(0, 0, -1, -1))
            painter.drawText(
                self.rect().adjusted(12, 12, -12, -12),
                Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                self.placeholder,
            )
        else:
            painter.fillRect(self.rect(), Qt.GlobalColor.black)
            size = self.image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
            rect = QRect(0, 0, size.width(), size.height())
            rect.moveCenter(self.rect().center())
            smooth = size.width() < self.image.width()
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
            painter.drawImage(rect, self.image)
        painter.end()


class RunCurves(pg.PlotWidget):
    """Training and test bits/dim against the step, and what comes before the first."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setBackground(PLOT_BACKGROUND)
        self.setLabel("left", "bits / dim")
        self.setLabel("bottom", "step")
        # No grid: in software rendering its lines cost more than the curves themselves.
        self.addLegend(offset=(-8, 8))
        self.setClipToView(True)
        self.setDownsampling(auto=True, mode="peak")
        self.train_curve = self.plot([], [], pen=pg.mkPen(TRAIN_COLOUR, width=1.5), name="training")
        self.test_curve = self.plot(
            [],
            [],
            pen=pg.mkPen(TEST_COLOUR, width=2),
            symbol="o",
            symbolSize=6,
            symbolBrush=TEST_COLOUR,
            symbolPen=None,
            name="test",
        )
        self.setMinimumSize(240, 160)
        # Room above the axis for half of the top tick's label, which is centred on it.
        self.getPlotItem().layout.setContentsMargins(0, self.fontMetrics().height() // 2 + 2, 8, 0)
        self.empty_plot = pg.TextItem(
            "The curves appear\nwhen a run starts",
            color="#8a8f98",
            anchor=(0.5, 0.5),
        )
        self.empty_plot.setPos(0.5, 0.5)
        self.addItem(self.empty_plot, ignoreBounds=True)
        self.requeue_marks: list[pg.InfiniteLine] = []  # explorer.training.slurm_run


class TrainingPanel(QWidget):
    """Configure, run and watch training; meant for a dock or a tab of the main window.

    Signals: ``checkpoint_ready(path)`` when a run ends with a checkpoint on disk;
    ``open_checkpoint_requested(path)`` from "Open in explorer", or by itself at the end
    of a run when "Open in explorer when done" is ticked; ``training_started(out)`` and
    ``training_stopped(outcome)`` with outcome ``finished``, ``stopped``, ``killed``,
    ``failed`` or ``left running``; ``progress_changed(step, total, eta)`` while a run
    goes on, for a status bar elsewhere.
    """

    checkpoint_ready = Signal(str)
    open_checkpoint_requested = Signal(str)
    training_started = Signal(str)
    training_stopped = Signal(str)
    progress_changed = Signal(int, int, str)  # step, total steps, "ETA 3 min" or ""
    host_changed = Signal(str)  # the host the followed run lives on, "" for this computer
    connection_changed = Signal(str)  # "connection lost, retrying in N s", "" when back
    queue_changed = Signal(str)  # a Slurm job's place: "Waiting in the Slurm queue (...)"

    def __init__(
        self,
        runs_dir: str | os.PathLike | None = None,
        probe_devices: bool = True,
        python: str | None = None,
        parent: QWidget | None = None,
        settings: ExplorerSettings | None = None,
    ) -> None:
        super().__init__(parent)
        self.python = python
        self.app_settings = settings
        # Injectable for tests: (parent, out) -> "stop" | "leave" | "cancel".
        self.close_prompt: Callable[[QWidget | None, str], str] = ask_close_choice
        self.run_dir: Path | None = None
        self._forget_run()
        self._redraw_pending = False
        self._form_locked = False

        self.form = TrainingForm(runs_dir, probe_devices, settings=settings)
        self.runs = RunController(self)
        self.queue = QueueWatch(self)
        self._build_monitor()
        self._build_layout()

        self.form.changed.connect(self.update_controls)
        self.start_button.clicked.connect(self.runs.start)
        self.stop_button.clicked.connect(self.runs.stop)
        self.kill_button.clicked.connect(self.runs.kill)
        self.open_button.clicked.connect(self._open_clicked)
        self.reopen_button.clicked.connect(self._reopen_clicked)
        self.update_controls()

    # -- building ----------------------------------------------------------------------------

    def _build_monitor(self) -> None:
        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Save latest.pt and finish (through the file OUT/STOP)")
        self.kill_button = QPushButton("Kill")
        self.kill_button.setToolTip("End the trainer at once; checkpoints on disk stay")
        self.reason = QLabel()
        self.reason.setStyleSheet(REASON_STYLE)
        self.reason.setWordWrap(True)

        self.command_line = CommandLine()
        self.command = self.command_line.edit
        self.copy_button = self.command_line.copy_button

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat(NO_STEPS_TEXT)  # not "0 / 1 steps": no run has a length yet
        self.where = QLabel()
        self.where.setStyleSheet("QLabel { color: #9fd3ff; font-weight: bold; }")
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # A long run path is cut at the right edge (whole in the tooltip) rather than
        # widening the window past 1024 px.
        self.where.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.where.hide()
        self.connection = QLabel()
        self.connection.setStyleSheet(WARNING_STYLE)
        self.connection.hide()
        self.info = QLabel("No run yet")
        self.info.setWordWrap(True)  # the start event's facts: two lines in a narrow window
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.rate = QLabel()
        self.rate.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()

        self.plot = RunCurves()
        self.train_curve, self.test_curve = self.plot.train_curve, self.plot.test_curve
        self.empty_plot = self.plot.empty_plot

        self.samples = SampleView("Samples appear after the first evaluation")
        self.samples_caption = QLabel()
        self.samples_caption.hide()  # until there are samples: the box says what will come
        self.samples_caption.setWordWrap(True)

        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setFont(QFont("monospace"))
        self.log.setPlaceholderText("The trainer's messages (stderr) appear here")

        self.open_when_done = QCheckBox("Open in explorer when done")
        self.open_button = QPushButton("Open in Explorer")
        self.open_button.setToolTip("Open the run's newest checkpoint in the explorer")
        self.reopen_button = QPushButton("Open Run Folder…")
        self.reopen_button.setToolTip(f"Show an earlier run's curves from its {EVENTS_FILE}")

    def _build_layout(self) -> None:
        scroll = QScrollArea()
        scroll.setWidget(self.form)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(self.form.minimumSizeHint().width() + 24)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.form_scroll = scroll

        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.kill_button):
            buttons.addWidget(button)
        buttons.addWidget(self.reason, 1)
        status = QHBoxLayout()
        status.addWidget(self.info, 1)
        status.addWidget(self.rate)

        samples = QWidget()
        column = QVBoxLayout(samples)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.samples, 1)
        column.addWidget(self.samples_caption)
        views = QSplitter(Qt.Orientation.Horizontal)
        views.addWidget(self.plot)
        views.addWidget(samples)
        views.setChildrenCollapsible(False)
        stack = QSplitter(Qt.Orientation.Vertical)
        stack.addWidget(views)
        stack.addWidget(self.log)
        stack.setStretchFactor(0, 4)
        stack.setStretchFactor(1, 1)
        stack.setChildrenCollapsible(False)

        bottom = QHBoxLayout()
        bottom.addWidget(self.open_when_done)
        bottom.addStretch(1)
        bottom.addWidget(self.open_button)
        bottom.addWidget(self.reopen_button)

        monitor = QWidget()
        right = QVBoxLayout(monitor)
        right.setContentsMargins(4, 0, 0, 0)
        right.addLayout(buttons)
        right.addWidget(self.where)
        right.addWidget(self.connection)
        right.addWidget(self.command_line)
        right.addWidget(self.progress)
        right.addLayout(status)
        right.addWidget(self.message)
        right.addWidget(stack, 1)
        right.addLayout(bottom)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(monitor)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)
        self._splitters = {"form": splitter, "views": views, "log": stack}
        self.reset_layout()

    def splitters(self) -> dict[str, QSplitter]:
        """The panel's splitters by name, for saving and restoring the layout."""
        return dict(self._splitters)

    def reset_layout(self, width: int | None = None) -> None:
        """The form about 30 % of ``width`` (default: the panel's) within its minimum and
        480 px, the curves and samples even, the log a fifth."""
        width = width or max(self.width(), 1024)
        form = min(max(round(0.3 * width), self.form_scroll.minimumWidth()), 480)
        self._splitters["form"].setSizes([form, max(1, width - form)])
        self._splitters["views"].setSizes([1000, 1000])
        self._splitters["log"].setSizes([800, 200])

    # -- state -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.runs.running

    @property
    def process(self) -> TrainingRun | None:
        """The run this page started or follows, while it goes on."""
        return self.runs.process

    @property
    def follower(self) -> TrainingRun | None:
        """A reopened run folder whose run still goes on."""
        return self.runs.follower

    @property
    def remote_run(self) -> RemoteRun | None:
        return self.runs.remote_run

    @property
    def full_command(self) -> str:
        return self.command_line.full_command

    def problems(self) -> list[str]:
        """Why Start is disabled; empty when it is not."""
        if self.running:
            return ["a run is in progress"]
        return self.form.problems()

    def update_controls(self) -> None:
        running = self.running
        problems = [] if running else self.form.problems()
        self.start_button.setEnabled(not running and not problems)
        # A reopened run that goes on holds its folder: the page says whose run it
        # follows rather than the form's "in use by another run".
        following = self.runs.following_words()
        shown = [following] if following else problems
        self.reason.setStyleSheet(FOLLOWING_STYLE if following else REASON_STYLE)
        self.reason.setText(shown[0] if shown else "")
        self.reason.setToolTip("\n".join(shown))
        stopping = running and self.process is not None and self.process.stop_requested
        can_stop_followed = bool(following) and not self.runs.follow_stop_asked
        self.stop_button.setEnabled((running and not stopping) or can_stop_followed)
        self.kill_button.setEnabled(running)
        self.reopen_button.setEnabled(not running)
        self.open_button.setEnabled(
            self.runs.checkpoint_there(self.checkpoint) and not self.runs.fetching_now
        )
        if running != self._form_locked:
            self._form_locked = running
            self.form.set_running(running)
        remote = self.form.remote or (self.process is not None and self.process.host is not None)
        choice = self.form.host_choice() if remote else None
        self.command_line.refresh(running, self.form.settings(), choice, self.python)

    # -- the run (:class:`RunController` decides; these are for the window and tests) --------

    def start(self) -> bool:
        return self.runs.start()

    def stop(self) -> None:
        self.runs.stop()

    def kill(self) -> None:
        self.runs.kill()

    def attach_remote(self, run: RemoteRun) -> bool:
        return self.runs.attach_remote(run)

    def open_run(self, folder: str | os.PathLike) -> bool:
        return self.runs.open_run(folder)

    def confirm_close(self, parent: QWidget | None = None) -> bool:
        return self.runs.confirm_close(parent)

    def catch_up(self) -> None:
        """Draw a reopened run now (a screenshot): :meth:`open_run` read its files."""
        self._redraw()

    def _set_remote(self, run: RemoteRun | None) -> None:
        self.runs.set_remote(run)

    def show_where(self, run: RemoteRun | None) -> None:
        """Name the host and folder of the run shown; hide the line for a run here."""
        if run is None:
            self.where.hide()
            self.connection.hide()
            self.host_changed.emit("")
            return
        self.where.setText(f"On {run.host}: {run.out}")
        self.where.setToolTip(
            f"{run.host}:{run.out}\npython: {run.python}\nruns folder: {run.runs_dir}"
        )
        self.where.show()

    def show_connection(self, text: str) -> None:
        self.connection.setText(text)
        self.connection.setVisible(bool(text))
        self.connection_changed.emit(text)

    def _open_clicked(self) -> None:
        if self.checkpoint:
            self.runs.open_checkpoint(self.checkpoint)

    def _reopen_clicked(self) -> None:
        start = str(self.run_dir or self.form.runs_dir)
        folder = QFileDialog.getExistingDirectory(self, "Open run folder", start)
        if folder:
            self.runs.open_run(folder)

    # -- events -------------------------------------------------------------------------------

    def show_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        step = event.get("step")
        if isinstance(step, int):
            self.last_step = step
        if kind == "start":
            self._on_start(event)
        elif kind == "step":
            if isinstance(event.get("loss"), float | int):
                self.train_points[0].append(step)
                self.train_points[1].append(float(event["loss"]))
            self.total_steps = int(event.get("total_steps") or self.total_steps)
            self.images_per_s = event.get("images_per_s")
            if isinstance(event.get("time"), float | int):
                self._rate.append((float(event["time"]), step))
            self._schedule_redraw()
        elif kind == "eval":
            if isinstance(event.get("test_bpd"), float | int):
                self.test_points[0].append(step)
                self.test_points[1].append(float(event["test_bpd"]))
            self._schedule_redraw()
        elif kind == "samples":
            # Only the newest grid is shown: a reopened run loads one image, not all.
            self._samples = (str(event.get("path", "")), step)
            self._schedule_redraw()
        elif kind == "checkpoint" and event.get("kind") == "latest":
            # Checkpoints are written atomically: one can be opened while training goes on.
            self.checkpoint = event.get("path")
            self.open_button.setEnabled(True)
        elif kind == "done":
            self._on_done(event)
        elif kind == "error":
            self.show_message(f"The trainer reported: {event.get('message')}", error=True)
        elif kind == "requeue" and isinstance(step, int):
            self.plot.requeue_marks.append(requeue_mark(step, event.get("requeues")))
            self.plot.addItem(self.plot.requeue_marks[-1], ignoreBounds=True)
        elif kind == "warning":  # a stale lock taken over, an earlier run moved aside, disk space
            self.show_message(f"Note: {event.get('message')}")

    def _on_start(self, event: dict[str, Any]) -> None:
        # A resumed run continues the curves from its checkpoint's step; a new run (or one
        # resumed from an earlier checkpoint) drops the points after that step.
        start = int(event.get("step") or 0)
        for steps, values in (self.train_points, self.test_points):
            keep = sum(1 for s in steps if s <= start)
            del steps[keep:], values[keep:]
        self.total_steps = int(event.get("total_steps") or 0)
        self._rate.clear()
        self.message.hide()
        parts = [f"{int(event.get('parameters', 0)):,} parameters", str(event.get("device"))]
        if event.get("precision"):  # what --precision auto chose, and why in the tooltip
            parts.append(str(event["precision"]))
        if event.get("world_size", 1) > 1:
            parts.append(f"{event['world_size']} processes")
        if event.get("train_images") is not None:
            parts.append(
                f"{event['train_images']:,} training / {event.get('test_images', 0):,} test images"
            )
        if event.get("skipped_files"):
            parts.append(f"{event['skipped_files']:,} unreadable files skipped")
        self.info.setText(" · ".join(parts))
        why = event.get("precision_reason")
        self.info.setToolTip("\n".join(str(t) for t in (event.get("out", ""), why) if t))
        if self.process is None and self.run_dir is not None:
            # A reopened run: the form shows how it was started (and what Copy gives).
            # A run of another version may not fit: the form then stays as it was.
            with contextlib.suppress(TypeError, ValueError):
                self.form.apply(settings_of_run(event, self.run_dir, self.form.settings()))
            self.update_controls()
        elif self.process is not None and self.process.attached:
            run = self.process.run
            with contextlib.suppress(TypeError, ValueError):
                settings = settings_of_run(event, Path(run.out), self.form.settings())
                self.form.apply(settings.with_values(out=run.out))
        self._schedule_redraw()

    def _on_done(self, event: dict[str, Any]) -> None:
        reason = event.get("reason", "finished")
        checkpoint = event.get("checkpoint")
        if self.runs.checkpoint_there(checkpoint):
            self.checkpoint = checkpoint
        test, best, step = event.get("test_bpd"), event.get("best_test_bpd"), event.get("step")
        scores = ""
        if test is not None and best is not None:
            # A run stopped between evaluations: the figure is the last evaluation's, and
            # it says from which step.
            evaluated = self.test_points[0][-1] if self.test_points[0] else None
            at = f" at step {evaluated}" if evaluated is not None and evaluated != step else ""
            last = "last test" if at else "test"
            scores = f": {last} {test:.3f} bits/dim{at} (best {best:.3f})"
        checkpoint = home_path(self.checkpoint) if self.checkpoint else "none"
        if self.remote_run is not None and self.checkpoint:
            checkpoint = origin_text(self.remote_run, self.checkpoint)
        self.show_message(
            f"{str(reason).capitalize()} at step {step}{scores}. Checkpoint: {checkpoint}"
        )
        self._rate.clear()
        self._schedule_redraw()
        if self.process is None:
            # A reopened run has ended: whoever shows its progress (the status bar) says so.
            self.training_stopped.emit(str(reason))

    def _show_samples(self) -> None:
        path, step = self._samples
        image = QImage(path)
        if image.isNull():
            return
        self.samples.set_image(image)
        self.sample_step = step
        self.samples_caption.setText(
            f"Samples at step {step}: temperature 0.7 (left) and 1.0 (right)"
        )
        self.samples_caption.show()

    def _schedule_redraw(self) -> None:
        # Events come in bursts (one per file read) and a fast GPU run sends many: the
        # curves are redrawn at most every REDRAW_MS.
        if not self._redraw_pending:
            self._redraw_pending = True
            QTimer.singleShot(REDRAW_MS, self._redraw)

    def _redraw(self) -> None:
        self._redraw_pending = False
        if self._samples[1] != self.sample_step:
            self._show_samples()
        self.train_curve.setData(*self.train_points)
        self.test_curve.setData(*self.test_points)
        self.progress.setRange(0, max(self.total_steps, 1))
        self.progress.setValue(min(self.last_step, max(self.total_steps, 1)))
        self.progress.setFormat("%v / %m steps" if self.total_steps else NO_STEPS_TEXT)
        self.empty_plot.setVisible(not (self.train_points[0] or self.test_points[0]))
        parts = []
        if self.images_per_s:
            parts.append(f"{self.images_per_s:,.0f} images/s")
        if len(self._rate) >= 2 and self.total_steps:
            (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
            if t1 > t0 and s1 > s0:
                left = (self.total_steps - s1) * (t1 - t0) / (s1 - s0)
                parts.append(f"ETA {format_duration(left)}")
        self.rate.setText(" · ".join(parts))
        if self.running or self.runs.follower is not None:
            eta = next((p for p in parts if p.startswith("ETA")), "")
            self.progress_changed.emit(self.last_step, self.total_steps, eta)

    def _forget_run(self) -> None:
        """What the page knows of the run it shows: nothing yet."""
        self.checkpoint: str | None = None
        self.total_steps = self.last_step = 0
        self.train_points: tuple[list[int], list[float]] = ([], [])
        self.test_points: tuple[list[int], list[float]] = ([], [])
        self.images_per_s: float | None = None
        self.sample_step: int | None = None
        self._samples: tuple[str, int | None] = ("", None)  # the newest grid: path, step
        self._rate: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW)

    def reset_monitor(self) -> None:
        self.queue.stop()
        for mark in self.plot.requeue_marks:
            self.plot.removeItem(mark)
        self.plot.requeue_marks.clear()
        self._forget_run()
        self.samples.set_image(QImage())
        self.samples_caption.hide()
        self.log.clear()
        self.message.hide()
        self.connection.hide()
        self.rate.setText("")
        self._redraw()

    def append_log(self, text: str) -> None:
        self.log.appendPlainText(text)

    def show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setStyleSheet(ERROR_STYLE if error else NOTE_STYLE)
        self.message.show()

    def closeEvent(self, event: QCloseEvent) -> None:
        # Only called when the panel is a window of its own (the preview); inside the
        # explorer the main window calls confirm_close.
        if not self.confirm_close(self):
            event.ignore()
            return
        self.form.cancel_scan()
        stop_started_masters()
        super().closeEvent(event)


def main() -> int:
    """Preview the panel alone: ``python -m explorer.training.workspace``."""

    from PySide6.QtWidgets import QApplication

    from explorer.theme import apply_dark_theme

    app = QApplication(sys.argv)
    apply_dark_theme(app)
    panel = TrainingPanel()
    panel.resize(1280, 820)
    panel.setWindowTitle("Real NVP training")
    panel.show()
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
