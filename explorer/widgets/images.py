"""Small widgets shared by the panels: a crisp image grid, a slider for float values, a
captioned image, the crop preview and the progress bar of long jobs."""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QPoint, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

BACKGROUND = QColor("#17191c")
ACCENT = QColor("#4ea1ff")
STALE_SHADE = QColor(23, 25, 28, 150)  # over images still showing an older frame


def to_qimage(image: np.ndarray) -> QImage:
    """``uint8 (C, H, W)`` with 1 or 3 channels, or ``(H, W)``, to a QImage that owns a copy."""
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    if image.ndim == 2:
        fmt, line = QImage.Format.Format_Grayscale8, w
    else:
        fmt, line = QImage.Format.Format_RGB888, 3 * w
    return QImage(image.data, w, h, line, fmt).copy()


def grid_columns(n: int) -> int:
    """Columns of a near-square grid of ``n`` images (the layout ``make_grid`` uses)."""
    return max(1, math.ceil(math.sqrt(n)))


class ImageGridView(QWidget):
    """Images in a near-square grid, scaled by nearest neighbour so pixels stay crisp.

    Scaling is by a whole factor whenever the images fit at least at their own size, so
    every image pixel becomes the same number of screen pixels. Clicking an image selects
    it. ``frame_painted`` fires when a newly set frame reaches the screen, which is what
    a latency measurement waits for. A frame may arrive in parts (progressive rendering):
    images listed as ``stale`` still show an older frame and are drawn dimmed;
    ``painted_complete_id`` is the newest frame painted with no stale image left.
    """

    image_selected = Signal(int)
    frame_painted = Signal(int)

    def __init__(
        self,
        selectable: bool = True,
        gap: int = 6,
        parent: QWidget | None = None,
        *,
        columns: int | None = None,
        integer_scale: bool = True,
    ):
        super().__init__(parent)
        self._images: list[QImage] = []
        self._array: np.ndarray | None = None
        self._frame_id = 0
        self._stale: frozenset[int] = frozenset()
        self.painted_frame_id = 0
        self.painted_complete_id = 0
        self.selectable = selectable
        self.selected = 0
        self.gap = gap
        self.columns = columns  # None: a near-square grid; a number: at most that many
        self.integer_scale = integer_scale  # whole scale factors when the images fit
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        if selectable:  # takes the focus on click, so keys like R go to the window
            self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

    @property
    def images(self) -> np.ndarray | None:
        """The ``uint8 (N, C, H, W)`` images on display."""
        return self._array

    @property
    def frame_id(self) -> int:
        return self._frame_id

    def set_images(
        self, images: np.ndarray | None, frame_id: int = 0, stale: tuple[int, ...] = ()
    ) -> None:
        """Show ``uint8 (N, C, H, W)`` images (``None``: nothing); ``stale``: the indices of
        images not yet rendered for this frame."""
        self._array = images
        self._images = [to_qimage(img) for img in images] if images is not None else []
        self._frame_id = frame_id
        self._stale = frozenset(stale)
        if self.selected >= len(self._images):
            self.selected = 0
        self.update()

    def minimumSizeHint(self) -> QSize:
        return QSize(64, 64)

    def sizeHint(self) -> QSize:
        return QSize(480, 480)

    def cell_rects(self) -> list[QRect]:
        """Where each image is drawn, in widget coordinates."""
        n = len(self._images)
        if not n:
            return []
        cols = min(n, self.columns) if self.columns else grid_columns(n)
        rows = math.ceil(n / cols)
        h, w = self._images[0].height(), self._images[0].width()
        gap = self.gap if n > 1 else 0
        avail_w = self.width() - gap * (cols + 1)
        avail_h = self.height() - gap * (rows + 1)
        scale = min(avail_w / (cols * w), avail_h / (rows * h))
        if scale >= 1 and self.integer_scale:
            scale = math.floor(scale)
        cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
        total_w, total_h = cols * cw + (cols - 1) * gap, rows * ch + (rows - 1) * gap
        x0, y0 = (self.width() - total_w) // 2, (self.height() - total_h) // 2
        return [
            QRect(x0 + (i % cols) * (cw + gap), y0 + (i // cols) * (ch + gap), cw, ch)
            for i in range(n)
        ]

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        rects = self.cell_rects()
        for i, (image, rect) in enumerate(zip(self._images, rects)):
            painter.drawImage(rect, image)
            if i in self._stale:
                painter.fillRect(rect, STALE_SHADE)
        if self.selectable and len(rects) > 1 and self.selected < len(rects):
            painter.setPen(QPen(ACCENT, 2))
            painter.drawRect(rects[self.selected].adjusted(-2, -2, 1, 1))
        painter.end()
        complete = not self._stale and self._frame_id != self.painted_complete_id
        if complete:
            self.painted_complete_id = self._frame_id
        if self._frame_id != self.painted_frame_id or complete:
            self.painted_frame_id = self._frame_id
            self.frame_painted.emit(self._frame_id)

    def index_at(self, point: QPoint) -> int | None:
        for i, rect in enumerate(self.cell_rects()):
            if rect.adjusted(-self.gap // 2, -self.gap // 2, self.gap // 2, self.gap // 2).contains(
                point
            ):
                return i
        return None

    def mousePressEvent(self, event: QMouseEvent) -> None:
        index = self.index_at(event.position().toPoint())
        if self.selectable and index is not None:
            self.select(index)
        super().mousePressEvent(event)

    def select(self, index: int) -> None:
        if 0 <= index < max(1, len(self._images)) and index != self.selected:
            self.selected = index
            self.update()
            self.image_selected.emit(index)


class CaptionedImage(QWidget):
    """One image (an :class:`ImageGridView` of fixed size) with a caption below it."""

    def __init__(self, caption: str, side: int = 96, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = ImageGridView(selectable=False, gap=0, integer_scale=False)
        self.view.setFixedSize(side, side)
        self.caption = QLabel(caption)
        self.caption.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.caption.setStyleSheet("color: palette(placeholder-text);")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        layout.addWidget(self.view, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(self.caption)

    def set_image(self, image: np.ndarray | None) -> None:
        """``uint8 (C, H, W)`` or ``None``."""
        self.view.set_images(image[None] if image is not None else None)


class CropPreview(QWidget):
    """The whole dropped picture, small, with everything outside the centre square the
    model sees dimmed and the square outlined."""

    def __init__(self, side: int = 96, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image: QImage | None = None
        self._box: tuple[int, int, int, int] | None = None
        self.setFixedSize(side, side)

    def set_preview(self, image: np.ndarray | None, box: tuple[int, int, int, int] | None):
        """``image``: ``uint8 (H, W, 3)``; ``box``: ``(left, top, right, bottom)`` in it."""
        self._image = to_qimage(image.transpose(2, 0, 1)) if image is not None else None
        self._box = box
        self.update()

    def image_rect(self) -> QRectF:
        if self._image is None:
            return QRectF()
        w, h = self._image.width(), self._image.height()
        scale = min(self.width() / w, self.height() / h)
        return QRectF(
            (self.width() - w * scale) / 2, (self.height() - h * scale) / 2, w * scale, h * scale
        )

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        if self._image is not None:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            target = self.image_rect()
            painter.drawImage(target, self._image)
            if self._box is not None:
                sx = target.width() / self._image.width()
                sy = target.height() / self._image.height()
                left, top, right, bottom = self._box
                crop = QRectF(
                    target.x() + left * sx,
                    target.y() + top * sy,
                    (right - left) * sx,
                    (bottom - top) * sy,
                )
                shade = QColor(0, 0, 0, 150)
                painter.fillRect(
                    QRectF(target.x(), target.y(), target.width(), crop.y() - target.y()), shade
                )
                painter.fillRect(
                    QRectF(
                        target.x(), crop.bottom(), target.width(), target.bottom() - crop.bottom()
                    ),
                    shade,
                )
                painter.fillRect(
                    QRectF(target.x(), crop.y(), crop.x() - target.x(), crop.height()), shade
                )
                painter.fillRect(
                    QRectF(crop.right(), crop.y(), target.right() - crop.right(), crop.height()),
                    shade,
                )
                painter.setPen(QPen(ACCENT, 1.5))
                painter.drawRect(crop.adjusted(0.75, 0.75, -0.75, -0.75))
        painter.end()
