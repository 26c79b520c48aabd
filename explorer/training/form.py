"""The training form: where it runs, data source, model size, training length, device and
output folder.

*Run on* is this computer or an ssh host (an alias of the user's ssh config or
``user@host[:port]``, the host's Python, its runs folder, an optional ssh config file).
With a host, **Check host** (and any settled edit of the host's fields) runs the remote
API's check on a worker thread and shows its GPUs, CPU cores, free disk and version; the
data folder, *Download*, the output folder and a resumed checkpoint are then the host's,
and the data check runs there: the same child job, started by the host's Python over ssh,
so its counts and thumbnails are what the trainer there will read.

The form turns its widgets into a :class:`~explorer.training.process.RunSettings` and says
what is wrong with it (:meth:`TrainingForm.problems`), so the panel can keep Start disabled
with the reason beside it. A data source is checked in a child process (how many images
are readable, a few thumbnails) while the form stays responsive.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core.config import (
    DATASET_GEOMETRY,
    MODEL_OPTIONS,
    SCHEDULES,
    TRAIN_OPTIONS,
    Option,
    geometry_problem,
    parse_duration,
)
from core.runs import hosts
from core.runs.host import DEFAULT_PYTHON, HostFacts
from core.runs.host import DEFAULT_RUNS_DIR as HOST_RUNS_DIR
from core.runs.transport import RemoteError
from explorer.settings import ExplorerSettings
from explorer.state.advice import in_app_words
from explorer.training.process import (
    DATASET_LABELS,
    PRESETS,
    DataScan,
    DeviceProbe,
    RunSettings,
    ScanReport,
)
from explorer.training.remote_run import BlockingCall, HostChoice
from explorer.widgets.images import to_qimage

CUSTOM = "custom"
SCAN_DELAY_MS = 400  # typing a path starts one check, not one per key
DEFAULT_RUNS_DIR = Path.home() / "realnvp-runs"
HOST_CHECK_DELAY_MS = 900  # a host name being typed is checked once it settles
LOCAL, SSH = "local", "ssh"


def new_run_folder(runs_dir: Path) -> Path:
    """A fresh output folder name under ``runs_dir``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = runs_dir / f"run-{stamp}", 1
    while path.exists():
        n += 1
        path = runs_dir / f"run-{stamp}-{n}"
    return path


def _tip(opt: Option) -> str:
    return opt.help[:1].upper() + opt.help[1:]


def _option_spin(opt: Option, high: int | None = None, special: str = "") -> QSpinBox:
    """A spin box for a :mod:`core.config` option: its range, default and help as tooltip
    (``special``: the text of the minimum, for options whose 0 means "none")."""
    low = 0 if special else int(opt.minimum if opt.minimum is not None else 0)
    top = int(high if high is not None else opt.maximum if opt.maximum is not None else 2**31 - 1)
    default = opt.default if isinstance(opt.default, int) else low
    return _spin(low, top, default, _tip(opt), special)


def _spin(low: int, high: int, value: int, tip: str, special: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    if special:
        spin.setSpecialValueText(special)
    return spin


def _path_row(edit: QLineEdit, *buttons: QPushButton) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    layout.addWidget(edit, 1)
    for button in buttons:
        layout.addWidget(button)
    return row


class ThumbnailStrip(QWidget):
    """A row of small images, crisp (nearest neighbour), each scaled to the same height."""

    def __init__(self, height: int = 40, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._height = height
        self.labels: list[QLabel] = []
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(3)
        self._layout.addStretch(1)
        self.setFixedHeight(height)

    def set_images(self, images: list[np.ndarray]) -> None:
        for label in self.labels[len(images) :]:
            label.deleteLater()
        del self.labels[len(images) :]
        for i, image in enumerate(images):
            if i == len(self.labels):
                label = QLabel()
                self.labels.append(label)
                self._layout.insertWidget(i, label)
            scaled = to_qimage(image).scaled(
                self._height,
                self._height,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.FastTransformation,
            )
            self.labels[i].setPixmap(QPixmap.fromImage(scaled))


class TrainingForm(QWidget):
    """Every setting of a run. ``changed`` fires after any edit and after a data check
    reports progress, so whoever shows :meth:`problems` can refresh."""

    changed = Signal()

    host_checked = Signal(object)  # HostFacts, or a str: why the check failed

    def __init__(
        self,
        runs_dir: str | os.PathLike | None = None,
        probe_devices: bool = True,
        parent: QWidget | None = None,
        settings: ExplorerSettings | None = None,
    ) -> None:
        super().__init__(parent)
        self.runs_dir = Path(runs_dir) if runs_dir is not None else DEFAULT_RUNS_DIR
        self.app_settings = settings
        self.host_facts: HostFacts | None = None
        self.host_error: str | None = None
        self.host_check: BlockingCall | None = None
        self._checked_choice: HostChoice | None = None
        self._local_devices: tuple[list[tuple[str, str]], int] | None = None
        self.scan: DataScan | None = None
        self.scan_report: ScanReport | None = None
        self.cuda_devices = 0
        self.devices_probed = False
        self._out_typed = False  # a folder the user chose is never replaced by a suggestion

        # -- where
        self.run_on = QComboBox()
        self.run_on.addItem("This computer", LOCAL)
        self.run_on.addItem("SSH host", SSH)
        self.run_on.setToolTip("Train here, or on a machine with a GPU reached with ssh")
        self.host = QLineEdit()
        self.host.setPlaceholderText("ssh config alias or user@host[:port]")
        self.host.setToolTip(
            "As in your terminal: your ssh config, keys, agent and known hosts are used; "
            "a password is never asked for"
        )
        self.check_host_button = QPushButton("Check host")
        self.check_host_button.setToolTip("Connect and show the host's GPUs, disk and version")
        self.remote_python = QLineEdit(DEFAULT_PYTHON)
        self.remote_python.setToolTip(
            "The host's Python with realnvp-explorer installed, e.g. ~/venv/bin/python"
        )
        self.remote_runs = QLineEdit(HOST_RUNS_DIR)
        self.remote_runs.setToolTip("The host's folder for new runs")
        self.ssh_config = QLineEdit()
        self.ssh_config.setPlaceholderText("optional: an ssh config file (ssh -F)")
        self.ssh_config_browse = QPushButton("Browse…")
        self.host_status = QLabel()
        self.host_status.setWordWrap(True)
        self.host_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        # -- data
        self.dataset = QComboBox()
        for key, label in DATASET_LABELS.items():
            self.dataset.addItem(label, key)
        self.data_dir = QLineEdit()
        self.data_dir.setPlaceholderText("folder with the data set files or your images")
        self.data_browse = QPushButton("Browse…")
        self.download = QCheckBox("Download if missing")
        self.download.setToolTip("The trainer fetches MNIST / CIFAR-10 and verifies checksums")
        self.channels = QComboBox()
        self.channels.addItem("Grayscale (1)", 1)
        self.channels.addItem("Colour (3)", 3)
        self.channels.setCurrentIndex(1)
        self.image_size = _option_spin(MODEL_OPTIONS["image_size"])
        self.image_size.setValue(32)  # a folder's default (MNIST and CIFAR-10 fix their own)
        self.data_status = QLabel()
        self.data_status.setWordWrap(True)
        self.thumbnails = ThumbnailStrip()

        # -- model
        self.preset = QComboBox()
        for name in PRESETS:
            self.preset.addItem(name, name)
        self.preset.addItem("Custom", CUSTOM)
        self.num_scales = _option_spin(MODEL_OPTIONS["num_scales"])
        self.mid_channels = _option_spin(MODEL_OPTIONS["mid_channels"])
        self.num_blocks = _option_spin(MODEL_OPTIONS["num_blocks"])

        # -- training
        self.batch_size = _option_spin(TRAIN_OPTIONS["batch_size"])
        self.lr = QLineEdit(f"{TRAIN_OPTIONS['lr'].default:g}")
        self.lr.setToolTip(_tip(TRAIN_OPTIONS["lr"]) + ", e.g. 1e-3")
        self.lr_schedule = QComboBox()
        for name in SCHEDULES:
            self.lr_schedule.addItem(name, name)
        self.lr_schedule.setCurrentIndex(
            self.lr_schedule.findData(TRAIN_OPTIONS["lr_schedule"].default)
        )
        self.lr_schedule.setToolTip(_tip(TRAIN_OPTIONS["lr_schedule"]))
        self.ema = QDoubleSpinBox()
        self.ema.setDecimals(4)
        self.ema.setRange(0.0, TRAIN_OPTIONS["ema"].maximum)
        self.ema.setSingleStep(0.001)
        self.ema.setValue(TRAIN_OPTIONS["ema"].default)
        self.ema.setSpecialValueText("off")
        self.ema.setToolTip(_tip(TRAIN_OPTIONS["ema"]))
        self.time_limit = QLineEdit()
        self.time_limit.setPlaceholderText("none (e.g. 90m, 2h)")
        self.time_limit.setToolTip(_tip(TRAIN_OPTIONS["time_limit"]))
        self.init_from = QLineEdit()
        self.init_from.setPlaceholderText("new weights (or a checkpoint, or bundled)")
        self.init_from.setToolTip(_tip(TRAIN_OPTIONS["init_from"]))
        self.length = _spin(1, 100_000_000, 1, "How long to train: " + TRAIN_OPTIONS["epochs"].help)
        self.length_unit = QComboBox()
        self.length_unit.addItem("epochs", "epochs")
        self.length_unit.addItem("steps", "steps")
        self.eval_every = _option_spin(TRAIN_OPTIONS["eval_every"])
        self.eval_limit = _option_spin(TRAIN_OPTIONS["eval_limit"], special="all")
        self.log_every = _option_spin(TRAIN_OPTIONS["log_every"])
        self.seed = _option_spin(TRAIN_OPTIONS["seed"], high=2**31 - 1)
        self.flip = QCheckBox("Random horizontal flips")
        self.flip.setToolTip(_tip(TRAIN_OPTIONS["flip"]))

        # -- hardware
        self.device = QComboBox()
        self.device.addItem("auto", "auto")
        self.device.addItem("cpu", "cpu")
        self.gpus = _spin(1, 1, 1, "More than one runs torchrun with one process per GPU")
        self.threads = _spin(0, 512, 0, "CPU threads for torch", "default")
        self.compile = QCheckBox("torch.compile")

        # -- output
        self.out = QLineEdit()
        self.out_browse = QPushButton("Browse…")
        self.out_new = QPushButton("New")
        self.out_new.setToolTip("A fresh folder under " + str(self.runs_dir))
        self.overwrite = QCheckBox("Start afresh in a folder that holds a run")
        self.overwrite.setToolTip(
            "The earlier run's checkpoints, samples, events and log move into a "
            "previous-DATE folder inside it"
        )
        self.resume = QCheckBox("Resume from a checkpoint")
        self.resume_path = QLineEdit()
        self.resume_path.setPlaceholderText("…/latest.pt of an earlier run")
        self.resume_browse = QPushButton("Browse…")

        self._build_layout()
        self._load_host_settings()
        self._sync_where()
        self._suggest_out()
        self._connect()
        self._scan_timer = QTimer(self)
        self._scan_timer.setSingleShot(True)
        self._scan_timer.setInterval(SCAN_DELAY_MS)
        self._scan_timer.timeout.connect(self.start_scan)
        self._host_timer = QTimer(self)
        self._host_timer.setSingleShot(True)
        self._host_timer.setInterval(HOST_CHECK_DELAY_MS)
        self._host_timer.timeout.connect(self.check_host)
        if self.remote and self.host.text().strip():
            self._host_timer.start()
        self._sync_enabled()
        self._apply_preset()
        self.probe: DeviceProbe | None = None
        if probe_devices:
            self.probe = DeviceProbe(self)
            self.probe.found.connect(self.set_devices)
            self.probe.start()

    # -- layout ----------------------------------------------------------------------------

    def _build_layout(self) -> None:
        def group(title: str) -> tuple[QGroupBox, QFormLayout]:
            box = QGroupBox(title)
            form = QFormLayout(box)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            form.setVerticalSpacing(5)
            return box, form

        where, f = group("Run on")
        self._where_rows = f
        f.addRow("Machine", self.run_on)
        f.addRow("Host", _path_row(self.host, self.check_host_button))
        f.addRow("Python", self.remote_python)
        f.addRow("Runs folder", self.remote_runs)
        f.addRow("SSH config", _path_row(self.ssh_config, self.ssh_config_browse))
        f.addRow(self.host_status)

        data, f = group("Data")
        self._data_rows = f
        f.addRow("Source", self.dataset)
        f.addRow("Folder", _path_row(self.data_dir, self.data_browse))
        f.addRow("", self.download)
        self.folder_geometry = QWidget()
        row = QHBoxLayout(self.folder_geometry)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.channels)
        row.addWidget(QLabel("size"))
        row.addWidget(self.image_size)
        row.addStretch(1)
        f.addRow("Images", self.folder_geometry)
        f.addRow(self.data_status)
        f.addRow(self.thumbnails)

        model, f = group("Model")
        f.addRow("Preset", self.preset)
        sizes = QWidget()
        row = QHBoxLayout(sizes)
        row.setContentsMargins(0, 0, 0, 0)
        for label, spin in (
            ("scales", self.num_scales),
            ("width", self.mid_channels),
            ("blocks", self.num_blocks),
        ):
            row.addWidget(QLabel(label))
            row.addWidget(spin)
        row.addStretch(1)
        f.addRow("Size", sizes)

        training, f = group("Training")
        f.addRow("Batch size", self.batch_size)
        f.addRow("Learning rate", self.lr)
        f.addRow("Rate schedule", self.lr_schedule)
        f.addRow("Weight average", self.ema)
        f.addRow("Start from", self.init_from)
        f.addRow("Time limit", self.time_limit)
        length = QWidget()
        row = QHBoxLayout(length)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.length, 1)
        row.addWidget(self.length_unit)
        f.addRow("Train for", length)
        f.addRow("Evaluate every", self.eval_every)
        f.addRow("Test images", self.eval_limit)
        f.addRow("Log every", self.log_every)
        f.addRow("Seed", self.seed)
        f.addRow("", self.flip)

        hardware, f = group("Hardware")
        f.addRow("Device", self.device)
        f.addRow("GPUs", self.gpus)
        f.addRow("CPU threads", self.threads)
        f.addRow("", self.compile)

        output, f = group("Output")
        f.addRow("Folder", _path_row(self.out, self.out_browse, self.out_new))
        f.addRow(self.overwrite)
        f.addRow(self.resume)
        f.addRow("Checkpoint", _path_row(self.resume_path, self.resume_browse))

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for box in (where, data, model, training, hardware, output):
            layout.addWidget(box)
        layout.addStretch(1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    def _connect(self) -> None:
        self.run_on.currentIndexChanged.connect(self._on_where_changed)
        for edit in (self.host, self.remote_python, self.remote_runs, self.ssh_config):
            edit.textChanged.connect(self._on_host_edited)
        self.host.editingFinished.connect(self._fill_remembered_host)
        self.check_host_button.clicked.connect(self.check_host)
        self.ssh_config_browse.clicked.connect(self._browse_ssh_config)
        self.dataset.currentIndexChanged.connect(self._on_source_changed)
        self.data_dir.textChanged.connect(self._on_source_changed)
        self.download.toggled.connect(self._on_source_changed)
        self.data_browse.clicked.connect(self._browse_data)
        self.preset.currentIndexChanged.connect(self._apply_preset)
        for spin in (self.num_scales, self.mid_channels, self.num_blocks):
            spin.valueChanged.connect(self._sizes_edited)
        self.out.textEdited.connect(lambda _text: setattr(self, "_out_typed", True))
        self.out_browse.clicked.connect(self._browse_out)
        self.out_new.clicked.connect(self._suggest_out)
        self.resume.toggled.connect(self._resume_toggled)
        self.resume_path.textChanged.connect(self._resume_path_changed)
        self.resume_browse.clicked.connect(self._browse_resume)
        self.device.currentIndexChanged.connect(self._sync_enabled)
        for widget in self.findChildren(QSpinBox):
            widget.valueChanged.connect(self.changed)
        self.ema.valueChanged.connect(self.changed)
        self.init_from.textChanged.connect(self._sync_enabled)
        for widget in self.findChildren(QComboBox):
            widget.currentIndexChanged.connect(self.changed)
        for widget in self.findChildren(QLineEdit):
            widget.textChanged.connect(self.changed)
        for widget in self.findChildren(QCheckBox):
            widget.toggled.connect(self.changed)

    # -- reading and writing the settings -----------------------------------------------------

    def settings(self) -> RunSettings:
        steps = self.length_unit.currentData() == "steps"
        preset = self.preset.currentData()
        try:
            lr = float(self.lr.text())
        except ValueError:
            lr = math.nan
        return RunSettings(
            dataset=self.dataset.currentData(),
            data_dir=self.data_dir.text().strip(),
            download=self.download.isChecked(),
            channels=self.channels.currentData(),
            image_size=self.image_size.value(),
            preset=None if preset == CUSTOM else preset,
            num_scales=self.num_scales.value(),
            mid_channels=self.mid_channels.value(),
            num_blocks=self.num_blocks.value(),
            batch_size=self.batch_size.value(),
            lr=lr,
            lr_schedule=self.lr_schedule.currentData(),
            ema=round(self.ema.value(), 6),
            init_from=self.init_from.text().strip(),
            time_limit=self.time_limit.text().strip(),
            epochs=1 if steps else self.length.value(),
            max_steps=self.length.value() if steps else None,
            device=self.device.currentData(),
            gpus=self.gpus.value(),
            out=self.out.text().strip(),
            resume=self.resume_path.text().strip() if self.resume.isChecked() else "",
            overwrite=self.overwrite.isChecked() and not self.resume.isChecked(),
            eval_every=self.eval_every.value(),
            eval_limit=self.eval_limit.value() or None,
            log_every=self.log_every.value(),
            seed=self.seed.value(),
            threads=self.threads.value() or None,
            compile=self.compile.isChecked(),
            flip=self.flip.isChecked(),
        )

    def apply(self, s: RunSettings) -> None:
        """Show ``s`` in the widgets (a data check starts if the source changed)."""
        self.dataset.setCurrentIndex(self.dataset.findData(s.dataset))
        self.data_dir.setText(s.data_dir)
        self.download.setChecked(s.download)
        self.channels.setCurrentIndex(self.channels.findData(s.channels))
        self.image_size.setValue(s.image_size)
        self.preset.setCurrentIndex(self.preset.findData(s.preset or CUSTOM))
        for spin, value in (
            (self.num_scales, s.num_scales),
            (self.mid_channels, s.mid_channels),
            (self.num_blocks, s.num_blocks),
        ):
            spin.setValue(value)
        self.batch_size.setValue(s.batch_size)
        self.lr.setText(f"{s.lr:g}")
        self.lr_schedule.setCurrentIndex(max(self.lr_schedule.findData(s.lr_schedule), 0))
        self.ema.setValue(s.ema)
        self.init_from.setText(s.init_from)
        self.time_limit.setText(s.time_limit)
        self.length_unit.setCurrentIndex(1 if s.max_steps else 0)
        self.length.setValue(s.max_steps or s.epochs)
        if self.device.findData(s.device) < 0:
            self.device.addItem(s.device, s.device)
        self.device.setCurrentIndex(self.device.findData(s.device))
        self.gpus.setValue(s.gpus)
        self.resume.setChecked(bool(s.resume))
        self.resume_path.setText(s.resume)
        self.overwrite.setChecked(s.overwrite)
        self.out.setText(s.out)
        self._out_typed = True
        self.eval_every.setValue(s.eval_every)
        self.eval_limit.setValue(s.eval_limit or 0)
        self.log_every.setValue(s.log_every)
        self.seed.setValue(s.seed)
        self.threads.setValue(s.threads or 0)
        self.compile.setChecked(s.compile)
        self.flip.setChecked(s.flip)

    # -- validation ----------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why these settings cannot start a run; empty when they can."""
        s = self.settings()
        found: list[str] = []
        remote = self.remote
        if remote:
            found += self._host_problems()
        if s.resume:
            if not remote and not Path(s.resume).expanduser().is_file():
                found.append(f"no checkpoint file at {s.resume}")
        else:
            found += self._data_problems(s)
            problem = None if s.init_from else geometry_problem(s.geometry[1], s.num_scales)
            if problem:
                found.append(problem)
            local_file = s.init_from not in ("", "bundled") and not remote
            if local_file and not Path(s.init_from).expanduser().is_file():
                found.append(f"no checkpoint file at {s.init_from} to start from")
            if not (math.isfinite(s.lr) and s.lr > 0):
                found.append(f"the learning rate must be a positive number, not {self.lr.text()!r}")
        if s.time_limit:
            try:
                parse_duration(s.time_limit)
            except ValueError as exc:
                found.append(f"time limit: {exc}")
        found += [] if remote else self._out_problems(s)
        if s.gpus > 1:
            if s.device not in ("auto",) and not s.device.startswith("cuda"):
                found.append(f"{s.gpus} GPUs need device auto or CUDA, not {s.device}")
            elif s.gpus > self.cuda_devices:
                found.append(f"{s.gpus} GPUs asked for, {self.cuda_devices} found")
        return found

    def _data_problems(self, s: RunSettings) -> list[str]:
        if not s.data_dir:
            return ["choose the data folder"]
        r = self.scan_report
        if r is None or (r.dataset, r.data_dir) != (s.dataset, s.data_dir):
            if self.remote and self.host_facts is None:
                return []  # the host's own problem says why; its data is checked after it
            return ["checking the data…"]
        if r.error:
            return [r.error]
        if r.missing:
            return []  # the trainer downloads it
        if not r.finished and r.readable < s.batch_size:
            return ["checking the data…"]
        train = r.train if r.train is not None else r.readable
        if r.finished and train < s.batch_size * s.gpus:
            return [
                f"only {train} readable images: fewer than one batch of "
                f"{s.batch_size * s.gpus}; lower the batch size"
            ]
        return []

    def _out_problems(self, s: RunSettings) -> list[str]:
        if not s.out:
            return ["choose an output folder"]
        out = s.out_dir
        resuming_here = bool(s.resume) and (
            Path(s.resume).expanduser().resolve().parent == out.resolve()
        )
        # The trainer's own rule, worded for this form. core.runs.folder is torch-free;
        # imported here so that importing the page loads no core module at all.
        from core.runs.folder import RunFolderError, check_run_folder

        try:
            check_run_folder(
                out,
                resume=resuming_here,
                overwrite=s.overwrite,
                choices="press New for a fresh folder, resume it, or tick Start afresh",
            )
        except RunFolderError as exc:
            return [str(exc)]
        existing = out
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not os.access(existing, os.W_OK):
            return [f"cannot write to {existing}"]
        return []

    # -- data checks ----------------------------------------------------------------------------

    def _on_source_changed(self) -> None:
        self._sync_enabled()
        self.scan_report = None
        self.data_status.setText("")
        self.thumbnails.set_images([])
        self.cancel_scan()
        self._scan_timer.start()

    def start_scan(self) -> None:
        """Check the data source now (normally a moment after the last edit)."""
        self._scan_timer.stop()
        self.cancel_scan()
        s = self.settings()
        if not s.data_dir:
            self.data_status.setText("")
            self.changed.emit()
            return
        host = None
        if self.remote:
            if self.host_facts is None:
                self.data_status.setText("Checked on the host once the host answers")
                self.changed.emit()
                return
            try:
                host = self.host_choice().run_host()
            except RemoteError as exc:
                self.data_status.setText(f"<span style='color:#ff8a80'>{exc}</span>")
                self.changed.emit()
                return
        self.data_status.setText(f"Checking on {host.label}…" if host else "Checking…")
        self.scan = DataScan(s.dataset, s.data_dir, s.download, self, host)
        self.scan.updated.connect(self._on_scan_updated)
        self.scan.start()
        self.changed.emit()

    @property
    def checking(self) -> bool:
        """Whether a data check is due or under way."""
        due = self._scan_timer.isActive()
        return due or (
            self.scan is not None and not (self.scan_report and self.scan_report.finished)
        )

    def shutdown(self) -> None:
        """End the short child processes (device probe, data scan) before the window goes."""
        self.cancel_scan()
        if self.probe is not None:
            self.probe.cancel()

    def cancel_scan(self) -> None:
        if self.scan is not None:
            self.scan.cancel()
            self.scan.deleteLater()
            self.scan = None

    def _on_scan_updated(self, report: ScanReport) -> None:
        self.scan_report = report
        if report.error:
            text = in_app_words(report.error)
            self.data_status.setText(f"<span style='color:#ff8a80'>{text}</span>")
        elif report.missing:
            self.data_status.setText("Not here yet: the trainer will download it")
        elif report.train is not None:
            self.data_status.setText(f"{report.train:,} training and {report.test:,} test images")
        elif report.finished:
            from core.training.datasets import describe_skipped  # torch-free; see _out_problems

            extra = f" ({describe_skipped(report.skipped_names)})" if report.skipped_names else ""
            self.data_status.setText(f"{report.readable:,} readable images{extra}")
        else:
            total = f" of {report.files:,}" if report.files is not None else ""
            self.data_status.setText(
                f"Checking… {report.checked:,}{total} files, {report.readable:,} readable"
            )
        if len(report.thumbnails) != len(self.thumbnails.labels):
            self.thumbnails.set_images(report.thumbnails)
        self.changed.emit()

    # -- the rest of the controls ----------------------------------------------------------------

    def set_devices(self, devices: list[tuple[str, str]], cuda: int) -> None:
        """Fill the device list from a probe: ``[(name, label), ...]`` (this computer's;
        while an ssh host is chosen they wait until it is this computer again)."""
        self._local_devices = (devices, cuda)
        if not self.remote:
            self._show_devices(devices, cuda)

    def _show_devices(self, devices: list[tuple[str, str]], cuda: int) -> None:
        current = self.device.currentData()
        blocked = self.device.blockSignals(True)
        self.device.clear()
        for name, label in devices:
            self.device.addItem(label, name)
        if self.device.findData(current) < 0:
            self.device.addItem(current, current)
        self.device.setCurrentIndex(self.device.findData(current))
        self.device.blockSignals(blocked)
        self.cuda_devices = cuda
        self.gpus.setMaximum(max(1, cuda))
        self.devices_probed = True
        self._sync_enabled()
        self.changed.emit()

    def _apply_preset(self) -> None:
        sizes = PRESETS.get(self.preset.currentData())
        if sizes is None:
            return
        for spin, value in zip((self.num_scales, self.mid_channels, self.num_blocks), sizes):
            blocked = spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(blocked)
        self.changed.emit()

    def _sizes_edited(self) -> None:
        sizes = (self.num_scales.value(), self.mid_channels.value(), self.num_blocks.value())
        if PRESETS.get(self.preset.currentData()) != sizes:
            blocked = self.preset.blockSignals(True)
            self.preset.setCurrentIndex(self.preset.findData(CUSTOM))
            self.preset.blockSignals(blocked)

    def _sync_enabled(self) -> None:
        resuming = self.resume.isChecked()
        dataset = self.dataset.currentData()
        # When resuming, data, model, batch size and learning rate come from the checkpoint.
        for widget in (
            self.dataset,
            self.data_dir,
            self.data_browse,
            self.preset,
            self.num_scales,
            self.mid_channels,
            self.num_blocks,
            self.batch_size,
            self.lr,
            self.lr_schedule,
            self.ema,
            self.init_from,
            self.eval_limit,
            self.seed,
            self.flip,
        ):
            widget.setEnabled(not resuming)
        # A run started from a checkpoint's weights has the checkpoint's size.
        starting_from = bool(self.init_from.text().strip()) and not resuming
        for widget in (self.preset, self.num_scales, self.mid_channels, self.num_blocks):
            widget.setEnabled(not resuming and not starting_from)
        # MNIST and CIFAR-10 can be downloaded; a folder's images need a size and channels.
        fixed = dataset in DATASET_GEOMETRY
        self._data_rows.setRowVisible(self.download, fixed)
        self._data_rows.setRowVisible(self.folder_geometry, not fixed)
        self.download.setEnabled(not resuming)
        self.folder_geometry.setEnabled(not resuming)
        self.resume_path.setEnabled(resuming)
        self.resume_browse.setEnabled(resuming)
        self.overwrite.setEnabled(not resuming)
        multi_ok = self.cuda_devices > 1 and self.device.currentData() in ("auto", "cuda")
        self.gpus.setEnabled(multi_ok or self.gpus.value() > 1)

    def _suggest_out(self) -> None:
        self._out_typed = False
        if self.remote:
            # A name inside the host's runs folder: the host refuses one that holds a run.
            self.out.setText(new_run_folder(Path("")).name)
        else:
            self.out.setText(str(new_run_folder(self.runs_dir)))

    def refresh_out_suggestion(self) -> None:
        """After a run, a suggested folder (which now holds that run) makes way for a new one."""
        if not self._out_typed and not self.resume.isChecked():
            self._suggest_out()

    def _resume_toggled(self, on: bool) -> None:
        self._sync_enabled()
        if on:
            self._resume_path_changed(self.resume_path.text())
        elif not self._out_typed:
            self._suggest_out()

    def _resume_path_changed(self, text: str) -> None:
        # Resuming in place keeps one run's checkpoints and curves in one folder.
        if text and self.resume.isChecked() and not self._out_typed:
            self.out.setText(str(Path(text).expanduser().parent))

    # -- the ssh host ---------------------------------------------------------------------------

    @property
    def remote(self) -> bool:
        """Whether the run goes to an ssh host."""
        return self.run_on.currentData() == SSH

    def host_choice(self) -> HostChoice:
        return HostChoice(
            self.host.text().strip(),
            self.remote_python.text().strip() or DEFAULT_PYTHON,
            self.remote_runs.text().strip() or HOST_RUNS_DIR,
            self.ssh_config.text().strip(),
        )

    def show_host(self, choice: HostChoice) -> None:
        """Show an ssh host's fields (a run on it being followed), checked again."""
        for key, edit in self._host_edits().items():
            edit.setText(getattr(choice, key))
        self.set_remote(True)

    def set_remote(self, remote: bool) -> None:
        self.run_on.setCurrentIndex(self.run_on.findData(SSH if remote else LOCAL))

    def _host_problems(self) -> list[str]:
        choice = self.host_choice()
        if not choice.host:
            return ["choose the ssh host"]
        if self.host_error and self._checked_choice == choice:
            return [self.host_error]
        if self.host_facts is None or self._checked_choice != choice:
            return [f"checking {choice.host}…" if self.checking_host else "press Check host"]
        if self.host_facts.problem:
            return [self.host_facts.problem]
        s = self.settings()
        if s.gpus > max(1, len(self.host_facts.gpus)):
            return [f"{s.gpus} GPUs asked for, {choice.host} has {len(self.host_facts.gpus)}"]
        return []

    @property
    def checking_host(self) -> bool:
        return self._host_timer.isActive() or (
            self.host_check is not None and not self.host_check.done
        )

    def check_host(self) -> None:
        """Connect to the host on a worker thread and show what it has (never blocks)."""
        self._host_timer.stop()
        if not self.remote:
            return
        choice = self.host_choice()
        self.host_facts, self.host_error, self._checked_choice = None, None, choice
        if not choice.host:
            self.host_status.setText("")
            self.changed.emit()
            return
        try:
            host = choice.run_host()
        except RemoteError as exc:
            self._host_failed(choice, str(exc))
            return
        self.host_status.setText(f"Connecting to {choice.host}…")
        call = BlockingCall(host.check, self)
        call.succeeded.connect(lambda facts, c=choice: self._host_answered(c, facts))
        call.failed.connect(lambda text, c=choice: self._host_failed(c, text))
        self.host_check = call.start()
        self.changed.emit()

    def _host_answered(self, choice: HostChoice, facts: HostFacts) -> None:
        if choice != self.host_choice() or not self.remote:
            return  # the fields changed meanwhile: a newer check is due
        self.host_facts, self.host_error = facts, None
        lines = facts.summary()[1:]
        text = "<br>".join(_html(line) for line in lines)
        if facts.problem:
            text += f"<br><span style='color:#ff8a80'>{_html(facts.problem)}</span>"
        self.host_status.setText(text)
        devices = [("auto", "auto"), ("cpu", "cpu")]
        devices += [(f"cuda:{g.index}", f"cuda:{g.index} {g.name}") for g in facts.gpus]
        self._show_devices(devices, len(facts.gpus))
        self.host_checked.emit(facts)
        self.start_scan()

    def _host_failed(self, choice: HostChoice, text: str) -> None:
        if choice != self.host_choice() or not self.remote:
            return
        self.host_facts, self.host_error = None, text
        self.host_status.setText(f"<span style='color:#ff8a80'>{_html(text)}</span>")
        self.host_checked.emit(text)
        self.changed.emit()

    def _on_where_changed(self) -> None:
        remote = self.remote
        self._sync_where()
        if not remote and self._local_devices is not None:
            self._show_devices(*self._local_devices)
        elif not remote:
            self._show_devices([("auto", "auto"), ("cpu", "cpu")], 0)
        if not self._out_typed:
            self._suggest_out()
        self._save_host_settings()
        self.host_facts = None
        self.host_status.setText("")
        if remote:
            self._host_timer.start()
        self._on_source_changed()

    def _fill_remembered_host(self) -> None:
        """The Python, runs folder and ssh config remembered for the host typed (by the
        command line or an earlier run here: core.runs.hosts), typed once."""
        kept = hosts.remembered(self.host.text())
        for key, field in (("python", "python"), ("runs_dir", "runs_dir")):
            if key in kept:
                self._host_edits()[field].setText(kept[key])
        if "ssh_config" in kept:
            self.ssh_config.setText(kept["ssh_config"])

    def _on_host_edited(self) -> None:
        self._save_host_settings()
        if not self.remote:
            return
        self.host_facts, self.host_error = None, None
        self.scan_report = None
        self.cancel_scan()
        self.host_status.setText("")
        self._host_timer.start()
        self.changed.emit()

    def _load_host_settings(self) -> None:
        if self.app_settings is None:
            return
        values = self.app_settings.remote_host
        for key, edit in self._host_edits().items():
            if key in values:
                edit.setText(values[key])
        self.set_remote(values.get("run_on") == SSH)

    def _sync_where(self) -> None:
        """The host's rows show for an ssh host; the Browse buttons (this computer's
        folders) only for this computer."""
        remote = self.remote
        for widget in (
            self.host.parentWidget(),
            self.remote_python,
            self.remote_runs,
            self.ssh_config.parentWidget(),
            self.host_status,
        ):
            self._where_rows.setRowVisible(widget, remote)
        for button in (self.data_browse, self.out_browse, self.resume_browse):
            button.setVisible(not remote)
        self.out_new.setToolTip(
            "A fresh folder in the host's runs folder"
            if remote
            else "A fresh folder under " + str(self.runs_dir)
        )

    def _host_edits(self) -> dict[str, QLineEdit]:
        return {
            "host": self.host,
            "python": self.remote_python,
            "runs_dir": self.remote_runs,
            "config_file": self.ssh_config,
        }

    def _save_host_settings(self) -> None:
        if self.app_settings is None:
            return
        values = {key: edit.text().strip() for key, edit in self._host_edits().items()}
        self.app_settings.remote_host = {**values, "run_on": SSH if self.remote else LOCAL}

    def _browse_ssh_config(self) -> None:
        start = os.path.expanduser(self.ssh_config.text() or "~/.ssh")
        path, _ = QFileDialog.getOpenFileName(self, "SSH config file", start)
        if path:
            self.ssh_config.setText(path)

    def _browse_data(self) -> None:
        start = os.path.expanduser(self.data_dir.text())
        path = QFileDialog.getExistingDirectory(self, "Data folder", start)
        if path:
            self.data_dir.setText(path)

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", str(self.runs_dir))
        if path:
            self.out.setText(path)
            self._out_typed = True

    def _browse_resume(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Resume from", self.out.text(), "Checkpoints (*.pt);;All files (*)"
        )
        if path:
            self.resume_path.setText(path)

    def set_running(self, running: bool) -> None:
        """While a run is going the settings are read-only."""
        for box in self.findChildren(QGroupBox):
            box.setEnabled(not running)
        if not running:
            self._sync_enabled()


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
