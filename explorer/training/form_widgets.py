"""Small pieces the training form's boxes share: a spin box for a :mod:`core.config`
option, a line edit with its buttons on one row, a box's form rows, the data check's
thumbnails."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from core.config import PARSERS, Option, option_text
from explorer.widgets.images import to_qimage


def option_tip(opt: Option) -> str:
    return opt.help[:1].upper() + opt.help[1:]


def option_spin(opt: Option, high: int | None = None, special: str = "") -> QSpinBox:
    """A spin box for a :mod:`core.config` option: its range, default and help as tooltip
    (``special``: the text of the minimum, for options whose 0 means "none")."""
    low = 0 if special else int(opt.minimum if opt.minimum is not None else 0)
    top = int(high if high is not None else opt.maximum if opt.maximum is not None else 2**31 - 1)
    default = opt.default if isinstance(opt.default, int) else low
    return spin_box(low, top, default, option_tip(opt), special)


def spin_box(low: int, high: int, value: int, tip: str, special: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    if special:
        spin.setSpecialValueText(special)
    return spin


def read_control(widget: QWidget, opt: Option) -> Any:
    """The value of ``opt`` that its control shows: ``None`` for an optional option left
    empty (or at a spin box's special value), ``nan`` for a number that does not parse, and
    ``None`` for a duration that does not (the form names both problems)."""
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QComboBox):
        return widget.currentData()
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        if opt.default is None and widget.specialValueText() and widget.value() == widget.minimum():
            return None
        return round(widget.value(), 6) if isinstance(widget, QDoubleSpinBox) else widget.value()
    text = widget.text().strip()
    if not text and opt.default is None:
        return None
    try:
        return PARSERS[opt.parse](text)
    except ValueError:
        return math.nan if opt.parse == "float" else None


def show_control(widget: QWidget, opt: Option, value: Any) -> None:
    """Show ``value`` of ``opt`` in its control (a choice it lacks is added)."""
    if isinstance(widget, QCheckBox):
        widget.setChecked(bool(value))
    elif isinstance(widget, QComboBox):
        if widget.findData(value) < 0:
            widget.addItem(str(value), value)
        widget.setCurrentIndex(widget.findData(value))
    elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        widget.setValue(widget.minimum() if value is None else value)
    else:
        widget.setText("" if value is None else option_text(opt, value))


def path_row(edit: QLineEdit, *buttons: QPushButton) -> QWidget:
    """A line edit with its buttons (Browse…, New, Check host) on one form row."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit, 1)
    for button in buttons:
        layout.addWidget(button)
    return row


def form_rows(box: QGroupBox) -> QFormLayout:
    """The rows of one of the form's boxes."""
    form = QFormLayout(box)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    form.setVerticalSpacing(5)
    return form


def html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
