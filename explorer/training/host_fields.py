"""The training form's *Run on* box: this computer or an ssh host (an alias of the user's
ssh config or ``user@host[:port]``, the host's Python, its runs folder, an optional ssh
config file). **Check host** (and any settled edit of the host's fields) runs the remote
API's check on a worker thread and shows the host's GPUs, CPU cores, free disk and version.
The fields are kept in the app's settings, and a host typed is filled with what was
remembered for it (:mod:`core.runs.hosts`)."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
)

from core.runs import hosts
from core.runs.host import DEFAULT_PYTHON, HostFacts
from core.runs.host import DEFAULT_RUNS_DIR as HOST_RUNS_DIR
from core.runs.transport import RemoteError
from explorer.settings import ExplorerSettings
from explorer.training.form_widgets import form_rows, html, path_row
from explorer.training.remote_run import BlockingCall, HostChoice

HOST_CHECK_DELAY_MS = 900  # a host name being typed is checked once it settles
LOCAL, SSH, SLURM = "local", "ssh", "slurm"


class HostFields(QGroupBox):
    """Where a run goes. ``changed`` after a check starts or ends; ``host_checked`` with
    the host's :class:`HostFacts`, or a str: why the check failed; ``host_edited`` when an
    ssh host's field changed (what was checked on it no longer holds)."""

    changed = Signal()
    host_checked = Signal(object)
    host_edited = Signal()

    def __init__(self, settings: ExplorerSettings | None = None) -> None:
        super().__init__("Run on")
        self.app_settings = settings
        self.host_facts: HostFacts | None = None
        self.host_error: str | None = None
        self.host_check: BlockingCall | None = None
        self._checked_choice: HostChoice | None = None

        self.run_on = QComboBox()
        self.run_on.addItem("This computer", LOCAL)
        self.run_on.addItem("SSH host", SSH)
        self.run_on.addItem("Slurm cluster (over SSH)", SLURM)
        self.run_on.setToolTip(
            "Train here, on a machine with a GPU reached with ssh, or as a batch job of a "
            "Slurm cluster whose login node is reached with ssh (localhost if you are on it)"
        )
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

        rows = self._rows = form_rows(self)
        rows.addRow("Machine", self.run_on)
        rows.addRow("Host", path_row(self.host, self.check_host_button))
        rows.addRow("Python", self.remote_python)
        rows.addRow("Runs folder", self.remote_runs)
        rows.addRow("SSH config", path_row(self.ssh_config, self.ssh_config_browse))
        rows.addRow(self.host_status)

        self._load_settings()
        self._sync_rows()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(HOST_CHECK_DELAY_MS)
        self._timer.timeout.connect(self.check_host)
        self.run_on.currentIndexChanged.connect(self._on_where_changed)
        for edit in self._edits().values():
            edit.textChanged.connect(self._on_host_edited)
        self.host.editingFinished.connect(self._fill_remembered_host)
        self.check_host_button.clicked.connect(self.check_host)
        self.ssh_config_browse.clicked.connect(self._browse_ssh_config)
        if self.remote and self.host.text().strip():
            self._timer.start()

    @property
    def remote(self) -> bool:
        """Whether the run goes to an ssh host (a Slurm cluster's login node included)."""
        return self.run_on.currentData() in (SSH, SLURM)

    @property
    def slurm(self) -> bool:
        """Whether the run is a batch job submitted on the host, a Slurm login node."""
        return self.run_on.currentData() == SLURM

    def host_choice(self) -> HostChoice:
        return HostChoice(
            self.host.text().strip(),
            self.remote_python.text().strip() or DEFAULT_PYTHON,
            self.remote_runs.text().strip() or HOST_RUNS_DIR,
            self.ssh_config.text().strip(),
        )

    def show_host(self, choice: HostChoice) -> None:
        """Show an ssh host's fields (a run on it being followed), checked again."""
        for key, edit in self._edits().items():
            edit.setText(getattr(choice, key))
        self.set_remote(True, self.slurm or choice.slurm is not None)

    def set_remote(self, remote: bool, slurm: bool = False) -> None:
        where = SLURM if slurm else SSH if remote else LOCAL
        self.run_on.setCurrentIndex(self.run_on.findData(where))

    def problems(self, gpus: int) -> list[str]:
        """Why a run of ``gpus`` GPUs cannot start on the host (yet)."""
        choice = self.host_choice()
        if not choice.host:
            return ["choose the ssh host"]
        if self.host_error and self._checked_choice == choice:
            return [self.host_error]
        if self.host_facts is None or self._checked_choice != choice:
            return [f"checking {choice.host}…" if self.checking_host else "press Check host"]
        if self.host_facts.problem:
            return [self.host_facts.problem]
        if not self.slurm and gpus > max(1, len(self.host_facts.gpus)):
            return [f"{gpus} GPUs asked for, {choice.host} has {len(self.host_facts.gpus)}"]
        return []

    @property
    def checking_host(self) -> bool:
        return self._timer.isActive() or (self.host_check is not None and not self.host_check.done)

    def check_host(self) -> None:
        """Connect to the host on a worker thread and show what it has (never blocks)."""
        self._timer.stop()
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
        text = "<br>".join(html(line) for line in facts.summary()[1:])
        if facts.problem:
            text += f"<br><span style='color:#ff8a80'>{html(facts.problem)}</span>"
        self.host_status.setText(text)
        self.host_checked.emit(facts)

    def _host_failed(self, choice: HostChoice, text: str) -> None:
        if choice != self.host_choice() or not self.remote:
            return
        self.host_facts, self.host_error = None, text
        self.host_status.setText(f"<span style='color:#ff8a80'>{html(text)}</span>")
        self.host_checked.emit(text)
        self.changed.emit()

    def _on_where_changed(self) -> None:
        self._sync_rows()
        self._save_settings()
        self.host_facts = None
        self.host_status.setText("")
        if self.remote:
            self._timer.start()

    def _fill_remembered_host(self) -> None:
        """The Python, runs folder and ssh config remembered for the host typed (by the
        command line or an earlier run here: core.runs.hosts), typed once."""
        kept = hosts.remembered(self.host.text())
        for key, field in (("python", "python"), ("runs_dir", "runs_dir")):
            if key in kept:
                self._edits()[field].setText(kept[key])
        if "ssh_config" in kept:
            self.ssh_config.setText(kept["ssh_config"])

    def _on_host_edited(self) -> None:
        self._save_settings()
        if not self.remote:
            return
        self.host_facts, self.host_error = None, None
        self.host_status.setText("")
        self._timer.start()
        self.host_edited.emit()

    def _sync_rows(self) -> None:
        """The host's rows show for an ssh host only."""
        for widget in (
            self.host.parentWidget(),
            self.remote_python,
            self.remote_runs,
            self.ssh_config.parentWidget(),
            self.host_status,
        ):
            self._rows.setRowVisible(widget, self.remote)

    def _edits(self) -> dict[str, QLineEdit]:
        return {
            "host": self.host,
            "python": self.remote_python,
            "runs_dir": self.remote_runs,
            "config_file": self.ssh_config,
        }

    def _load_settings(self) -> None:
        if self.app_settings is None:
            return
        values = self.app_settings.remote_host
        for key, edit in self._edits().items():
            if key in values:
                edit.setText(values[key])
        self.set_remote(values.get("run_on") in (SSH, SLURM), values.get("run_on") == SLURM)

    def _save_settings(self) -> None:
        if self.app_settings is None:
            return
        values = {key: edit.text().strip() for key, edit in self._edits().items()}
        self.app_settings.remote_host = {**values, "run_on": self.run_on.currentData()}

    def _browse_ssh_config(self) -> None:
        start = os.path.expanduser(self.ssh_config.text() or "~/.ssh")
        path, _ = QFileDialog.getOpenFileName(self, "SSH config file", start)
        if path:
            self.ssh_config.setText(path)
