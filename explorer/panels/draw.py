"""The Draw tab: a canvas at the model's resolution, live answers, and completions.

:class:`CanvasView` shows a :class:`~explorer.state.drawing.Canvas` large (each model pixel
a square of screen pixels) and turns mouse strokes into canvas strokes; the erased region
(what a completion fills) is tinted red. :class:`DrawPanel` holds the tools (brush, eraser,
rectangle; size, softness, colour for RGB models; undo, redo, clear, start from the selected
sample, add to gallery) and the answers the model gives after every stroke, computed on an
:class:`~explorer.engine.drawing.AnswerWorker` (newest edit wins): bits/dim with the
typicality verdict in words, the heat map of bits, the nearest class per level, the
reconstruction and a trace of bits/dim over the strokes. **Complete** runs the sampler of
:mod:`core.flow.completion` as a job on the window's task runner (progress, cancel) and
shows the alternatives with their bits/dim; a click on one puts it on the canvas.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QButtonGroup,
    QColorDialog,
    QDoubleSpinBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.flow.completion import DEFAULT_SAMPLES, DEFAULT_TEMPERATURE, Completion
from explorer.engine.drawing import AnswerWorker, completion_job
from explorer.engine.render import RenderEngine
from explorer.panels.likelihood import HEAT_OPACITY, VERDICT_COLOURS
from explorer.state.drawing import (
    BRUSH,
    ERASER,
    RECTANGLE,
    BitsTrace,
    Brush,
    Canvas,
    DrawingAnswer,
)
from explorer.state.jobs import Task
from explorer.state.likelihood import TOTAL, overlay
from explorer.state.state import ModelInfo
from explorer.theme import CHECKED_TOOL_STYLE
from explorer.widgets.controls import FittedLabel
from explorer.widgets.images import BACKGROUND, CaptionedImage, ImageGridView, to_qimage
from explorer.widgets.task_runner import TaskRunner

MASK_TINT = QColor(255, 70, 70, 110)
ANSWER_SIDE = 84
CLASSES_WIDTH = 104
# The completions in one row of up to eight: the tab fits 1024x640 with them shown, and the
# canvas keeps what height is left (two rows of four pushed it under a scroll bar).
COMPLETIONS_HEIGHT = 68
COMPLETIONS_COLUMNS = 8
CANVAS_MIN_SIDE = 168  # six screen pixels per model pixel of a 28x28 model


class CanvasView(QWidget):
    """The canvas, square and as large as the widget allows, drawn with the mouse."""

    edited = Signal()  # a stroke, rectangle or whole-canvas edit ended (undoable)
    drawing = Signal()  # the pixels changed during a stroke

    def __init__(self, canvas: Canvas, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.canvas = canvas
        self.setMouseTracking(True)
        self.setCursor(Qt.CursorShape.CrossCursor)
        # Takes the height the tab leaves it and draws the largest square that fits: a
        # height-for-width canvas made the tab taller than short windows and scrolled.
        self.setMinimumSize(CANVAS_MIN_SIDE, CANVAS_MIN_SIDE)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._hover: QPointF | None = None

    def sizeHint(self) -> QSize:
        # The tab's word-wrapped labels give its layout a height for width, which the
        # scroll area sizes the tab to from the size hints: a larger hint here scrolled
        # short windows. The canvas still grows into the height that is free.
        return QSize(CANVAS_MIN_SIDE, CANVAS_MIN_SIDE)

    def image_rect(self) -> QRectF:
        """Where the canvas is drawn: a centred square, a whole number of screen pixels per
        model pixel when that still fills most of the widget."""
        side = min(self.width(), self.height())
        n = self.canvas.size
        if side >= 2 * n:
            side = (side // n) * n
        return QRectF((self.width() - side) / 2, (self.height() - side) / 2, side, side)

    def to_canvas(self, point: QPointF) -> tuple[float, float]:
        rect = self.image_rect()
        scale = self.canvas.size / max(rect.width(), 1.0)
        return ((point.x() - rect.left()) * scale, (point.y() - rect.top()) * scale)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        rect = self.image_rect()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        painter.drawImage(rect, to_qimage(self.canvas.uint8()))
        mask = self.canvas.mask
        if mask.any():
            tint = np.zeros((*mask.shape, 4), np.uint8)
            tint[mask] = (MASK_TINT.red(), MASK_TINT.green(), MASK_TINT.blue(), MASK_TINT.alpha())
            h, w = mask.shape
            image = QImage(tint.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
            painter.drawImage(rect, image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.setPen(QPen(QColor("#3a3f46"), 1))
        painter.drawRect(rect.adjusted(-0.5, -0.5, 0.5, 0.5))
        scale = rect.width() / self.canvas.size
        box = self.canvas.rectangle
        if box is not None:
            painter.setPen(QPen(QColor("#ff6b6b"), 1.5, Qt.PenStyle.DashLine))
            x0, y0, x1, y1 = box
            painter.drawRect(
                QRectF(
                    rect.left() + x0 * scale,
                    rect.top() + y0 * scale,
                    (x1 - x0) * scale,
                    (y1 - y0) * scale,
                )
            )
        if self._hover is not None and self.canvas.tool != RECTANGLE:
            radius = max(self.canvas.brush.size / 2.0, 0.5) * scale
            painter.setPen(QPen(QColor(255, 255, 255, 150), 1))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawEllipse(self._hover, radius, radius)
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return super().mousePressEvent(event)
        self.canvas.begin_stroke(*self.to_canvas(event.position()))
        self.update()
        self.drawing.emit()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        self._hover = event.position()
        if self.canvas.drawing and event.buttons() & Qt.MouseButton.LeftButton:
            self.canvas.stroke_to(*self.to_canvas(event.position()))
            self.drawing.emit()
        self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or not self.canvas.drawing:
            return super().mouseReleaseEvent(event)
        self.canvas.stroke_to(*self.to_canvas(event.position()))
        changed = self.canvas.end_stroke()
        self.update()
        if changed:
            self.edited.emit()

    def leaveEvent(self, event) -> None:
        self._hover = None
        self.update()
        super().leaveEvent(event)


class DrawPanel(QWidget):
    """The Draw tab. ``current_image()`` gives the selected sample (``uint8 (C, H, W)``) for
    "Start from"; ``add_to_gallery_requested`` carries the canvas pixels to the window."""

    answered = Signal(object)  # DrawingAnswer or (edit, message); emitted on the worker
    answer_shown = Signal(int)  # the edit whose answer is now on screen
    add_to_gallery_requested = Signal(object)  # uint8 (C, H, W)
    status_message = Signal(str, int)
    completions_shown = Signal(object)  # Completion
    canvas_edited = Signal()  # an undoable edit, an undo or a redo

    def __init__(
        self,
        engine: RenderEngine,
        tasks: TaskRunner,
        current_image: Callable[[], np.ndarray | None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.engine = engine
        self.tasks = tasks
        self.current_image = current_image
        self.canvas = Canvas(1, 28)
        self.trace = BitsTrace()
        self.last_answer: DrawingAnswer | None = None
        self.completion: Completion | None = None
        self.completion_task: Task | None = None
        self._class_names = False
        self.worker = AnswerWorker(engine, self.answered.emit, threaded=engine.threaded)
        self.answered.connect(self._on_answered)

        self.view = CanvasView(self.canvas)
        self.view.edited.connect(self._on_edited)

        # -- tools
        self.tool_group = QButtonGroup(self)
        self.tool_buttons: dict[str, QToolButton] = {}
        tools = QHBoxLayout()
        tools.setSpacing(2)
        for tool, text, tip in (
            (BRUSH, "Brush", "Draw with the brush colour"),
            (ERASER, "Eraser", "Erase to black; what it erases is marked (red) for Complete"),
            (RECTANGLE, "Box", "Drag a box to erase and mark for Complete"),
        ):
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.setCheckable(True)
            button.setAutoRaise(False)
            button.setStyleSheet(CHECKED_TOOL_STYLE)  # the active tool stands out
            self.tool_group.addButton(button)
            self.tool_buttons[tool] = button
            button.toggled.connect(lambda on, t=tool: on and self.set_tool(t))
            tools.addWidget(button)
        self.tool_buttons[BRUSH].setChecked(True)
        self.size_spin = QDoubleSpinBox()
        self.size_spin.setRange(0.5, 12.0)
        self.size_spin.setSingleStep(0.5)
        self.size_spin.setValue(self.canvas.brush.size)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Brush and eraser diameter, in model pixels")
        self.softness_spin = QSpinBox()
        self.softness_spin.setRange(0, 100)
        self.softness_spin.setValue(round(self.canvas.brush.softness * 100))
        self.softness_spin.setSuffix(" %")
        self.softness_spin.setToolTip("How much of the brush radius fades out at its edge")
        self.colour_button = QPushButton("Colour…")
        self.colour_button.setToolTip("Brush colour (RGB models)")
        self.colour_button.clicked.connect(self.choose_colour)
        self.size_spin.valueChanged.connect(lambda _v: self._brush_changed())
        self.softness_spin.valueChanged.connect(lambda _v: self._brush_changed())

        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last stroke (Ctrl+Z while this tab is shown)")
        self.redo_button = QPushButton("Redo")
        self.clear_button = QPushButton("Clear")
        self.start_button = QPushButton("Start from sample")
        self.start_button.setToolTip("Put the selected sample of the samples view on the canvas")
        self.gallery_button = QPushButton("Add to gallery")
        self.gallery_button.setToolTip(
            "Make the drawing an image of the gallery, as a dropped file: interpolation, "
            "level mixing, directions and export work on it"
        )
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.clear_button.clicked.connect(self.clear)
        self.start_button.clicked.connect(self.start_from_current)
        self.gallery_button.clicked.connect(
            lambda: self.add_to_gallery_requested.emit(self.canvas.uint8())
        )

        side = QGridLayout()
        side.setContentsMargins(0, 0, 0, 0)
        side.setVerticalSpacing(4)
        side.addLayout(tools, 0, 0, 1, 2)
        side.addWidget(QLabel("Size"), 1, 0)
        side.addWidget(self.size_spin, 1, 1)
        side.addWidget(QLabel("Soft"), 2, 0)
        side.addWidget(self.softness_spin, 2, 1)
        side.addWidget(self.colour_button, 3, 0, 1, 2)
        side.addWidget(self.undo_button, 4, 0)
        side.addWidget(self.redo_button, 4, 1)
        side.addWidget(self.clear_button, 5, 0, 1, 2)
        side.addWidget(self.start_button, 6, 0, 1, 2)
        side.addWidget(self.gallery_button, 7, 0, 1, 2)
        side.setRowStretch(8, 1)
        side_widget = QWidget()
        side_widget.setLayout(side)
        side_widget.setFixedWidth(150)

        top = QHBoxLayout()
        top.setSpacing(8)
        top.addWidget(self.view, 1)
        top.addWidget(side_widget)

        # -- answers
        # Answers arrive while a stroke is drawn: the verdict (a large figure, then two
        # lines, or more for a long reason) grows but never shrinks under the pointer.
        self.verdict_label = FittedLabel(min_lines=4, steady=True)
        self.verdict_label.setTextFormat(Qt.TextFormat.RichText)
        self.heat = CaptionedImage("bits per pixel", ANSWER_SIDE)
        self.reconstruction = CaptionedImage("reconstruction", ANSWER_SIDE)
        self.classes_label = QLabel()
        self.classes_label.setWordWrap(True)
        self.classes_label.setTextFormat(Qt.TextFormat.RichText)
        self.classes_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.classes_label.setToolTip(
            "Per latent level (0 finest), the class whose mean latent is nearest to the "
            "drawing's: the coarse levels hold a digit's shape"
        )
        self.trace_plot = pg.PlotWidget()
        self.trace_plot.setFixedHeight(ANSWER_SIDE + self.fontMetrics().lineSpacing() + 4)
        self.trace_plot.setMinimumWidth(100)
        self.trace_plot.setMenuEnabled(False)
        self.trace_plot.setMouseEnabled(x=False, y=False)
        self.trace_plot.hideButtons()
        self.trace_plot.setLabel("left", "bits/dim")
        self.trace_plot.setLabel("bottom", "stroke")
        self.trace_plot.setToolTip("Bits/dim after each stroke")
        for axis in ("left", "bottom"):  # no "(x0.001)" on a one-point trace
            self.trace_plot.getAxis(axis).enableAutoSIPrefix(False)
        self.trace_curve = self.trace_plot.plot(
            [],
            [],
            pen=pg.mkPen("#5fa8ff", width=2),
            symbol="o",
            symbolSize=5,
            symbolBrush="#5fa8ff",
        )
        answers = QHBoxLayout()
        answers.setSpacing(8)
        answers.addWidget(self.heat)
        answers.addWidget(self.reconstruction)
        answers.addWidget(self.classes_label)
        answers.addWidget(self.trace_plot, 1)

        # -- completions
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(1, 8)
        self.samples_spin.setValue(DEFAULT_SAMPLES)
        self.samples_spin.setToolTip("How many alternatives to sample")
        self.temperature_spin = QDoubleSpinBox()
        self.temperature_spin.setRange(0.05, 1.5)
        self.temperature_spin.setSingleStep(0.05)
        self.temperature_spin.setValue(DEFAULT_TEMPERATURE)
        self.temperature_spin.setToolTip(
            "Temperature of the latent prior, as for the samples: lower is cleaner, "
            "higher more varied"
        )
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 99_999)
        self.seed_spin.setToolTip("The same seed gives the same completions")
        self.complete_button = QPushButton("Complete")
        self.complete_button.setToolTip(
            "Sample the erased (red) part from the model with the rest held fixed"
        )
        self.complete_button.clicked.connect(self.complete)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_completion)
        self.completions_view = ImageGridView(selectable=True, gap=4, columns=COMPLETIONS_COLUMNS)
        self.completions_view.setFixedHeight(COMPLETIONS_HEIGHT)
        self.completions_view.hide()  # until there are completions
        self.completions_view.image_selected.connect(self._on_completion_selected)
        self.completion_label = QLabel("Erase a part (Eraser, Box), then Complete.")
        self.completion_label.setWordWrap(True)
        self.take_button = QPushButton("Use this one")
        self.take_button.setEnabled(False)
        self.take_button.clicked.connect(self.take_selected)
        settings = QHBoxLayout()
        settings.setSpacing(4)
        settings.addWidget(QLabel("<b>Complete</b>"))
        for label, widget in (
            ("n", self.samples_spin),
            ("T", self.temperature_spin),
            ("seed", self.seed_spin),
        ):
            settings.addWidget(QLabel(label))
            settings.addWidget(widget)
        settings.addStretch(1)
        settings.addWidget(self.complete_button)
        picked = QHBoxLayout()
        picked.addWidget(self.completion_label, 1)
        picked.addWidget(self.cancel_button)
        picked.addWidget(self.take_button)

        # Text of fixed height keeps the canvas from moving under the pointer.
        lines = self.fontMetrics().lineSpacing()
        self.classes_label.setFixedSize(CLASSES_WIDTH, ANSWER_SIDE + lines + 4)
        self.completion_label.setFixedHeight(2 * lines + 4)
        self.completion_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(0, 4, 4, 0)
        layout.setSpacing(6)
        layout.addLayout(top, 1)
        layout.addWidget(self.verdict_label)
        layout.addLayout(answers)
        layout.addLayout(settings)
        layout.addWidget(self.completions_view)
        layout.addLayout(picked)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.scroll = scroll
        self._update_buttons()
        self._show_answer(None)

    # -- the model ---------------------------------------------------------------------------

    def model_changed(self, info: ModelInfo) -> None:
        """A new canvas of the model's shape (a drawing of another size cannot carry over;
        one of the same shape stays, answered again by the new model)."""
        self.cancel_completion()
        self._class_names = info.class_stats is not None
        self.colour_button.setVisible(info.channels == 3)
        if self.canvas.shape != (info.channels, info.image_size, info.image_size):
            brush, tool = self.canvas.brush, self.canvas.tool
            self.canvas = Canvas(info.channels, info.image_size)
            self.canvas.brush, self.canvas.tool = brush, tool
            self.view.canvas = self.canvas
        self.trace.clear()
        self._show_completions(None)
        self.view.update()
        self._update_buttons()
        self.request_answer()

    # -- tools ------------------------------------------------------------------------------

    def set_tool(self, tool: str) -> None:
        self.canvas.tool = tool
        button = self.tool_buttons[tool]
        if not button.isChecked():
            button.setChecked(True)
        self.view.update()

    def _brush_changed(self) -> None:
        self.canvas.brush = Brush(
            self.size_spin.value(), self.softness_spin.value() / 100.0, self.canvas.brush.colour
        )
        self.view.update()

    def choose_colour(self) -> None:
        r, g, b = (round(255 * c) for c in self.canvas.brush.colour)
        colour = QColorDialog.getColor(QColor(r, g, b), self, "Brush colour")
        if colour.isValid():
            self.set_colour((colour.redF(), colour.greenF(), colour.blueF()))

    def set_colour(self, rgb: tuple[float, float, float]) -> None:
        self.canvas.brush = Brush(self.canvas.brush.size, self.canvas.brush.softness, rgb)
        r, g, b = (round(255 * c) for c in rgb)
        self.colour_button.setStyleSheet(
            f"QPushButton {{ border-left: 14px solid rgb({r}, {g}, {b}); }}"
        )

    # -- edits ------------------------------------------------------------------------------

    def undo(self) -> bool:
        if self.canvas.undo():
            self._on_edited()
            return True
        return False

    def redo(self) -> bool:
        if self.canvas.redo():
            self._on_edited()
            return True
        return False

    def clear(self) -> None:
        if self.canvas.clear():
            self._on_edited()

    def start_from_current(self) -> bool:
        """The selected sample of the samples view onto the canvas (undoable)."""
        pixels = self.current_image()
        if pixels is None or pixels.shape != self.canvas.shape:
            self.status_message.emit("No sample to start from yet", 5000)
            return False
        if self.canvas.set_image(np.asarray(pixels, np.uint8)):
            self._on_edited()
        return True

    def _on_edited(self) -> None:
        self.view.update()
        self._update_buttons()
        self.request_answer()
        self.canvas_edited.emit()

    def _update_buttons(self) -> None:
        self.undo_button.setEnabled(self.canvas.can_undo)
        self.redo_button.setEnabled(self.canvas.can_redo)
        running = self.completion_task is not None and not self.completion_task.finished
        self.complete_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    # -- answers ----------------------------------------------------------------------------

    def request_answer(self) -> None:
        """Ask the worker about the canvas as it is now (newest request wins). Asked when
        a stroke ends, not during it: measured, answers asked while drawing kept the worker
        busy when the stroke ended and doubled the time to its answer (p50 120 ms against
        50 ms for the encode alone, bundled model, 2-core CPU)."""
        if self.engine.model_info is None:
            return
        self.worker.submit(self.canvas.edits, self.canvas.uint8())

    def _on_answered(self, result: object) -> None:
        if isinstance(result, DrawingAnswer):
            if result.model_id != self.engine.model_id:
                return  # from the model before the one just opened
            self.trace.add(result.edit, result.encoded.bits_per_dim)
            self._show_answer(result)
            self.answer_shown.emit(result.edit)
            return
        _edit, message = result
        self.verdict_label.setText(f"<i>Could not measure: {message}</i>")

    def _show_answer(self, result: DrawingAnswer | None) -> None:
        self.last_answer = result
        if result is None:
            self.verdict_label.setText("<i>Draw on the canvas: the model answers every stroke.</i>")
            self.heat.set_image(None)
            self.reconstruction.set_image(None)
            self.classes_label.setText("")
            self.trace_curve.setData([], [])
            return
        encoded = result.encoded
        view = encoded.likelihood
        text = f"<span style='font-size:15pt'><b>{encoded.bits_per_dim:.3f}</b></span> bits/dim"
        if view is not None:
            colour = VERDICT_COLOURS.get(view.verdict, "palette(text)")
            text += f" · <b style='color:{colour}'>{view.verdict}</b><br>{view.reason}"
            self.heat.set_image(overlay(result.pixels, view.heat[TOTAL], HEAT_OPACITY))
        else:
            self.heat.set_image(None)
        self.verdict_label.setText(text)
        self.reconstruction.set_image(encoded.reconstruction)
        self.reconstruction.setToolTip(
            f"decode(encode(drawing)); largest error {encoded.max_abs_error:.2g}"
        )
        if result.nearest:
            last = len(result.nearest) - 1
            rows = "".join(
                f"{n.level}"
                + ("&nbsp;fine" if n.level == 0 else "&nbsp;coarse" if n.level == last else "")
                + f"&nbsp;→&nbsp;<b style='font-size:13pt'>{n.name}</b><br>"
                for n in result.nearest
            )
            self.classes_label.setText(f"Nearest class<br>{rows}")
        else:
            self.classes_label.setText("<i>No class statistics in this checkpoint</i>")
        x, y = self.trace.arrays()
        self.trace_curve.setData(x, y)
        if len(x) == 1:  # autorange around one point spans thousands: show it in a small box
            self.trace_plot.setXRange(x[0] - 1, x[0] + 1)
            self.trace_plot.setYRange(y[0] - 0.5, y[0] + 0.5)
        else:
            self.trace_plot.enableAutoRange()

    # -- completions ------------------------------------------------------------------------

    def complete(self) -> Task | None:
        """Sample completions of the erased part as a job (progress and cancel in the
        status bar and here). An empty or full mask gets its sentence, nothing runs."""
        mask = self.canvas.mask
        if not mask.any():
            self.completion_label.setText(
                "Nothing is marked: erase part of the drawing (Eraser or Box) first."
            )
            return None
        if mask.all():
            self.completion_label.setText(
                "Everything is erased: keep some of the drawing to complete it from."
            )
            return None
        if self.engine.model_info is None:
            return None
        self.cancel_completion()
        pixels = self.canvas.uint8()
        job = completion_job(
            self.engine,
            pixels,
            mask.copy(),
            self.samples_spin.value(),
            self.temperature_spin.value(),
            self.seed_spin.value(),
        )
        self.completion_label.setText("Sampling…")
        model_id = self.engine.model_id
        results: list[Completion] = []
        self.completion_task = self.tasks.start(
            "Completing the drawing",
            job,
            on_result=lambda r: isinstance(r, Completion) and results.append(r),
            on_done=lambda task: self._on_completion_done(task, results, model_id),
        )
        self._update_buttons()
        return self.completion_task

    def cancel_completion(self) -> None:
        if self.completion_task is not None and not self.completion_task.finished:
            self.completion_task.cancel()

    def _on_completion_done(self, task: Task, results: list[Completion], model_id: int) -> None:
        self._update_buttons()
        if task.cancelled:
            self.completion_label.setText("Completion cancelled.")
        elif task.error:
            self.completion_label.setText(f"Could not complete: {task.error}")
        elif results and model_id == self.engine.model_id:
            self._show_completions(results[-1])
            self.completions_shown.emit(results[-1])
        self._update_buttons()

    def _show_completions(self, completion: Completion | None) -> None:
        self.completion = completion
        if completion is None:
            self.completions_view.set_images(None)
            self.completions_view.hide()
            self.take_button.setEnabled(False)
            return
        self.completions_view.set_images(completion.images)
        self.completions_view.show()
        self.completions_view.select(0)
        self._on_completion_selected(0)
        self.take_button.setEnabled(True)

    def _on_completion_selected(self, index: int) -> None:
        completion = self.completion
        if completion is None or not 0 <= index < len(completion.images):
            return
        bits = ", ".join(f"{b:.2f}" for b in completion.bits_per_dim)
        self.completion_label.setText(
            f"<b>{index + 1}</b>: {completion.bits_per_dim[index]:.3f} bits/dim "
            f"<span style='color:palette(placeholder-text)'>(all: {bits})</span>"
        )

    def take_selected(self) -> bool:
        """Put the selected completion on the canvas (undoable; the mask is cleared)."""
        completion = self.completion
        index = self.completions_view.selected
        if completion is None or not 0 <= index < len(completion.images):
            return False
        if completion.images[index].shape != self.canvas.shape:
            return False
        if self.canvas.set_image(completion.images[index]):
            self._on_edited()
        return True

    def shutdown(self) -> None:
        self.cancel_completion()
        self.worker.shutdown()
