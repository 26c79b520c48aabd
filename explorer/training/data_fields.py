"""The training form's *Data* box: the source (MNIST, CIFAR-10 or a folder of images),
its folder, *Download*, a folder's channels and size, and the data check: a child process
(on this computer, or started by the host's Python over ssh) that counts the readable
images and sends a few thumbnails while the form stays responsive, so its counts are what
the trainer will read."""

from __future__ import annotations

import os

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from core.config import DATASET_GEOMETRY, MODEL_OPTIONS
from core.runs.transport import RemoteError
from explorer.state.advice import in_app_words
from explorer.training.form_widgets import ThumbnailStrip, form_rows, option_spin, path_row
from explorer.training.host_fields import HostFields
from explorer.training.process import DATASET_LABELS, DataScan, ScanReport

SCAN_DELAY_MS = 400  # typing a path starts one check, not one per key


class DataFields(QGroupBox):
    """The data source and its check; ``changed`` when the check starts, progresses or
    ends. ``where`` says whether the data is on an ssh host (checked there)."""

    changed = Signal()

    def __init__(self, where: HostFields) -> None:
        super().__init__("Data")
        self.where = where
        self.scan: DataScan | None = None
        self.scan_report: ScanReport | None = None
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
        self.image_size = option_spin(MODEL_OPTIONS["image_size"])
        self.image_size.setValue(32)  # a folder's default (MNIST and CIFAR-10 fix their own)
        self.data_status = QLabel()
        self.data_status.setWordWrap(True)
        self.thumbnails = ThumbnailStrip()

        rows = self._rows = form_rows(self)
        rows.addRow("Source", self.dataset)
        rows.addRow("Folder", path_row(self.data_dir, self.data_browse))
        rows.addRow("", self.download)
        self.folder_geometry = QWidget()
        row = QHBoxLayout(self.folder_geometry)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.channels)
        row.addWidget(QLabel("size"))
        row.addWidget(self.image_size)
        row.addStretch(1)
        rows.addRow("Images", self.folder_geometry)
        rows.addRow(self.data_status)
        rows.addRow(self.thumbnails)
        self._fit_rows()  # no blank space under the folder until a check has something to say

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SCAN_DELAY_MS)
        self._timer.timeout.connect(self.start_scan)
        self.data_browse.clicked.connect(self._browse_data)

    def _say(self, text: str) -> None:
        self.data_status.setText(text)
        self._fit_rows()

    def _fit_rows(self) -> None:
        """The check's words and thumbnails take room only while there are some."""
        self._rows.setRowVisible(self.data_status, bool(self.data_status.text()))
        self._rows.setRowVisible(self.thumbnails, bool(self.thumbnails.labels))

    def sync(self, resuming: bool) -> None:
        """MNIST and CIFAR-10 can be downloaded; a folder's images need a size and
        channels. A resumed run's data is its checkpoint's."""
        fixed = self.dataset.currentData() in DATASET_GEOMETRY
        self._rows.setRowVisible(self.download, fixed)
        self._rows.setRowVisible(self.folder_geometry, not fixed)
        self.download.setEnabled(not resuming)
        self.folder_geometry.setEnabled(not resuming)

    def source_changed(self) -> None:
        """Forget the last check; a new one starts once the edits settle."""
        self.scan_report = None
        self.thumbnails.set_images([])
        self._say("")
        self.cancel_scan()
        self._timer.start()

    def problems(self, batch_size: int, gpus: int) -> list[str]:
        """Why the data cannot feed a run of ``batch_size`` per GPU (yet)."""
        dataset, data_dir = self.dataset.currentData(), self.data_dir.text().strip()
        if not data_dir:
            return ["choose the data folder"]
        r = self.scan_report
        if r is None or (r.dataset, r.data_dir) != (dataset, data_dir):
            if self.where.remote and self.where.host_facts is None:
                return []  # the host's own problem says why; its data is checked after it
            return ["checking the data…"]
        if r.error:
            return [r.error]
        if r.missing:
            return []  # the trainer downloads it
        if not r.finished and r.readable < batch_size:
            return ["checking the data…"]
        train = r.train if r.train is not None else r.readable
        if r.finished and train < batch_size * gpus:
            return [
                f"only {train} readable images: fewer than one batch of "
                f"{batch_size * gpus}; lower the batch size"
            ]
        return []

    def start_scan(self) -> None:
        """Check the data source now (normally a moment after the last edit)."""
        self._timer.stop()
        self.cancel_scan()
        data_dir = self.data_dir.text().strip()
        if not data_dir:
            self._say("")
            self.changed.emit()
            return
        host = None
        if self.where.remote:
            if self.where.host_facts is None:
                self._say("Checked on the host once the host answers")
                self.changed.emit()
                return
            try:
                host = self.where.host_choice().run_host()
            except RemoteError as exc:
                self._say(f"<span style='color:#ff8a80'>{exc}</span>")
                self.changed.emit()
                return
        self._say(f"Checking on {host.label}…" if host else "Checking…")
        dataset, download = self.dataset.currentData(), self.download.isChecked()
        self.scan = DataScan(dataset, data_dir, download, self, host)
        self.scan.updated.connect(self._on_scan_updated)
        self.scan.start()
        self.changed.emit()

    @property
    def checking(self) -> bool:
        """Whether a data check is due or under way."""
        due = self._timer.isActive()
        return due or (
            self.scan is not None and not (self.scan_report and self.scan_report.finished)
        )

    def cancel_scan(self) -> None:
        if self.scan is not None:
            self.scan.cancel()
            self.scan.deleteLater()
            self.scan = None

    def _on_scan_updated(self, report: ScanReport) -> None:
        self.scan_report = report
        if report.error:
            text = in_app_words(report.error)
            self._say(f"<span style='color:#ff8a80'>{text}</span>")
        elif report.missing:
            self._say("Not here yet: the trainer will download it")
        elif report.train is not None:
            self._say(f"{report.train:,} training and {report.test:,} test images")
        elif report.finished:
            # torch-free; imported here so that importing the page loads no core.training.
            from core.training.datasets import describe_skipped

            extra = f" ({describe_skipped(report.skipped_names)})" if report.skipped_names else ""
            self._say(f"{report.readable:,} readable images{extra}")
        else:
            total = f" of {report.files:,}" if report.files is not None else ""
            self._say(f"Checking… {report.checked:,}{total} files, {report.readable:,} readable")
        if len(report.thumbnails) != len(self.thumbnails.labels):
            self.thumbnails.set_images(report.thumbnails)
            self._fit_rows()
        self.changed.emit()

    def _browse_data(self) -> None:
        start = os.path.expanduser(self.data_dir.text())
        path = QFileDialog.getExistingDirectory(self, "Data folder", start)
        if path:
            self.data_dir.setText(path)
