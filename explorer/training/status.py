"""The running run in the main window's status bar, seen from any page.

A compact button ("Training 1,200 / 5,000 · ETA 3 min") and a thin progress bar; a click
brings the training page forward. It follows the :class:`TrainingPanel`'s signals only. A
run on an ssh host is named ("Training on gpubox 1,200 / 5,000"), and a lost connection
says so until it is back.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QProgressBar, QToolButton, QWidget

MAX_TEXT_PX = 330


class TrainingStatus(QWidget):
    """Hidden until a run starts; shows its step, total and ETA; says how it ended."""

    open_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.button = QToolButton()
        self.button.setAutoRaise(True)
        self.button.setToolTip("The training run; click for the training page")
        self.bar = QProgressBar()
        self.bar.setFixedWidth(110)
        self.bar.setMaximumHeight(12)
        self.bar.setTextVisible(False)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.button)
        layout.addWidget(self.bar)
        self.button.clicked.connect(self.open_requested)
        self.host = ""
        self.lost = ""
        self._label = ""
        self.hide()

    def set_host(self, host: str) -> None:
        """The host the run lives on; ``""`` for this computer."""
        self.host = host
        self.lost = ""

    def set_connection(self, text: str) -> None:
        """ "connection lost, retrying in N s" while the host is away, ``""`` when back."""
        self.lost = text
        self._show()

    def _show(self) -> None:
        lost = self.lost
        if lost:
            # The page has the whole sentence; here its end: "retrying in 5 s". It takes
            # the place of the step and ETA (the bar still shows how far the run is), so
            # that it is read whole rather than cut to "… · conn…".
            lost = "connection lost, " + lost.rsplit(", ", 1)[-1]
            head, tail = self._training, f": {lost}"
            whole = f"{self._label} · {lost}"
        else:
            head, tail = self._label, ""
            whole = self._label
        # A long host name must not widen the window past its smallest size (1024 px):
        # the text is cut to MAX_TEXT_PX, never in the connection's state; whole in the
        # tooltip.
        metrics = self.button.fontMetrics()
        room = max(MAX_TEXT_PX - metrics.horizontalAdvance(tail), metrics.horizontalAdvance("…"))
        self.button.setText(metrics.elidedText(head, Qt.TextElideMode.ElideRight, room) + tail)
        where = f"The training run on {self.host}" if self.host else "The training run"
        self.button.setToolTip(f"{whole}\n{where}; click for the training page")

    @property
    def _training(self) -> str:
        return f"Training on {self.host}" if self.host else "Training"

    def started(self, _out: str = "") -> None:
        self._label = f"{self._training}: starting…"
        self._show()
        self.bar.setRange(0, 0)
        self.bar.show()
        self.show()

    def queued(self, text: str) -> None:
        """A Slurm job's place in the queue (or its trainer starting), until steps come:
        "Waiting in the Slurm queue (Resources), job 12", whole (the host, which would cut
        it, is in the tooltip)."""
        if not self.isVisible():
            self.show()
        self._label = text
        self._show()
        self.bar.setRange(0, 0)
        self.bar.show()

    def progressed(self, step: int, total: int, text: str) -> None:
        if not self.isVisible():
            self.show()
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(step, total))
            label = f"{self._training} {step:,} / {total:,}"
        else:
            label = f"{self._training} step {step:,}"
        self._label = f"{label} · {text}" if text else label
        self._show()
        self.bar.show()

    def stopped(self, outcome: str) -> None:
        self.lost = ""
        self._label = f"{self._training} {outcome}"
        self._show()
        self.bar.hide()
