"""The training form: data source, model size, training length, device and output folder.

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

from explorer.training.process import (
    DATASET_GEOMETRY,
    DATASET_LABELS,
    PRESETS,
    DataScan,
    DeviceProbe,
    RunSettings,
    ScanReport,
    geometry_problem,
)
from explorer.widgets.images import to_qimage

CUSTOM = "custom"
SCAN_DELAY_MS = 400  # typing a path starts one check, not one per key
DEFAULT_RUNS_DIR = Path.home() / "realnvp-runs"


def new_run_folder(runs_dir: Path) -> Path:
    """A fresh output folder name under ``runs_dir``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = runs_dir / f"run-{stamp}", 1
    while path.exists():
        n += 1
        path = runs_dir / f"run-{stamp}-{n}"
    return path


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

    def __init__(
        self,
        runs_dir: str | os.PathLike | None = None,
        probe_devices: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.runs_dir = Path(runs_dir) if runs_dir is not None else DEFAULT_RUNS_DIR
        self.scan: DataScan | None = None
        self.scan_report: ScanReport | None = None
        self.cuda_devices = 0
        self.devices_probed = False
        self._out_typed = False  # a folder the user chose is never replaced by a suggestion

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
        self.image_size = _spin(2, 1024, 32, "Images are centre-cropped and resized to this")
        self.data_status = QLabel()
        self.data_status.setWordWrap(True)
        self.thumbnails = ThumbnailStrip()

        # -- model
        self.preset = QComboBox()
        for name in PRESETS:
            self.preset.addItem(name, name)
        self.preset.addItem("Custom", CUSTOM)
        self.num_scales = _spin(1, 8, 3, "Scales: each one but the last halves the image")
        self.mid_channels = _spin(1, 1024, 16, "Width of the s/t networks at the first scale")
        self.num_blocks = _spin(1, 64, 2, "Residual blocks in each s/t network")

        # -- training
        self.batch_size = _spin(1, 65536, 64, "Images per step (per GPU under torchrun)")
        self.lr = QLineEdit("1e-3")
        self.lr.setToolTip("Adam learning rate, e.g. 1e-3")
        self.length = _spin(1, 100_000_000, 1, "How long to train")
        self.length_unit = QComboBox()
        self.length_unit.addItem("epochs", "epochs")
        self.length_unit.addItem("steps", "steps")
        self.eval_every = _spin(1, 10_000_000, 500, "Steps between test evaluations")
        self.eval_limit = _spin(0, 10_000_000, 0, "Test images per evaluation", "all")
        self.log_every = _spin(1, 1_000_000, 10, "Steps between progress events")
        self.seed = _spin(0, 2**31 - 1, 0, "The same seed repeats the run")
        self.flip = QCheckBox("Random horizontal flips")

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
        self._suggest_out()
        self._connect()
        self._scan_timer = QTimer(self)
        self._scan_timer.setSingleShot(True)
        self._scan_timer.setInterval(SCAN_DELAY_MS)
        self._scan_timer.timeout.connect(self.start_scan)
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
        for box in (data, model, training, hardware, output):
            layout.addWidget(box)
        layout.addStretch(1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    def _connect(self) -> None:
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
        if s.resume:
            if not Path(s.resume).expanduser().is_file():
                found.append(f"no checkpoint file at {s.resume}")
        else:
            found += self._data_problems(s)
            problem = geometry_problem(s.geometry[1], s.num_scales)
            if problem:
                found.append(problem)
            if not (math.isfinite(s.lr) and s.lr > 0):
                found.append(f"the learning rate must be a positive number, not {self.lr.text()!r}")
        found += self._out_problems(s)
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
        # The trainer's own rule, worded for this form. core.training.run_folder is torch-free;
        # imported here so that importing the page loads no core module at all.
        from core.training.run_folder import RunFolderError, check_run_folder

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
        self.data_status.setText("Checking…")
        self.scan = DataScan(s.dataset, s.data_dir, s.download, self)
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
            text = report.error.replace("pass --download", "tick Download if missing")
            self.data_status.setText(f"<span style='color:#ff8a80'>{text}</span>")
        elif report.missing:
            self.data_status.setText("Not here yet: the trainer will download it")
        elif report.train is not None:
            self.data_status.setText(f"{report.train:,} training and {report.test:,} test images")
        elif report.finished:
            skipped = (report.files or 0) - report.readable
            extra = f" ({skipped:,} unreadable files skipped)" if skipped else ""
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
        """Fill the device list from a probe: ``[(name, label), ...]``."""
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
            self.eval_limit,
            self.seed,
            self.flip,
        ):
            widget.setEnabled(not resuming)
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
