"""Where an image's bits go, and whether it looks like the model's test data.

:class:`LikelihoodPanel` draws a :class:`~explorer.state.likelihood.LikelihoodView`: the
heat map of bits per pixel over the image (total, one level or the preprocessing), a bar
chart of bits/dim per level, the test set's histogram of per-image bits/dim with this image
marked, and the verdict in words. It never computes: the images tab hands it the view the
engine made while encoding, and :class:`SampleLikelihood` asks the engine for the selected
sample's view on a worker thread, only while its tab is shown.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from core.stats.typicality import percent_text
from explorer.engine.render import Frame, RenderEngine
from explorer.state.likelihood import TOTAL, LikelihoodView, overlay
from explorer.widgets.images import CaptionedImage, ImageGridView

HEAT_OPACITY = 0.8
VERDICT_COLOURS = {
    "in distribution": "#7bd88f",
    "unusual": "#f2c14e",
    "out of distribution": "#ff6b6b",
}
SAMPLE_DELAY_MS = 200  # after the last frame: a dragged slider does not queue maps


def _plot(height: int) -> pg.PlotWidget:
    plot = pg.PlotWidget()
    plot.setFixedHeight(height)
    plot.setMenuEnabled(False)
    plot.setMouseEnabled(x=False, y=False)
    plot.hideButtons()
    plot.getPlotItem().getViewBox().setDefaultPadding(0.02)
    return plot


# A negative bar looks like an error; it is not, and the tooltip says why.
NEGATIVE_BITS_NOTE = (
    "\nA negative bar is right: bits/dim come from a density, not a probability, and a "
    "density above 1 (the finest level of a clean digit, whose detail the model predicts "
    "very well from the coarser levels) gives a negative number of bits. The total over "
    "the levels and the preprocessing is the image's code length."
)


class LikelihoodPanel(QWidget):
    """Heat map, bits per level and the test-set histogram of one image."""

    def __init__(self, title: str = "Where the bits go", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view: LikelihoodView | None = None
        self.pixels: np.ndarray | None = None
        self.title = QLabel(f"<b>{title}</b>")
        self.image = CaptionedImage("bits per pixel", 120)
        self.heat_toggle = QCheckBox("Heat map")
        self.heat_toggle.setChecked(True)
        self.heat_toggle.setToolTip("Show the bits each pixel costs over the image")
        self.map_choice = QComboBox()
        self.map_choice.setToolTip(
            "Total: every term of the likelihood charged to its pixel; a level: that level's "
            "prior and its scale's log-determinant; preprocessing: the 8-bit discretization "
            "and the logit"
        )
        self.range_label = QLabel()
        self.range_label.setWordWrap(True)  # the tab column of a 1024 px window is narrow
        self.range_label.setStyleSheet("color: palette(placeholder-text);")
        self.verdict_label = QLabel()
        self.verdict_label.setTextFormat(Qt.TextFormat.RichText)
        self.verdict_label.setWordWrap(True)
        self.verdict_label.setToolTip(
            "Two-sided: an image with far FEWER bits/dim than the test set (a blank one) is "
            "as suspicious as one with far more; the complexity-corrected score (bits/dim "
            "minus PNG bits/dim, Serrà et al. 2020) catches images that are merely simple"
        )
        self.levels_plot = _plot(120)
        self.levels_plot.setLabel("left", "bits/dim")
        self.levels_plot.setToolTip("Bits/dim of each level (prior + log-det) and preprocessing")
        self.histogram_plot = _plot(130)
        self.histogram_plot.setLabel("bottom", "bits/dim")
        self.histogram_plot.setToolTip(
            "Per-image bits/dim of the model's test set; red: this image"
        )
        self.bars: pg.BarGraphItem | None = None
        self.marker = pg.InfiniteLine(angle=90, pen=pg.mkPen("#ff5555", width=2))

        controls = QVBoxLayout()
        controls.addWidget(self.heat_toggle)
        controls.addWidget(self.map_choice)
        controls.addWidget(self.range_label)
        controls.addStretch(1)
        # Shown only with pixels to draw on: with none (no image, a blend) empty axes would
        # look like a measurement that came out blank.
        self.heat_box = QWidget()
        top = QHBoxLayout(self.heat_box)
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.image)
        top.addLayout(controls, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.heat_box)
        layout.addWidget(self.verdict_label)
        layout.addWidget(self.levels_plot)
        layout.addWidget(self.histogram_plot)
        layout.addStretch(1)
        self.heat_toggle.toggled.connect(lambda _on: self._draw_image())
        self.map_choice.currentIndexChanged.connect(lambda _i: self._draw_image())
        self.show_view(None, None)

    @property
    def map_name(self) -> str:
        return str(self.map_choice.currentData() or TOTAL)

    def show_view(
        self, view: LikelihoodView | None, pixels: np.ndarray | None, note: str = ""
    ) -> None:
        """Draw ``view`` for the uint8 ``(C, H, W)`` ``pixels`` (``None``: nothing). Without
        a view the plots are hidden and ``note`` (default: no image yet, or measuring) says
        why."""
        self.view, self.pixels = view, pixels
        self.heat_box.setVisible(pixels is not None)
        self.levels_plot.setVisible(view is not None)
        self.histogram_plot.setVisible(view is not None)
        self._fill_map_choice()
        self._draw_image()
        self._draw_levels()
        self._draw_histogram()
        if view is None:
            note = note or ("No image yet." if pixels is None else "Measuring…")
            self.verdict_label.setText(f"<i>{note}</i>")
            return
        colour = VERDICT_COLOURS.get(view.verdict, "palette(text)")
        figures = f"{view.bits_per_dim:.3f} bits/dim"
        if view.p_value is not None:
            figures += (
                f" · percentile {percent_text(view.percentile)} · p {view.p_value:.2g}"
                f" · complexity p {view.complexity_p_value:.2g}"
            )
        if view.reference_images:
            # The verdict is only as strong as its reference: its size stands beside it.
            dataset = f" {view.reference_dataset}" if view.reference_dataset else ""
            figures += f" · against {view.reference_images:,}{dataset} test images"
        self.verdict_label.setText(
            f"<b style='color:{colour}'>{view.verdict}</b> — {view.reason}<br>"
            f"<span style='color:palette(placeholder-text)'>{figures}</span>"
        )

    def _fill_map_choice(self) -> None:
        names = self.view.map_names if self.view is not None else [TOTAL]
        current = self.map_name
        blocked = self.map_choice.blockSignals(True)
        self.map_choice.clear()
        for name in names:
            label = name.capitalize()
            if name == "level 0":
                label += " (finest)"
            elif self.view is not None and name == f"level {self.view.num_levels - 1}":
                label += " (coarsest)"
            self.map_choice.addItem(label, name)
        index = self.map_choice.findData(current)
        self.map_choice.setCurrentIndex(max(index, 0))
        self.map_choice.blockSignals(blocked)

    def _draw_image(self) -> None:
        view, pixels = self.view, self.pixels
        self.map_choice.setEnabled(view is not None and self.heat_toggle.isChecked())
        if pixels is None:
            self.image.set_image(None)
            self.range_label.setText("")
            return
        if view is None or not self.heat_toggle.isChecked():
            self.image.set_image(pixels)
            self.range_label.setText("")
            return
        name = self.map_name
        self.image.set_image(overlay(pixels, view.heat[name], HEAT_OPACITY))
        lo, hi = view.heat_range[name]
        self.range_label.setText(f"dark {lo:.2f} → bright {hi:.2f} bits per pixel\n(asinh scale)")

    def _draw_levels(self) -> None:
        plot = self.levels_plot
        if self.bars is not None:
            plot.removeItem(self.bars)
            self.bars = None
        view = self.view
        if view is None:
            return
        heights = [*view.level_bits_per_dim, view.preprocess_bits_per_dim]
        names = [str(i) for i in range(view.num_levels)] + ["pre"]
        x = np.arange(len(heights))
        colours = ["#5fa8ff"] * view.num_levels + ["#b0b0b0"]
        self.bars = pg.BarGraphItem(x=x, height=heights, width=0.6, brushes=colours)
        plot.addItem(self.bars)
        plot.getAxis("bottom").setTicks([list(zip(x.tolist(), names))])
        plot.setXRange(-0.6, len(heights) - 0.4, padding=0)
        lo, hi = min(0.0, *heights), max(0.0, *heights)
        plot.setYRange(lo, hi, padding=0.1)
        plot.setToolTip(
            "Bits/dim per level (0 finest) and preprocessing:\n"
            + "\n".join(
                f"level {i}: prior {p:.3f} + log-det {d:.3f} = {p + d:.3f}"
                for i, (p, d) in enumerate(zip(view.prior_bits_per_dim, view.logdet_bits_per_dim))
            )
            + f"\npreprocessing: {view.preprocess_bits_per_dim:.3f}"
            + (NEGATIVE_BITS_NOTE if min(heights) < 0 else "")
        )

    def _draw_histogram(self) -> None:
        plot = self.histogram_plot
        plot.clear()
        view = self.view
        reference = view.reference_bits if view is not None else None
        if view is None or reference is None or len(reference) == 0:
            plot.setTitle("no test-set statistics" if view is not None else "")
            return
        counts, edges = np.histogram(reference, bins=50)
        plot.plot(edges, counts, stepMode="center", fillLevel=0, brush=(95, 168, 255, 90))
        plot.setTitle(f"{len(reference)} {view.reference_dataset} test images", size="9pt")
        self.marker.setValue(view.bits_per_dim)
        plot.addItem(self.marker)
        lo = min(float(edges[0]), view.bits_per_dim)
        hi = max(float(edges[-1]), view.bits_per_dim)
        if math.isfinite(lo) and math.isfinite(hi):
            plot.setXRange(lo, hi, padding=0.05)


class SampleLikelihood(QObject):
    """The likelihood of the sample selected in the samples grid, computed by the engine
    on a worker thread (synchronously with a synchronous engine, in tests), only while
    its panel is visible; the newest selection wins.

    It gets the engine and the samples grid; whoever shows the frames hands each complete
    one to :meth:`show_frame` and calls :meth:`forget` when another model opens."""

    described = Signal(object, object, int)  # view or error text, pixels, request number

    def __init__(
        self, engine: RenderEngine, samples_view: ImageGridView, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.engine = engine
        self.samples_view = samples_view
        self.frame: Frame | None = None  # the last complete frame of the samples grid
        self.panel = LikelihoodPanel("Selected sample: where the bits go")
        self._request = 0
        self._answered = 0  # the newest request whose answer is shown
        self._shown_key: tuple | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="likelihood")
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SAMPLE_DELAY_MS)
        self._timer.timeout.connect(self.refresh)
        self.described.connect(self._on_described)
        samples_view.image_selected.connect(lambda _i: self.refresh_soon())
        self.panel.installEventFilter(self)  # shown (its tab, its page): measure then

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.panel and event.type() == QEvent.Type.Show:
            self.refresh_soon()
        return False

    def _key(self) -> tuple | None:
        """What the panel should describe now: the frame and the selected sample."""
        frame = self.frame
        if frame is None or len(frame.images) == 0:
            return None
        return (
            frame.model_id,
            frame.request_id,
            min(self.samples_view.selected, len(frame.images) - 1),
        )

    @property
    def pending(self) -> bool:
        """Whether the visible panel has yet to show the selected sample's likelihood (a
        screenshot of the tab waits for it)."""
        if not self.panel.isVisible() or self._key() is None:
            return False
        return (
            self._timer.isActive()
            or self._key() != self._shown_key
            or self._answered != self._request
        )

    def refresh_soon(self) -> None:
        """:meth:`refresh` once the frames and selections settle."""
        self._timer.start()

    def show_frame(self, frame: Frame) -> None:
        """A complete frame of the samples grid is on screen: describe its selected sample
        once frames settle."""
        self.frame = frame
        self.refresh_soon()

    def forget(self) -> None:
        """Another model opened: what was shown belongs to the old one."""
        self.frame = None
        self._shown_key = None
        self.panel.show_view(None, None)

    def refresh(self) -> None:
        """Describe the selected sample now if the panel is visible and it changed."""
        key = self._key()
        if key is None or self.frame is None or not self.panel.isVisible():
            return
        if key == self._shown_key:
            return
        self._shown_key = key
        pixels = np.array(self.frame.images[key[2]])
        self._request += 1
        request = self._request
        self.panel.show_view(None, pixels)
        if not self.engine.threaded:
            self._on_described(self._describe(pixels), pixels, request)
            return
        future = self._pool.submit(self._describe, pixels)
        future.add_done_callback(
            lambda f, p=pixels, r=request: self.described.emit(self._result(f), p, r)
        )

    def _describe(self, pixels: np.ndarray) -> LikelihoodView | str:
        try:
            return self.engine.describe_likelihood(pixels)
        except ValueError as exc:  # the model changed under the request
            return str(exc)

    @staticmethod
    def _result(future: Future) -> LikelihoodView | str:
        try:
            return future.result()
        except Exception as exc:  # shown in the panel, never a traceback on a thread
            return f"{type(exc).__name__}: {exc}"

    def _on_described(self, result: object, pixels: np.ndarray, request: int) -> None:
        if request != self._request:
            return  # a newer selection is on its way
        self._answered = request
        if isinstance(result, LikelihoodView):
            self.panel.show_view(result, pixels)
        else:
            self.panel.show_view(None, pixels)
            self.panel.verdict_label.setText(f"<i>Could not measure: {result}</i>")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
