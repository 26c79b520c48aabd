"""Controls shared by the panels: a slider for float values with its value and an exact
spin box, labels that fit their text (elided to one line, or as tall as their wrapped lines),
and the progress bar of long jobs."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractSlider,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QWidget,
)

from explorer.state.jobs import Progress, Task

if TYPE_CHECKING:
    from explorer.widgets.task_runner import TaskRunner

WHEEL_EDIT_MS = 400  # wheel notches this close together are one undo step


class FloatSlider(QWidget):
    """A horizontal slider over ``[low, high]`` in steps of ``step``, with its value shown
    in a label, or with ``spin=True`` in a spin box that takes exact values.

    ``value_changed`` fires on every move (live rendering while dragging); ``edit_finished``
    closes one undo step: when a drag is let go, after each key press or click on the groove
    (each PageUp is its own step), after a typed value, and once the wheel rests.
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
        *,
        spin: bool = False,
    ) -> None:
        super().__init__(parent)
        self._step = step
        self._fmt = fmt
        self._end_after_move = False
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(round(low / step), round(high / step))
        self.slider.setPageStep(max(1, round(0.1 / step)))
        self.label = QLabel()
        self.label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance("-0.000") + 4)
        self.spin: QDoubleSpinBox | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        if spin:
            self.spin = QDoubleSpinBox()
            self.spin.setDecimals(max(0, -math.floor(math.log10(step) + 1e-9)))
            self.spin.setRange(low, high)
            self.spin.setSingleStep(step)
            self.spin.setKeyboardTracking(False)  # one edit per typed number
            self.spin.setAccelerated(True)
            self.label.hide()
            layout.addWidget(self.spin)
            self.spin.valueChanged.connect(self._typed)
        else:
            layout.addWidget(self.label)
        self._wheel_timer = QTimer(self)
        self._wheel_timer.setSingleShot(True)
        self._wheel_timer.setInterval(WHEEL_EDIT_MS)
        self._wheel_timer.timeout.connect(self.edit_finished)
        self.set_value(value)
        self.slider.valueChanged.connect(self._moved)
        self.slider.actionTriggered.connect(self._on_action)
        self.slider.sliderPressed.connect(self._on_pressed)
        self.slider.sliderReleased.connect(self.edit_finished)

    def setToolTip(self, text: str) -> None:
        super().setToolTip(text)
        self.slider.setToolTip(text)
        if self.spin is not None:
            self.spin.setToolTip(text)

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
        self._show_in_spin(value)

    def _show_in_spin(self, value: float) -> None:
        if self.spin is not None:
            blocked = self.spin.blockSignals(True)
            self.spin.setValue(value)
            self.spin.blockSignals(blocked)

    def _on_action(self, action: int) -> None:
        # Emitted before the new value is set. A drag ends on release; a key press or a
        # click on the groove is a step of its own: the edit before it is closed now and
        # its own one once its value is in (``_moved``); wheel notches end once it rests.
        if self.slider.isSliderDown():
            return
        if int(action) == QAbstractSlider.SliderAction.SliderMove.value:
            self._wheel_timer.start()
            return
        self.edit_finished.emit()
        self._end_after_move = True

    def _on_pressed(self) -> None:
        self._end_after_move = False
        self._wheel_timer.stop()

    def _moved(self, position: int) -> None:
        value = self._to_value(position)
        self.label.setText(self._fmt.format(value))
        self._show_in_spin(value)
        self.value_changed.emit(value)
        if self._end_after_move:
            self._end_after_move = False
            self.edit_finished.emit()

    def _typed(self, value: float) -> None:
        value = round(round(value / self._step) * self._step, 9)
        blocked = self.slider.blockSignals(True)
        self.slider.setValue(round(value / self._step))
        self.slider.blockSignals(blocked)
        self.label.setText(self._fmt.format(value))
        self.edit_finished.emit()
        self.value_changed.emit(value)
        self.edit_finished.emit()


class ElidedLabel(QLabel):
    """One line of plain text that shortens itself with "…" in the middle when narrow
    (a file name in a narrow column); the whole text stays in ``full_text`` and the
    tooltip."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.full_text = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def setText(self, text: str) -> None:
        self.full_text = text
        self.setToolTip(text)
        self._elide()

    def text(self) -> str:
        return self.full_text

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._elide()

    def minimumSizeHint(self) -> QSize:
        return QSize(
            self.fontMetrics().horizontalAdvance("x…x") + 4, super().minimumSizeHint().height()
        )

    def sizeHint(self) -> QSize:
        return QSize(
            self.fontMetrics().horizontalAdvance(self.full_text) + 4, super().sizeHint().height()
        )

    def _elide(self) -> None:
        shown = self.fontMetrics().elidedText(
            self.full_text, Qt.TextElideMode.ElideMiddle, max(self.width() - 2, 0)
        )
        super().setText(shown)


class FittedLabel(QLabel):
    """A wrapped label exactly as tall as its text needs at its width, at least
    ``min_lines`` lines. A layout asks a wrapped label's height at a guessed width, so a
    splitter, or a height fixed to a number of lines, cut the second line of a long message.

    ``steady``: it grows at once but shrinks only when its width changes, so answers of
    varying length (one per stroke) do not move what lies below it under the pointer."""

    def __init__(
        self, text: str = "", min_lines: int = 1, steady: bool = False, parent=None
    ) -> None:
        super().__init__(parent)
        self.min_lines = min_lines
        self.steady = steady
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.setText(text)

    def setText(self, text: str) -> None:
        super().setText(text)
        self._fit(shrink=not self.steady)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            self._fit(shrink=True)

    def _fit(self, shrink: bool) -> None:
        floor = self.min_lines * self.fontMetrics().lineSpacing()
        needed = max(floor, self.heightForWidth(self.width()))
        if not shrink:
            needed = max(needed, self.minimumHeight())
        if needed != self.minimumHeight() or needed != self.maximumHeight():
            self.setFixedHeight(needed)


class TaskProgress(QWidget):
    """Label, progress bar and Cancel button for the long job now running and the jobs
    waiting behind it (status bar); Cancel stops them all."""

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
        self.waiting = 0
        self._tasks: TaskRunner | None = None
        self._line = ""
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        self.hide()

    def show_progress(self, name: str, done: int, total: int, text: str = "") -> None:
        self._line = f"{name}: {text}" if text else name
        self._update_label()
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
        else:
            self.bar.setRange(0, 0)  # busy, length unknown yet
        self.show()

    def follow(self, tasks: TaskRunner) -> None:
        """Show the job ``tasks`` runs and how many wait behind it, hidden when none is
        left; Cancel cancels them all."""
        self._tasks = tasks
        self.cancel_requested.connect(tasks.cancel_all)
        tasks.queue_changed.connect(self.set_waiting)
        tasks.started.connect(self._task_started)
        tasks.progressed.connect(self._task_progressed)
        tasks.finished.connect(self._task_finished)

    def _task_started(self, task: Task) -> None:
        self.show_progress(task.name, 0, 0)

    def _task_progressed(self, task: Task, progress: Progress) -> None:
        self.show_progress(task.name, progress.done, progress.total, progress.text)

    def _task_finished(self, _task: Task) -> None:
        if self._tasks is not None and not self._tasks.busy:
            self.hide()

    def set_waiting(self, count: int) -> None:
        """How many jobs wait behind the one shown (Cancel stops those too)."""
        self.waiting = count
        self._update_label()
        self.cancel_button.setToolTip(
            f"Stop this job and the {count} waiting (Esc)" if count else "Stop this job (Esc)"
        )

    def _update_label(self) -> None:
        more = f" · {self.waiting} more waiting" if self.waiting else ""
        self.label.setText(self._line + more)
