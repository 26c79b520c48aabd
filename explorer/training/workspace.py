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
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QColor,
    QFont,
    QGuiApplication,
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
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from core.runs import hosts
from core.runs.folder import complete_lines, parse_event
from core.runs.host import RemoteRun
from core.runs.transport import RemoteError, stop_started_masters
from explorer.settings import ExplorerSettings
from explorer.training.form import TrainingForm
from explorer.training.process import (
    EVENTS_FILE,
    LOG_FILE,
    PRESETS,
    RunSettings,
    format_duration,
    join_command,
)
from explorer.training.remote_run import (
    BlockingCall,
    HostChoice,
    TrainingRun,
    fetch_call,
    origin_text,
)

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
NOTE_STYLE = "QLabel { background: #1f3a2a; color: #c8f0d4; padding: 6px 8px; border-radius: 4px; }"
LOG_LINES = 5000
REDRAW_MS = 250
RATE_WINDOW = 20  # step events the ETA averages over
STDERR_SHOWN = 4


def home_path(path: str | os.PathLike) -> str:
    """``path`` with the home folder shown as ``~`` (what a screenshot may show)."""
    try:
        return str(Path("~") / Path(path).relative_to(Path.home()))
    except ValueError:
        return str(path)


def short_path(path: str, run_dir: Path) -> str:
    """``path`` as the preview shows it: relative inside the run folder, ``~/…`` under the
    home folder, else as it is."""
    try:
        return str(Path(path).relative_to(run_dir))
    except ValueError:
        return home_path(path)


def settings_of_run(event: dict[str, Any], folder: Path, base: RunSettings) -> RunSettings:
    """The settings a run was started with, from its ``start`` event (``base`` for what the
    event does not say), so a reopened run shows them in the form."""
    train, model = event.get("train_config") or {}, event.get("model_config") or {}
    sizes = tuple(model.get(k) for k in ("num_scales", "mid_channels", "num_blocks"))
    preset = next((name for name, value in PRESETS.items() if value == sizes), None)
    picked = {
        key: train[key]
        for key in (
            "dataset",
            "data_dir",
            "download",
            "batch_size",
            "lr",
            "lr_schedule",
            "ema",
            "epochs",
            "max_steps",
            "device",
            "eval_every",
            "eval_limit",
            "log_every",
            "seed",
            "compile",
            "flip",
        )
        if key in train
    }
    if all(isinstance(v, int) for v in sizes):
        picked.update(zip(("num_scales", "mid_channels", "num_blocks"), sizes), preset=preset)
    if isinstance(model.get("in_channels"), int) and isinstance(model.get("image_size"), int):
        picked.update(channels=model["in_channels"], image_size=model["image_size"])
    if isinstance(train.get("init_from"), str):
        picked["init_from"] = train["init_from"]
    if isinstance(train.get("time_limit"), (int, float)):
        picked["time_limit"] = f"{train['time_limit']:g}s"
    if isinstance(picked.get("data_dir"), str):
        picked["data_dir"] = home_path(picked["data_dir"])
    if isinstance(event.get("threads"), int) and event["threads"] > 0:
        picked["threads"] = event["threads"]  # the run's own count, not "default"
    gpus = max(1, int(event.get("world_size") or 1))
    return replace(base, **picked, out=home_path(folder), resume="", gpus=gpus)


def preview_command(settings: RunSettings, python: str | None = None) -> str:
    """The command as the panel shows it: run from the run folder (``--out .``) with
    ``python`` for the interpreter, so no checkout or home path of this machine shows.
    Copy gives the full command (:meth:`RunSettings.shell_command`), which works anywhere."""
    run_dir = settings.out_dir.expanduser().absolute()
    argv = settings.command(python)
    argv[0] = "python"
    shown = " ".join(
        shell_word(short_path(arg, run_dir)) if os.path.isabs(arg) else join_command([arg])
        for arg in argv
    )
    if not settings.out:
        return shown
    return f"cd {shell_word(home_path(run_dir))} && {shown} >> {EVENTS_FILE} 2>> {LOG_FILE}"


def remote_command(settings: RunSettings, choice: HostChoice) -> str:
    """The command line that starts the same run on the host from a terminal
    (``realnvp remote HOST train ...``), what Copy gives for an ssh host."""
    argv = ["realnvp", "remote"]
    if choice.config_file:
        argv += ["--ssh-config", choice.config_file]
    argv += [choice.host or "HOST", "train", "--python", choice.python]
    argv += ["--runs-dir", choice.runs_dir]
    if settings.gpus > 1:
        argv += ["--gpus", str(settings.gpus)]
    if settings.out:
        argv += ["--out", settings.out]
    return join_command(argv + settings.trainer_args(str))  # the host's paths, as typed


def shell_word(path: str) -> str:
    """A path quoted for the shell, a leading ``~/`` left outside the quotes so the shell
    still expands it."""
    if path.startswith("~/"):
        return "~/" + join_command([path[2:]])
    return join_command([path])


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
    _fetch_progressed = Signal(str, int, int)  # from the fetch's worker thread

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
        self.process: TrainingRun | None = None
        self.remote_run: RemoteRun | None = None  # the run on a host the page shows
        self.fetching: BlockingCall | None = None
        self._fetch_cancel: threading.Event | None = None
        self.follower: TrainingRun | None = None  # a reopened run still going
        # Injectable for tests: (parent, out) -> "stop" | "leave" | "cancel".
        self.close_prompt: Callable[[QWidget | None, str], str] = ask_close_choice
        self._close_after_stop: QWidget | None = None
        self.run_dir: Path | None = None
        self.checkpoint: str | None = None
        self.total_steps = 0
        self.last_step = 0
        self.train_points: tuple[list[int], list[float]] = ([], [])
        self.test_points: tuple[list[int], list[float]] = ([], [])
        self.images_per_s: float | None = None
        self.sample_step: int | None = None
        self._samples: tuple[str, int | None] = ("", None)  # the newest grid: path, step
        self._rate: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW)
        self._redraw_pending = False
        self._form_locked = False
        # After a run ends: its settings, and the form's as they were then. The command box
        # shows that run's command (the one the message names) until a setting changes.
        self._ended: tuple[RunSettings, RunSettings] | None = None

        self.form = TrainingForm(runs_dir, probe_devices, settings=settings)
        self._build_monitor()
        self._build_layout()

        self.form.changed.connect(self.update_controls)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.kill_button.clicked.connect(self.kill)
        self.copy_button.clicked.connect(self.copy_command)
        self.open_button.clicked.connect(self._open_clicked)
        self.reopen_button.clicked.connect(self._reopen_clicked)
        self._fetch_progressed.connect(self._on_fetch_progress)
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
        self.reason.setStyleSheet("color: #ffb74d;")
        self.reason.setWordWrap(True)

        self.command = QLineEdit()
        self.command.setReadOnly(True)
        self.full_command = ""
        self.command.setFont(QFont("monospace"))
        self.copy_button = QPushButton("Copy")

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

        self.plot = pg.PlotWidget()
        self.plot.setBackground(PLOT_BACKGROUND)
        self.plot.setLabel("left", "bits / dim")
        self.plot.setLabel("bottom", "step")
        # No grid: in software rendering its lines cost more than the curves themselves.
        self.plot.addLegend(offset=(-8, 8))
        self.plot.setClipToView(True)
        self.plot.setDownsampling(auto=True, mode="peak")
        self.train_curve = self.plot.plot(
            [], [], pen=pg.mkPen(TRAIN_COLOUR, width=1.5), name="training"
        )
        self.test_curve = self.plot.plot(
            [],
            [],
            pen=pg.mkPen(TEST_COLOUR, width=2),
            symbol="o",
            symbolSize=6,
            symbolBrush=TEST_COLOUR,
            symbolPen=None,
            name="test",
        )
        self.plot.setMinimumSize(240, 160)
        # Room above the axis for half of the top tick's label, which is centred on it.
        self.plot.getPlotItem().layout.setContentsMargins(
            0, self.fontMetrics().height() // 2 + 2, 8, 0
        )
        self.empty_plot = pg.TextItem(
            "The curves appear\nwhen a run starts",
            color="#8a8f98",
            anchor=(0.5, 0.5),
        )
        self.empty_plot.setPos(0.5, 0.5)
        self.plot.addItem(self.empty_plot, ignoreBounds=True)

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
        command = QHBoxLayout()
        command.addWidget(self.command, 1)
        command.addWidget(self.copy_button)
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
        right.addLayout(command)
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
        return self.process is not None and self.process.running

    def problems(self) -> list[str]:
        """Why Start is disabled; empty when it is not."""
        if self.running:
            return ["a run is in progress"]
        return self.form.problems()

    def _checkpoint_there(self, path: str | None) -> bool:
        """A checkpoint the page can open: a file here, or one on the run's host (fetched
        by "Open in Explorer")."""
        if not path:
            return False
        return self.remote_run is not None or Path(path).is_file()

    def update_controls(self) -> None:
        running = self.running
        fetching = self.fetching is not None and not self.fetching.done
        problems = [] if running else self.form.problems()
        self.start_button.setEnabled(not running and not problems)
        self.reason.setText(problems[0] if problems else "")
        self.reason.setToolTip("\n".join(problems))
        stopping = running and self.process is not None and self.process.stop_requested
        self.stop_button.setEnabled(running and not stopping)
        self.kill_button.setEnabled(running)
        self.reopen_button.setEnabled(not running)
        self.open_button.setEnabled(self._checkpoint_there(self.checkpoint) and not fetching)
        if running != self._form_locked:
            self._form_locked = running
            self.form.set_running(running)
        if running:
            self._ended = None
        else:
            form = self.form.settings()
            if self._ended is not None and form != self._ended[1]:
                self._ended = None  # a setting changed: the box shows the next run
            self._show_command(form if self._ended is None else self._ended[0])
        self.command.setToolTip(
            "The command of the run that just ended, from its folder; change a setting to see "
            "the next run's. Copy gives it with full paths"
            if self._ended is not None
            else "The command the panel runs, from the run folder; Copy gives it with full paths"
        )

    def _show_command(self, settings: RunSettings) -> None:
        if self.form.remote or (self.process is not None and self.process.host is not None):
            self.full_command = remote_command(settings, self.form.host_choice())
            self.command.setText(self.full_command)
        else:
            self.full_command = settings.shell_command(self.python)
            self.command.setText(preview_command(settings, self.python))
        self.command.setCursorPosition(0)

    def copy_command(self) -> None:
        """The full command (absolute paths, this interpreter) to the clipboard."""
        QGuiApplication.clipboard().setText(self.full_command)

    # -- running -------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start a run with the form's settings; False (and the reason shown) if it cannot."""
        if self.problems():
            self.update_controls()
            return False
        settings = self.form.settings()
        self._stop_following()
        self.form.cancel_scan()  # the trainer reads the data itself; free the CPU for it
        self._reset_monitor()
        choice = self.form.host_choice() if self.form.remote else None
        process = TrainingRun(self)
        self._connect_process(process)
        try:
            process.start(settings, choice, self.python)
        except RemoteError as exc:
            process.deleteLater()
            self._show_message(str(exc), error=True)
            return False
        self.process = process
        if choice is None:
            self._set_remote(None)
            self.run_dir = process.settings.out_dir
            self.info.setText("Starting the trainer…")
            self.update_controls()
            self._show_command(process.settings)
            self._append_log(f"$ {self.command.text()}")
            self._remember_run({"out": str(self.run_dir), "host": None, "state": "running"})
            self.training_started.emit(str(self.run_dir))
            return True
        self.run_dir = None
        self.remote_run = None  # until the host names the new run's folder
        self.where.setText(f"On {choice.host}: starting a run in {choice.runs_dir}…")
        self.where.show()
        self.host_changed.emit(choice.host)
        self.info.setText(f"Starting the trainer on {choice.host}…")
        self.update_controls()
        self._show_command(settings)
        self._append_log(f"$ {self.full_command}")
        self.training_started.emit(f"{choice.host}:{settings.out}")
        return True

    def _connect_process(self, process: TrainingRun) -> None:
        process.event_received.connect(self._on_event)
        process.log_received.connect(self._append_log)
        process.failed.connect(self._on_failed)
        process.finished.connect(self._on_finished)
        process.run_started.connect(self._on_run_started)
        process.connection_changed.connect(self._on_connection_changed)
        process.call_failed.connect(lambda text: self._show_message(text, error=True))

    def attach_remote(self, run: RemoteRun) -> bool:
        """Follow a run on an ssh host started earlier (File > Recent Runs): its curves from
        the first event, then live until it ends; Stop and Kill work on it."""
        if self.running:
            return False
        self._stop_following()
        self._reset_monitor()
        # The form shows where the run lives (and, from its start event, how it was
        # started); the command line is the terminal's way to follow it.
        self.form.show_host(
            HostChoice(run.host or "", run.python, run.runs_dir, run.config_file or "")
        )
        self.full_command = run.follow_command()
        self.command.setText(self.full_command)
        self.command.setCursorPosition(0)
        process = TrainingRun(self)
        self._connect_process(process)
        try:
            process.attach(run)
        except RemoteError as exc:
            process.deleteLater()
            self._show_message(str(exc), error=True)
            return False
        self.process = process
        self.run_dir = None
        self.host_changed.emit(run.host or "")
        self.info.setText(f"Following {run.name} on {run.host}…")
        self.update_controls()
        self.training_started.emit(f"{run.host}:{run.out}")
        return True

    def _on_run_started(self, run: RemoteRun) -> None:
        if not run.host:
            return  # a run here: its folder was known, and remembered, at Start
        if run.host:  # the host's Python, typed once: the command line reads it too
            hosts.remember(
                run.host, python=run.python, runs_dir=run.runs_dir, ssh_config=run.config_file
            )
        self._set_remote(run)
        self._append_log(f"run folder on {run.host}: {run.out}")
        self._remember_run({**run.to_dict(), "state": "running"})

    def _set_remote(self, run: RemoteRun | None) -> None:
        self.remote_run = run
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

    def _on_connection_changed(self, text: str) -> None:
        self.connection.setText(text)
        self.connection.setVisible(bool(text))
        self.connection_changed.emit(text)

    def _remember_run(self, record: dict[str, Any]) -> None:
        if self.app_settings is not None:
            self.app_settings.remember_run(record)

    def stop(self) -> None:
        """Ask the trainer to save and finish."""
        if self.running and self.process is not None:
            self.process.stop()
            self.info.setText("Stopping: the trainer saves latest.pt after this step…")
            self.update_controls()

    def kill(self) -> None:
        """End the trainer at once."""
        if self.running and self.process is not None:
            self.process.kill()

    def leave_running(self) -> int | None:
        """Stop watching the run and let it go on by itself; returns its process id."""
        if not self.running or self.process is None:
            return None
        pid = self.process.detach()
        if self.process.host is not None and self.remote_run is not None:
            self._append_log(f"left running on {self.remote_run.host}: {self.remote_run.out}")
        else:
            self._append_log(f"left running as process {pid}; it keeps writing to {self.run_dir}")
        self.process = None
        self.update_controls()
        self.training_stopped.emit("left running")
        return pid

    def confirm_close(self, parent: QWidget | None = None) -> bool:
        """For the main window's ``closeEvent``: True when the window may close now.

        With a run in progress it asks (``close_prompt``): Stop and close (the trainer saves,
        then ``parent`` is closed again; returns False meanwhile), Leave running (the run
        goes on without the window; returns True) or Cancel (False). Asked again while
        stopping, "Stop and close" kills the trainer.
        """
        if not self.running or self.process is None:
            return True
        if self.process.host is not None:
            # It runs on the host whatever the window does; File > Recent Runs re-attaches.
            self.leave_running()
            return True
        parent = parent or self.window()
        choice = self.close_prompt(parent, str(self.run_dir))
        if choice == LEAVE:
            self.leave_running()
            return True
        if choice == STOP:
            self._close_after_stop = parent
            if self.process.stop_requested:
                self.kill()
            else:
                self.stop()
                self.info.setText("Stopping: the window closes once latest.pt is saved…")
        return False

    def _record_outcome(self, process: TrainingRun, outcome: str) -> None:
        """The run's end in File > Recent Runs: running, done, failed or stopped."""
        state = process.state or {"finished": "done", "killed": "failed"}.get(outcome, outcome)
        if process.run is None or self.app_settings is None:
            return
        if state in ("done", "failed", "stopped"):
            host, out = process.run.host, process.run.out
            self.app_settings.update_run(host, out, state=state, step=process.last_step)

    def _on_failed(self, message: str) -> None:
        # The message, then the trainer's last words on stderr where they add something.
        reason = self.process.error_message if self.process is not None else None
        tail = [
            line
            for line in list(self.process.stderr_tail if self.process else [])[-STDERR_SHOWN:]
            if line not in message and not (reason and reason in line)
        ]
        self._show_message("\n".join([message, *tail]), error=True)

    def _on_finished(self, exit_code: int) -> None:
        process = self.process
        if process is None:
            return
        done = process.done_event
        if done is not None:
            outcome = str(done.get("reason", "finished"))
        elif process.kill_requested:
            outcome = "killed"
        elif process.stop_requested and process.last_step == 0:
            outcome = "stopped"
        else:
            outcome = "failed"
        checkpoint = process.last_checkpoint
        if not self._checkpoint_there(checkpoint):
            checkpoint = None
        self.checkpoint = checkpoint
        if outcome == "killed":
            kept = f"; its newest checkpoint stays: {checkpoint}" if checkpoint else ""
            self._show_message(f"Killed at step {process.last_step}{kept}", error=True)
        elif outcome == "stopped" and done is None:
            self._show_message("Stopped before training began; nothing was saved.")
        where = f" on {process.host}" if process.host else ""
        self.info.setText(f"Run {outcome}{where} at step {process.last_step}")
        self._record_outcome(process, outcome)
        self.connection.hide()
        if self.remote_run is None:
            self.where.hide()  # a start the host refused: there is no run to name
        self.process = None
        self.update_controls()
        if self.form.scan_report is not None and not self.form.scan_report.finished:
            self.form.start_scan()
        self.form.refresh_out_suggestion()
        if process.settings is not None:
            self._ended = (process.settings, self.form.settings())
            self.update_controls()
        if checkpoint:
            self.checkpoint_ready.emit(checkpoint)
            if self.open_when_done.isChecked() and outcome in ("finished", "stopped"):
                self.open_checkpoint(checkpoint)
        self.training_stopped.emit(outcome)
        if self._close_after_stop is not None:
            window, self._close_after_stop = self._close_after_stop, None
            QTimer.singleShot(0, window.close)

    # -- reopening earlier runs ----------------------------------------------------------------

    def open_run(self, folder: str | os.PathLike) -> bool:
        """Show the curves, samples and messages of the run in ``folder`` from its
        ``events.jsonl``; keeps following it if it has not ended."""
        if self.running:
            return False
        folder = Path(folder)
        if not folder.is_dir():
            what = "is a file, not a run folder" if folder.exists() else "no such folder"
            self._show_message(f"{folder}: {what}", error=True)
            return False
        if not (folder / EVENTS_FILE).is_file():
            self._show_message(
                f"{folder} has no {EVENTS_FILE}: only runs started from this panel (or with "
                "its command line, which appends the events there) can be reopened.",
                error=True,
            )
            return False
        self._stop_following()
        self._reset_monitor()
        self._set_remote(None)
        self.run_dir = folder
        self.checkpoint = str(folder / "latest.pt") if (folder / "latest.pt").is_file() else None
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
                    self._on_event(event)
                elif text.strip():
                    self._append_log(text)
        log_offset, log = 0, []
        while lines := complete_lines(folder / LOG_FILE, log_offset)[0]:
            log_offset = lines[-1][0]
            log += [raw.decode("utf-8", "replace") for _, raw in lines]
        if log:
            self._append_log("\n".join(log))
        self.info.setText(f"Run in {home_path(folder)}")
        if last not in ("done", "error"):
            self.follower = TrainingRun(self)
            self.follower.event_received.connect(self._on_event)
            self.follower.log_received.connect(self._append_log)
            self.follower.finished.connect(lambda _code: self._stop_following())
            run = RemoteRun(str(folder.absolute()), python=self.python or sys.executable)
            self.follower.attach(run, offset, log_offset)
        self.update_controls()
        return True

    def catch_up(self) -> None:
        """Draw a reopened run now (a screenshot): :meth:`open_run` read its files."""
        self._redraw()

    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.detach()
            self.follower.deleteLater()
            self.follower = None

    def _open_clicked(self) -> None:
        if self.checkpoint:
            self.open_checkpoint(self.checkpoint)

    def open_checkpoint(self, path: str) -> None:
        """Ask the explorer to open ``path``; a checkpoint on a host is first fetched into
        the run's local cache folder (atomic, SHA-256 verified, resumed if cut short)."""
        run = self.remote_run
        if run is None:
            self.open_checkpoint_requested.emit(path)
            return
        if self.fetching is not None and not self.fetching.done:
            return
        self._fetch_cancel = threading.Event()
        self._show_message(f"Fetching {Path(path).name} from {run.host}…")
        call = fetch_call(
            run,
            path,
            progress=self._fetch_progressed.emit,
            cancel=self._fetch_cancel,
            parent=self,
        )
        call.succeeded.connect(lambda local, r=run, p=path: self._fetched(r, p, local))
        call.failed.connect(lambda text: self._show_message(f"Fetch failed: {text}", error=True))
        call.failed.connect(lambda _text: self.update_controls())
        self.fetching = call
        self.update_controls()

    def _on_fetch_progress(self, name: str, done: int, total: int) -> None:
        if self.fetching is not None and not self.fetching.done:
            where = self.remote_run.host if self.remote_run else "the host"
            self._show_message(
                f"Fetching {name} from {where}: {done / 1e6:.1f} / {total / 1e6:.1f} MB"
            )

    def _fetched(self, run: RemoteRun, path: str, local: str) -> None:
        if self.app_settings is not None:
            self.app_settings.set_checkpoint_origin(local, origin_text(run, path))
        self._show_message(f"Fetched {Path(path).name} from {run.host} to {home_path(local)}")
        self.update_controls()
        self.open_checkpoint_requested.emit(local)

    def cancel_fetch(self) -> None:
        if self._fetch_cancel is not None:
            self._fetch_cancel.set()

    def _reopen_clicked(self) -> None:
        start = str(self.run_dir or self.form.runs_dir)
        folder = QFileDialog.getExistingDirectory(self, "Open run folder", start)
        if folder:
            self.open_run(folder)

    # -- events -------------------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
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
            self._show_message(f"The trainer reported: {event.get('message')}", error=True)
        elif kind == "warning":  # a stale lock taken over, an earlier run moved aside, disk space
            self._show_message(f"Note: {event.get('message')}")

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
                self.form.apply(replace(settings, out=run.out))
        self._schedule_redraw()

    def _on_done(self, event: dict[str, Any]) -> None:
        reason = event.get("reason", "finished")
        checkpoint = event.get("checkpoint")
        if self._checkpoint_there(checkpoint):
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
        self._show_message(
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
        if self.running or self.follower is not None:
            eta = next((p for p in parts if p.startswith("ETA")), "")
            self.progress_changed.emit(self.last_step, self.total_steps, eta)

    def _reset_monitor(self) -> None:
        self.train_points = ([], [])
        self.test_points = ([], [])
        self.total_steps = self.last_step = 0
        self.images_per_s = None
        self.sample_step = None
        self._samples = ("", None)
        self._rate.clear()
        self.checkpoint = None
        self.samples.set_image(QImage())
        self.samples_caption.hide()
        self.log.clear()
        self.message.hide()
        self.connection.hide()
        self.rate.setText("")
        self._redraw()

    def _append_log(self, text: str) -> None:
        self.log.appendPlainText(text)

    def _show_message(self, text: str, error: bool = False) -> None:
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
    import sys

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
