"""Controls shared by the panels: a slider for float values with its value and an exact
spin box, and the progress bar of long jobs."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QWidget,
)


class FloatSlider(QWidget):
    """A horizontal slider over ``[low, high]`` in steps of ``step``, with its value shown.

    ``value_changed`` fires on every move (live rendering while dragging); ``edit_finished``
    when the user lets go, so a whole drag can be one undo step.
    """

    value_changed = Signal(float)
    edit_finished = Signal()

    def __init__(
        self,
        low: float,
        high: float,
        step: float = 0.01,
        value: float = 0.0,
        fmt: str = "{:.2f}",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._step = step
        self._fmt = fmt
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(round(low / step), round(high / step))
        self.slider.setPageStep(max(1, round(0.1 / step)))
        self.label = QLabel()
        self.label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance("-0.000") + 4)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.label)
        self.set_value(value)
        self.slider.valueChanged.connect(self._moved)
        self.slider.sliderReleased.connect(self.edit_finished)

    def value(self) -> float:
        return self._to_value(self.slider.value())

    def _to_value(self, position: int) -> float:
        # Rounded so that position 80 at step 0.01 is 0.8, not 0.8000000000000002.
        return round(position * self._step, 9)

    def set_value(self, value: float) -> None:
        """Show ``value`` without emitting ``value_changed`` (syncing from the state)."""
        blocked = self.slider.blockSignals(True)
        self.slider.setValue(round(value / self._step))
        self.slider.blockSignals(blocked)
        self.label.setText(self._fmt.format(value))

    def _moved(self, position: int) -> None:
        value = self._to_value(position)
        self.label.setText(self._fmt.format(value))
        self.value_changed.emit(value)


class TaskProgress(QWidget):
    """Label, progress bar and Cancel button for the long job now running (status bar)."""

    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel()
        self.bar = QProgressBar()
        self.bar.setFixedWidth(160)
        self.bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop this job (Esc)")
        self.cancel_button.clicked.connect(self.cancel_requested)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        self.hide()

    def show_progress(self, name: str, done: int, total: int, text: str = "") -> None:
        self.label.setText(f"{name}: {text}" if text else name)
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
        else:
            self.bar.setRange(0, 0)  # busy, length unknown yet
        self.show()
