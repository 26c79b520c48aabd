"""The running run in the main window's status bar, seen from any page.

A compact button ("Training 1,200 / 5,000 · ETA 3 min") and a thin progress bar; a click
brings the training page forward. It follows the :class:`TrainingPanel`'s signals only.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QProgressBar, QToolButton, QWidget


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
        self.hide()

    def started(self, _out: str = "") -> None:
        self.button.setText("Training: starting…")
        self.bar.setRange(0, 0)
        self.bar.show()
        self.show()

    def progressed(self, step: int, total: int, text: str) -> None:
        if not self.isVisible():
            self.show()
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(step, total))
            label = f"Training {step:,} / {total:,}"
        else:
            label = f"Training step {step:,}"
        self.button.setText(f"{label} · {text}" if text else label)
        self.bar.show()

    def stopped(self, outcome: str) -> None:
        self.button.setText(f"Training {outcome}")
        self.bar.hide()
