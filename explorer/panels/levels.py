"""The latent levels panel: one row per level, coarsest at the top.

Each row edits only its own level: a temperature, a lock that keeps the level's noise
through the next Resample, a button that redraws just this level, and a slider that moves
the level's latent along a random unit direction (the die draws a new direction). A small
picture of the latent (first channel of the selected image) and a histogram of the whole
level against the N(0, 1) density show what the slider does to the numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from explorer.state.state import OFFSET_RANGE, TEMPERATURE_RANGE, ExplorerState, StateChange
from explorer.widgets.controls import FloatSlider
from explorer.widgets.images import BACKGROUND, ImageGridView

HIST_RANGE = 4.0
HIST_BINS = 48
VIEW_SIDE = (84, 260)  # a level's latent view and histogram height: laptop to 4K, px
VIEW_FRACTION = 0.16  # of the column's width
_GAUSS_X = np.linspace(-HIST_RANGE, HIST_RANGE, 161)
_GAUSS_Y = np.exp(-0.5 * _GAUSS_X**2) / math.sqrt(2.0 * math.pi)
# While a drag goes on, a row redraws its latent view and histogram at most this often;
# the state at rest is drawn at most this long after the last move. Redrawing three rows
# (pyqtgraph histograms) at every move of a temperature drag held the interpreter lock
# against the render thread: measured on the bundled model (2-core Xeon, 16 images, draft
# frames), a draft frame took 35.0 ms with the redraws and 21.3 ms without them.
DRAG_REDRAW_MS = 120


def diverging_colors(values: np.ndarray, limit: float = 3.0) -> np.ndarray:
    """``(H, W)`` floats to ``uint8 (3, H, W)``: blue below zero, white at zero, red above,
    saturating at ``±limit`` (three standard deviations of the prior)."""
    t = np.clip(values / limit, -1.0, 1.0)[None]  # (1, H, W)
    neg, pos = np.clip(-t, 0, 1), np.clip(t, 0, 1)
    blue = np.array([0.23, 0.45, 0.85])[:, None, None]
    red = np.array([0.85, 0.25, 0.2])[:, None, None]
    rgb = 1.0 - neg * (1.0 - blue) - pos * (1.0 - red)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def level_title(index: int, count: int, shape: tuple[int, int, int]) -> str:
    where = "coarsest" if index == count - 1 else "finest" if index == 0 else "middle"
    c, h, w = shape
    return f"Level {index} · {where} · {c}×{h}×{w} ({c * h * w} dims)"


class LevelRow(QGroupBox):
    """The controls and views of one latent level."""

    def __init__(self, state: ExplorerState, index: int, parent: QWidget | None = None):
        super().__init__(level_title(index, state.num_levels, state.shapes[index]), parent)
        self.state = state
        self.index = index
        self.image_index = 0
        self._stale = False
        self._redraw = QTimer(self)  # the throttled redraw of a drag's views
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(DRAG_REDRAW_MS)
        self._redraw.timeout.connect(self._redraw_if_stale)

        self.temperature = FloatSlider(*TEMPERATURE_RANGE, step=0.01, value=1.0)
        self.temperature.setToolTip("This level's temperature (times the global one)")
        self.offset = FloatSlider(*OFFSET_RANGE, step=0.01, value=0.0)
        self.offset.setToolTip(
            "Move this level's latent along a random unit direction; 1.0 is a step as long "
            "as a typical latent of this level"
        )
        self.locked = QCheckBox("Lock")
        self.locked.setToolTip("Keep this level's noise on the next Resample")
        self.resample_button = QPushButton("Resample level")
        self.resample_button.setToolTip("New noise for this level only")
        self.direction_button = QPushButton("New direction")
        self.direction_button.setToolTip("Draw a new random direction for the slider")

        self.latent_view = ImageGridView(selectable=False, gap=0)
        self.latent_view.setFixedSize(VIEW_SIDE[0], VIEW_SIDE[0])
        self.latent_view.setToolTip("First channel of the selected image's latent")
        self.histogram = pg.PlotWidget(background=BACKGROUND)
        self.histogram.setFixedHeight(VIEW_SIDE[0])
        self.histogram.setMinimumWidth(140)
        self.histogram.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.histogram.setMouseEnabled(False, False)
        self.histogram.hideButtons()
        self.histogram.setMenuEnabled(False)
        self.histogram.hideAxis("left")
        self.histogram.getAxis("bottom").setHeight(18)
        self.histogram.setXRange(-HIST_RANGE, HIST_RANGE, padding=0)
        self.histogram.setToolTip("Histogram of this level's latent against N(0, 1)")
        self.bars = self.histogram.plot(
            np.linspace(-HIST_RANGE, HIST_RANGE, HIST_BINS + 1),
            np.zeros(HIST_BINS),
            stepMode="center",
            fillLevel=0,
            brush=(78, 161, 255, 110),
            pen=pg.mkPen((78, 161, 255), width=1),
        )
        self.gauss = self.histogram.plot(
            _GAUSS_X, _GAUSS_Y, pen=pg.mkPen("#f0b35b", width=1.5), antialias=True
        )

        form = QGridLayout()
        form.setHorizontalSpacing(8)
        form.setVerticalSpacing(2)
        form.addWidget(QLabel("Temperature"), 0, 0)
        form.addWidget(self.temperature, 0, 1)
        form.addWidget(QLabel("Direction"), 1, 0)
        form.addWidget(self.offset, 1, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.locked)
        buttons.addStretch(1)
        buttons.addWidget(self.resample_button)
        buttons.addWidget(self.direction_button)
        form.addLayout(buttons, 2, 0, 1, 2)
        views = QHBoxLayout()
        views.addWidget(self.latent_view)
        views.addWidget(self.histogram, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(4)
        layout.addLayout(views)
        layout.addLayout(form)

        self.temperature.value_changed.connect(
            lambda v: self.state.set_level_temperature(self.index, v)
        )
        self.temperature.edit_finished.connect(self.state.end_edit)
        self.offset.value_changed.connect(lambda v: self.state.set_offset(self.index, v))
        self.offset.edit_finished.connect(self.state.end_edit)
        self.locked.toggled.connect(lambda on: self.state.set_locked(self.index, on))
        self.resample_button.clicked.connect(lambda: self.state.resample_level(self.index))
        self.direction_button.clicked.connect(lambda: self.state.reroll_direction(self.index))
        self.sync(latent_changed=True)

    def sync(self, latent_changed: bool, continued: bool = False) -> None:
        """Show the state's values; redraw the views only when the latent changed, while
        hidden (another tab in front) only once the row is shown again, and during a drag
        (``continued`` edits) at most every :data:`DRAG_REDRAW_MS`."""
        level = self.state.level(self.index)
        self.temperature.set_value(level.temperature)
        self.offset.set_value(level.offset)
        blocked = self.locked.blockSignals(True)
        self.locked.setChecked(level.locked)
        self.locked.blockSignals(blocked)
        if not latent_changed:
            return
        if not self.isVisible():
            self._stale = True
        elif continued:
            self._stale = True
            if not self._redraw.isActive():
                self._redraw.start()
        else:
            self._redraw.stop()
            self.refresh_views()

    def _redraw_if_stale(self) -> None:
        if self._stale and self.isVisible():
            self.refresh_views()

    def showEvent(self, event: QShowEvent) -> None:
        if self._stale:
            self.refresh_views()
        super().showEvent(event)

    def set_view_side(self, side: int) -> None:
        if self.latent_view.width() != side:
            self.latent_view.setFixedSize(side, side)
            self.histogram.setFixedHeight(side)

    def refresh_views(self) -> None:
        self._stale = False
        z = self.state.latent(self.index)  # (N, C, H, W)
        image = min(self.image_index, z.shape[0] - 1)
        self.latent_view.set_images(diverging_colors(z[image, 0])[None])
        counts, _ = np.histogram(z, bins=HIST_BINS, range=(-HIST_RANGE, HIST_RANGE))
        width = 2 * HIST_RANGE / HIST_BINS
        self.bars.setData(
            np.linspace(-HIST_RANGE, HIST_RANGE, HIST_BINS + 1), counts / (z.size * width)
        )


class LatentLevelsPanel(QScrollArea):
    """One :class:`LevelRow` per level, coarse to fine, in a scroll area."""

    def __init__(self, state: ExplorerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.rows: list[LevelRow] = []  # indexed by level (finest first)
        self._shapes: tuple = ()
        self._image_index = 0
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.state.changed.connect(self._on_state_changed)
        self.rebuild()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_views()

    def _fit_views(self) -> None:
        """The latent views and histograms grow with the column (a 4K window's wide tab
        column), so a level's picture is not a stamp beside a long histogram."""
        low, high = VIEW_SIDE
        side = min(max(low, round(VIEW_FRACTION * self.viewport().width())), high)
        for row in self.rows:
            row.set_view_side(side)

    def rebuild(self) -> None:
        """New rows for the state's levels (after a new model was opened)."""
        container = QWidget()
        layout = QVBoxLayout(container)
        layout.setContentsMargins(0, 0, 4, 0)
        layout.setSpacing(6)
        self.rows = [LevelRow(self.state, i) for i in range(self.state.num_levels)]
        for row in reversed(self.rows):  # coarse to fine
            row.image_index = self._image_index
            row.refresh_views()
            layout.addWidget(row)
        layout.addStretch(1)
        self.setWidget(container)  # deletes the old container and its rows
        self._shapes = self.state.shapes
        self._fit_views()

    def set_image_index(self, index: int) -> None:
        """Show the latents of grid image ``index`` in the small views."""
        self._image_index = index
        for row in self.rows:
            row.image_index = index
            row.refresh_views()

    def _on_state_changed(self, change: StateChange) -> None:
        if self.state.shapes != self._shapes:
            self.rebuild()
            return
        for row in self.rows:
            row.sync(
                latent_changed=change.reset or row.index in change.levels,
                continued=change.continued and not change.reset,
            )


if __name__ == "__main__":
    import sys

    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    panel = LatentLevelsPanel(ExplorerState(((2, 14, 14), (4, 7, 7), (4, 7, 7)), n_images=16))
    panel.setWindowTitle("LatentLevelsPanel preview")
    panel.resize(460, 760)
    panel.show()
    sys.exit(app.exec())
