"""The training page's command line: the command a run is started with, rendered for the
page (from the run folder, no home or checkout path of this machine shown) and for Copy
(full paths, or ``realnvp remote HOST train ...`` for a run on an ssh host), and the
read-only line with its Copy button that shows it."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtGui import QFont, QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QWidget

from core.runs.folder import EVENTS_FILE, LOG_FILE
from core.runs.host import join_command, remote_cli
from explorer.training.process import RunSettings
from explorer.training.remote_run import HostChoice


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


def shell_word(path: str) -> str:
    """A path quoted for the shell, a leading ``~/`` left outside the quotes so the shell
    still expands it."""
    if path.startswith("~/"):
        return "~/" + join_command([path[2:]])
    return join_command([path])


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
    if not settings.train.out:
        return shown
    return f"cd {shell_word(home_path(run_dir))} && {shown} >> {EVENTS_FILE} 2>> {LOG_FILE}"


def remote_command(settings: RunSettings, choice: HostChoice) -> str:
    """The command line that starts the same run on the host from a terminal
    (``realnvp remote HOST train ...``), what Copy gives for an ssh host."""
    argv = remote_cli(choice.host, "train", choice.python, choice.runs_dir, choice.config_file)
    if choice.slurm is not None:
        argv += choice.slurm.cli_words()
    elif settings.gpus > 1:
        argv += ["--gpus", str(settings.gpus)]
    if settings.train.out:
        argv += ["--out", settings.train.out]
    return join_command(argv + settings.trainer_args(str))  # the host's paths, as typed


class CommandLine(QWidget):
    """The command line of the next run (or of the run that just ended, until a setting
    changes), read-only, and Copy, which gives :attr:`full_command`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setReadOnly(True)
        self.edit.setFont(QFont("monospace"))
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(self.copy)
        self.full_command = ""
        # After a run ends: its settings, and the form's as they were then. The line shows
        # that run's command (the one the message names) until a setting changes.
        self._ended: tuple[RunSettings, RunSettings] | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.copy_button)

    def show_text(self, text: str) -> None:
        """A command given whole (following a run on a host: its ``follow`` command)."""
        self.full_command = text
        self.edit.setText(text)
        self.edit.setCursorPosition(0)

    def show_run(
        self, settings: RunSettings, choice: HostChoice | None, python: str | None
    ) -> None:
        """The command of a run with ``settings``, here or on ``choice``'s host."""
        if choice is not None:
            self.show_text(remote_command(settings, choice))
            return
        self.full_command = settings.shell_command(python)
        self.edit.setText(preview_command(settings, python))
        self.edit.setCursorPosition(0)

    def run_ended(self, run: RunSettings, form: RunSettings) -> None:
        """The run with settings ``run`` ended while the form held ``form``."""
        self._ended = (run, form)

    def refresh(
        self,
        running: bool,
        form: RunSettings,
        choice: HostChoice | None,
        python: str | None,
    ) -> None:
        """While a run goes on the line keeps its command; otherwise it shows the ended
        run's until the form differs from what it was then, and the form's after that."""
        if running:
            self._ended = None
        else:
            if self._ended is not None and form != self._ended[1]:
                self._ended = None  # a setting changed: the line shows the next run
            self.show_run(form if self._ended is None else self._ended[0], choice, python)
        self.edit.setToolTip(
            "The command of the run that just ended, from its folder; change a setting to see "
            "the next run's. Copy gives it with full paths"
            if self._ended is not None
            else "The command the panel runs, from the run folder; Copy gives it with full paths"
        )

    def copy(self) -> None:
        """The full command (absolute paths, this interpreter) to the clipboard."""
        QGuiApplication.clipboard().setText(self.full_command)
