"""The training form: where it runs, data source, model size, training length, device and
output folder.

Its boxes with a job of their own live apart: *Run on* and the host check in
:mod:`explorer.training.host_fields`, *Data* and the data check in
:mod:`explorer.training.data_fields`, *Model* in :mod:`explorer.training.model_fields`.

The form turns its widgets into a :class:`~explorer.training.process.RunSettings` and says
what is wrong with it (:meth:`TrainingForm.problems`), so the panel can keep Start disabled
with the reason beside it. A data source is checked in a child process (how many images
are readable, a few thumbnails) while the form stays responsive.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core.config import (
    MODEL_OPTIONS,
    MODEL_SIZES,
    RESUME_OPTIONS,
    SCHEDULES,
    TRAIN_OPTIONS,
    geometry_problem,
    parse_duration,
)
from core.runs.folder import new_run_folder
from core.runs.host import HostFacts, local_host
from explorer.settings import ExplorerSettings
from explorer.training.data_fields import DataFields
from explorer.training.folder_hold import SlurmHold
from explorer.training.form_widgets import (
    form_rows,
    option_spin,
    option_tip,
    path_row,
    read_control,
    show_control,
    spin_box,
)
from explorer.training.host_fields import HostFields
from explorer.training.model_fields import ModelFields
from explorer.training.process import (
    NEW_RUN,
    JsonLinesJob,
    RunSettings,
    ScanReport,
)
from explorer.training.remote_run import HostChoice
from explorer.training.slurm_fields import SlurmFields

DEFAULT_RUNS_DIR = Path.home() / "realnvp-runs"


def out_problems(s: RunSettings, hold: SlurmHold) -> list[str]:
    """Why the output folder cannot take the run (the trainer's own rule, worded for the
    form); empty when it can. Whether a Slurm job still holds the folder comes from
    ``hold``, which asks off the GUI thread; where one does, that is the reason given."""
    if not s.train.out:
        return ["choose an output folder"]
    out = s.out_dir
    resuming_here = bool(s.resume) and (
        Path(s.resume).expanduser().resolve().parent == out.resolve()
    )
    # The trainer's own rule, worded for this form. core.runs.folder is torch-free;
    # imported here so that importing the page loads no core module at all.
    from core.runs.folder import RunFolderError, check_run_folder

    held = hold.problem(out)
    if held:
        return [held]
    try:
        check_run_folder(
            out,
            resume=resuming_here,
            overwrite=s.overwrite,
            choices="press New for a fresh folder, resume it, or tick Start afresh",
            ask_slurm=False,
        )
    except RunFolderError as exc:
        return [str(exc)]
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        return [f"cannot write to {existing}"]
    return []


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
        self.where = HostFields(settings)
        self.where.changed.connect(self.changed)
        self._local_devices: tuple[list[tuple[str, str]], int] | None = None
        self.cuda_devices = 0
        self.devices_probed = False
        self._out_typed = False  # a folder the user chose is never replaced by a suggestion
        self._shown_run = NEW_RUN  # the last run shown (apply), whose options lack controls

        for name in ("run_on", "host", "check_host_button", "remote_python", "remote_runs"):
            setattr(self, name, getattr(self.where, name))
        self.ssh_config, self.host_status = self.where.ssh_config, self.where.host_status
        self.slurm = SlurmFields(self.where)
        self.slurm.changed.connect(self.changed)
        self.slurm_hold = SlurmHold(self)  # whether a batch job holds the output folder
        self.slurm_hold.changed.connect(self.changed)

        # -- data
        self.data = DataFields(self.where)
        self.data.changed.connect(self.changed)
        for name in ("dataset", "data_dir", "data_browse", "download", "channels"):
            setattr(self, name, getattr(self.data, name))
        self.image_size, self.data_status = self.data.image_size, self.data.data_status
        self.thumbnails = self.data.thumbnails

        # -- model
        self.model = ModelFields()
        self.model.changed.connect(self.changed)
        self.preset, self.num_scales = self.model.preset, self.model.num_scales
        self.mid_channels, self.num_blocks = self.model.mid_channels, self.model.num_blocks

        # -- training
        self.batch_size = option_spin(TRAIN_OPTIONS["batch_size"])
        self.lr = QLineEdit(f"{TRAIN_OPTIONS['lr'].default:g}")
        self.lr.setToolTip(option_tip(TRAIN_OPTIONS["lr"]) + ", e.g. 1e-3")
        self.lr_schedule = QComboBox()
        for name in SCHEDULES:
            self.lr_schedule.addItem(name, name)
        self.lr_schedule.setCurrentIndex(
            self.lr_schedule.findData(TRAIN_OPTIONS["lr_schedule"].default)
        )
        self.lr_schedule.setToolTip(option_tip(TRAIN_OPTIONS["lr_schedule"]))
        self.ema = QDoubleSpinBox()
        self.ema.setDecimals(4)
        self.ema.setRange(0.0, TRAIN_OPTIONS["ema"].maximum)
        self.ema.setSingleStep(0.001)
        self.ema.setValue(TRAIN_OPTIONS["ema"].default)
        self.ema.setSpecialValueText("off")
        self.ema.setToolTip(option_tip(TRAIN_OPTIONS["ema"]))
        self.time_limit = QLineEdit()
        self.time_limit.setPlaceholderText("none (e.g. 90m, 2h)")
        self.time_limit.setToolTip(option_tip(TRAIN_OPTIONS["time_limit"]))
        self.init_from = QLineEdit()
        self.init_from.setPlaceholderText("new weights (or a checkpoint, or bundled)")
        self.init_from.setToolTip(option_tip(TRAIN_OPTIONS["init_from"]))
        self.length = spin_box(
            1, 100_000_000, 1, "How long to train: " + TRAIN_OPTIONS["epochs"].help
        )
        self.length_unit = QComboBox()
        self.length_unit.addItem("epochs", "epochs")
        self.length_unit.addItem("steps", "steps")
        self.eval_every = option_spin(TRAIN_OPTIONS["eval_every"])
        self.eval_limit = option_spin(TRAIN_OPTIONS["eval_limit"], special="all")
        self.log_every = option_spin(TRAIN_OPTIONS["log_every"])
        self.seed = option_spin(TRAIN_OPTIONS["seed"], high=2**31 - 1)
        self.flip = QCheckBox("Random horizontal flips")
        self.flip.setToolTip(option_tip(TRAIN_OPTIONS["flip"]))

        # -- hardware
        self.device = QComboBox()
        self.device.addItem("auto", "auto")
        self.device.addItem("cpu", "cpu")
        self.gpus = spin_box(1, 1, 1, "More than one runs torchrun with one process per GPU")
        self.threads = spin_box(0, 512, 0, "CPU threads for torch", "default")
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
        self._sync_where()
        self._suggest_out()
        self._connect()
        self._sync_enabled()
        self.model.apply_preset()
        self.probe: JsonLinesJob | None = None
        if probe_devices:  # the devices torch sees here, asked in a child process
            self.probe = JsonLinesJob(local_host().agent_command("devices"), self)
            self.probe.line_received.connect(self.set_devices)
            self.probe.start()

    # -- layout ----------------------------------------------------------------------------

    def _build_layout(self) -> None:
        def group(title: str) -> tuple[QGroupBox, QFormLayout]:
            box = QGroupBox(title)
            return box, form_rows(box)

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
        f.addRow("Folder", path_row(self.out, self.out_browse, self.out_new))
        f.addRow(self.overwrite)
        f.addRow(self.resume)
        f.addRow("Checkpoint", path_row(self.resume_path, self.resume_browse))

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for box in (self.where, self.slurm, self.data, self.model, training, hardware, output):
            layout.addWidget(box)
        layout.addStretch(1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    def _connect(self) -> None:
        self.run_on.currentIndexChanged.connect(self._on_where_changed)
        self.where.host_edited.connect(self._on_host_edited)
        self.where.host_checked.connect(self._host_checked)
        self.dataset.currentIndexChanged.connect(self._on_source_changed)
        self.data_dir.textChanged.connect(self._on_source_changed)
        self.download.toggled.connect(self._on_source_changed)
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

    def _option_controls(self):
        """``(name, option, control)`` of every option the form shows in a control of its
        own (the length and the model's sizes have controls of their own kind)."""
        for name, opt in {**TRAIN_OPTIONS, **MODEL_OPTIONS}.items():
            if opt.form is not None and opt.form != "length" and name not in MODEL_SIZES[2:]:
                yield name, opt, getattr(self, opt.form)

    def settings(self) -> RunSettings:
        steps = self.length_unit.currentData() == "steps"
        values = {name: read_control(w, opt) for name, opt, w in self._option_controls()}
        return RunSettings(
            train=self._shown_run,  # for the options without a control
            preset=self.model.preset_name,
            gpus=self.gpus.value(),
            resume=self.resume_path.text().strip() if self.resume.isChecked() else "",
            overwrite=self.overwrite.isChecked() and not self.resume.isChecked(),
            threads=self.threads.value() or None,
        ).with_values(
            **values,
            **dict(zip(MODEL_SIZES[2:], self.model.sizes)),
            epochs=1 if steps else self.length.value(),
            max_steps=self.length.value() if steps else None,
        )

    def apply(self, s: RunSettings) -> None:
        """Show ``s`` in the widgets (a data check starts if the source changed)."""
        self._shown_run = s.train
        values = {**s.train.to_dict(), **s.model}
        for name, opt, widget in self._option_controls():
            show_control(widget, opt, values[name])
        self.model.show_model(s.preset, tuple(s.model[k] for k in MODEL_SIZES[2:]))
        self.length_unit.setCurrentIndex(1 if s.train.max_steps else 0)
        self.length.setValue(s.train.max_steps or s.train.epochs)
        self.gpus.setValue(s.gpus)
        self.resume.setChecked(bool(s.resume))
        self.resume_path.setText(s.resume)
        self.overwrite.setChecked(s.overwrite)
        self._out_typed = True
        self.threads.setValue(s.threads or 0)

    # -- validation ----------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why these settings cannot start a run; empty when they can."""
        s = self.settings()
        found: list[str] = []
        remote = self.remote
        if remote:
            found += self.where.problems(s.gpus) + self.slurm.problems()
        t = s.train
        if s.resume:
            if not remote and not Path(s.resume).expanduser().is_file():
                found.append(f"no checkpoint file at {s.resume}")
        else:
            found += self.data.problems(t.batch_size, s.gpus)
            sizes = s.geometry[1], s.model["num_scales"]
            problem = None if t.init_from else geometry_problem(*sizes)
            if problem:
                found.append(problem)
            local_file = t.init_from not in (None, "bundled") and not remote
            if local_file and not Path(t.init_from).expanduser().is_file():
                found.append(f"no checkpoint file at {t.init_from} to start from")
            if not (math.isfinite(t.lr) and t.lr > 0):
                found.append(f"the learning rate must be a positive number, not {self.lr.text()!r}")
        if self.time_limit.text().strip():
            try:
                parse_duration(self.time_limit.text())
            except ValueError as exc:
                found.append(f"time limit: {exc}")
        found += [] if remote else out_problems(s, self.slurm_hold)
        if s.gpus > 1:
            if t.device not in ("auto",) and not t.device.startswith("cuda"):
                found.append(f"{s.gpus} GPUs need device auto or CUDA, not {t.device}")
            elif s.gpus > self.cuda_devices:
                found.append(f"{s.gpus} GPUs asked for, {self.cuda_devices} found")
        return found

    # -- data checks ----------------------------------------------------------------------------

    def _on_source_changed(self) -> None:
        self._sync_enabled()
        self.data.source_changed()

    def start_scan(self) -> None:
        """Check the data source now (normally a moment after the last edit)."""
        self.data.start_scan()

    def cancel_scan(self) -> None:
        self.data.cancel_scan()

    @property
    def scan_report(self) -> ScanReport | None:
        return self.data.scan_report

    @property
    def checking(self) -> bool:
        """Whether a data check is due or under way, or the output folder's batch job has
        not been asked about yet."""
        return self.data.checking or self.slurm_hold.checking

    def shutdown(self) -> None:
        """End the short child processes (device probe, data scan) before the window goes."""
        self.cancel_scan()
        if self.probe is not None:
            self.probe.cancel()

    # -- the rest of the controls ----------------------------------------------------------------

    def set_devices(self, record: dict[str, Any]) -> None:
        """Fill the device list from the agent's ``devices`` answer (``auto`` and ``cpu``
        first, the number of CUDA devices): this computer's; while an ssh host is chosen
        they wait until it is this computer again."""
        devices = [(str(d["name"]), str(d["label"])) for d in record.get("devices", [])]
        self._local_devices = (devices, int(record.get("cuda", 0)))
        if not self.remote:
            self._show_devices(*self._local_devices)

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

    def _sync_enabled(self) -> None:
        resuming = self.resume.isChecked()
        # A resumed run takes all but RESUME_OPTIONS from its checkpoint (data, model,
        # batch size, learning rate...).
        for name, _opt, widget in self._option_controls():
            if name not in RESUME_OPTIONS and name != "out":
                widget.setEnabled(not resuming)
        self.data_browse.setEnabled(not resuming)
        # A run started from a checkpoint's weights has the checkpoint's size.
        starting_from = bool(self.init_from.text().strip()) and not resuming
        for widget in (self.preset, self.num_scales, self.mid_channels, self.num_blocks):
            widget.setEnabled(not resuming and not starting_from)
        self.data.sync(resuming)
        self.resume_path.setEnabled(resuming)
        self.resume_browse.setEnabled(resuming)
        self.overwrite.setEnabled(not resuming)
        multi_ok = self.cuda_devices > 1 and self.device.currentData() in ("auto", "cuda")
        self.gpus.setEnabled(multi_ok or self.gpus.value() > 1)

    def _suggest_out(self) -> None:
        self._out_typed = False
        # On a host a name inside its runs folder: the host refuses one that holds a run.
        folder = new_run_folder(Path("") if self.remote else self.runs_dir) or Path("")
        self.out.setText(folder.name if self.remote else str(folder))

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
        return self.where.remote

    @property
    def host_facts(self) -> HostFacts | None:
        return self.where.host_facts

    @property
    def checking_host(self) -> bool:
        return self.where.checking_host

    def host_choice(self) -> HostChoice:
        """Where the run goes; on a Slurm cluster with the batch job's request."""
        choice = self.where.host_choice()
        return replace(choice, slurm=self.slurm.request()) if self.where.slurm else choice

    def show_host(self, choice: HostChoice) -> None:
        self.where.show_host(choice)

    def set_remote(self, remote: bool) -> None:
        self.where.set_remote(remote)

    def _host_checked(self, facts: HostFacts | str) -> None:
        if isinstance(facts, str):
            return  # the box says why
        devices = [("auto", "auto"), ("cpu", "cpu")]
        devices += [(f"cuda:{g.index}", f"cuda:{g.index} {g.name}") for g in facts.gpus]
        self._show_devices(devices, len(facts.gpus))
        self.start_scan()

    def _on_where_changed(self) -> None:
        # After the box's own handler (connected first): the host's rows, its check.
        remote = self.remote
        self._sync_where()
        if not remote and self._local_devices is not None:
            self._show_devices(*self._local_devices)
        elif not remote:
            self._show_devices([("auto", "auto"), ("cpu", "cpu")], 0)
        if not self._out_typed:
            self._suggest_out()
        self._on_source_changed()

    def _on_host_edited(self) -> None:
        self.data.scan_report = None  # checked on the host before this edit
        self.data.cancel_scan()
        self.changed.emit()

    def _sync_where(self) -> None:
        """The Browse buttons (this computer's folders) only for this computer."""
        remote = self.remote
        for button in (self.data_browse, self.out_browse, self.resume_browse):
            button.setVisible(not remote)
        self.out_new.setToolTip(
            "A fresh folder in the host's runs folder"
            if remote
            else "A fresh folder under " + str(self.runs_dir)
        )

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
