"""Small pieces the training form's boxes share: a spin box for a :mod:`core.config`
option, a line edit with its buttons on one row, a box's form rows, the data check's
thumbnails."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from core.config import Option
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
