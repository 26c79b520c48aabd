"""The classes panel: directions from the data's labels (see :mod:`explorer.state.classes`).

For the image the view shows (sampled, dropped or interpolated): its nearest class at each
latent level, one slider per class that moves the chosen levels from the image's own
latent towards that class's mean, and "Sample a class". A model without class statistics
hides the controls and says why.
"""

from __future__ import annotations

import html
import itertools

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core.stats.class_stats import LEVEL_MASKS, ClassStats, level_mask
from explorer.state.classes import (
    CLASS_AMOUNT_RANGE,
    ClassMove,
    class_sample,
    nearest_classes,
)
from explorer.state.state import MAX_IMAGES, ExplorerState, ModelInfo, StateChange
from explorer.widgets.controls import FloatSlider

DEFAULT_CLASS_TEMPERATURE = 0.7
MASK_TIPS = {
    "coarse": "every level but the finest: the global shape (the class) moves, the stroke stays",
    "fine": "the finest level only: stroke and texture",
    "all": "every level",
}


class ClassesPanel(QScrollArea):
    """Nearest classes, class sliders and class sampling; bound to the state's classes."""

    def __init__(self, state: ExplorerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.stats: ClassStats | None = None
        self.image_index = 0
        self.sliders: list[FloatSlider] = []
        self._draws = itertools.count(1)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        self.unavailable = QLabel("No model is open.")
        self.unavailable.setWordWrap(True)
        self.unavailable.setStyleSheet("color: palette(placeholder-text);")

        self.nearest_box = QGroupBox("Nearest class per level")
        self.nearest_label = QLabel()
        self.nearest_label.setTextFormat(Qt.TextFormat.RichText)
        self.nearest_label.setWordWrap(True)
        QVBoxLayout(self.nearest_box).addWidget(self.nearest_label)

        self.move_box = QGroupBox("Move towards a class")
        self.mask_combo = QComboBox()
        for mask in LEVEL_MASKS:
            self.mask_combo.addItem(mask, mask)
        self.mask_combo.setToolTip("Which latent levels the class sliders move")
        self.mask_levels = QLabel()
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Every class slider back to 0")
        top = QHBoxLayout()
        top.addWidget(QLabel("Levels"))
        top.addWidget(self.mask_combo)
        top.addWidget(self.mask_levels, 1)
        top.addWidget(self.reset_button)
        self.slider_grid = QGridLayout()
        self.slider_grid.setHorizontalSpacing(6)
        self.slider_grid.setVerticalSpacing(2)
        move_layout = QVBoxLayout(self.move_box)
        move_layout.addLayout(top)
        move_layout.addLayout(self.slider_grid)

        self.sample_box = QGroupBox("Sample a class")
        self.class_combo = QComboBox()
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 1.5)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(DEFAULT_CLASS_TEMPERATURE)
        self.temperature.setToolTip("Each level is mean + temperature × std × noise")
        self.count = QSpinBox()
        self.count.setRange(1, MAX_IMAGES)
        self.count.setValue(16)
        self.count.setToolTip("How many images")
        self.sample_button = QPushButton("Sample")
        self.sample_button.setToolTip(
            "Draw every level from the class's fitted Gaussians, one component of its "
            "mixture per image (undo with Ctrl+Z)"
        )
        sample_layout = QHBoxLayout(self.sample_box)
        sample_layout.addWidget(self.class_combo, 1)
        sample_layout.addWidget(QLabel("T"))
        sample_layout.addWidget(self.temperature)
        sample_layout.addWidget(QLabel("×"))
        sample_layout.addWidget(self.count)
        sample_layout.addWidget(self.sample_button)

        self.source_label = QLabel()
        self.source_label.setWordWrap(True)
        self.source_label.setStyleSheet("color: palette(placeholder-text);")

        container = QWidget()
        layout = QVBoxLayout(container)
        layout.setContentsMargins(0, 0, 4, 0)
        layout.addWidget(self.unavailable)
        layout.addWidget(self.nearest_box)
        layout.addWidget(self.move_box)
        layout.addWidget(self.sample_box)
        layout.addWidget(self.source_label)
        layout.addStretch(1)
        self.setWidget(container)

        self.mask_combo.currentIndexChanged.connect(self._mask_chosen)
        self.reset_button.clicked.connect(self.reset_sliders)
        self.sample_button.clicked.connect(lambda _checked=False: self.sample_class())
        self.state.changed.connect(self._on_state_changed)
        self.model_changed(None)

    # -- the model ------------------------------------------------------------------------

    def first_box_height(self) -> int:
        """The height that shows the first box whole (the nearest classes, or why there
        are none): below it a splitter would cut that box's second row."""
        first = self.nearest_box if self.stats is not None else self.unavailable
        height = first.sizeHint().height()
        if first.hasHeightForWidth() and first.width() > 0:
            height = max(height, first.heightForWidth(first.width()))
        top = self.widget().layout().contentsMargins().top()
        return top + height + 2 * self.frameWidth()

    def model_changed(self, info: ModelInfo | None) -> None:
        """Show the controls for ``info``'s class statistics, or say why there are none.
        Installs the class sliders in the state."""
        stats = info.class_stats if info is not None else None
        self.stats = stats
        available = stats is not None
        self.unavailable.setVisible(not available)
        for box in (self.nearest_box, self.move_box, self.sample_box, self.source_label):
            box.setVisible(available)
        if info is not None:
            self.unavailable.setText(info.class_note or "This model has no class statistics.")
            self.state.set_classes(ClassMove.from_stats(stats) if stats is not None else None)
        self._build_sliders()
        if stats is not None:
            self.class_combo.clear()
            self.class_combo.addItems(stats.names)
            counts = ", ".join(f"{n}: {c}" for n, c in zip(stats.names, stats.counts))
            skipped = f" Skipped (no images): {', '.join(stats.skipped)}." if stats.skipped else ""
            mixture = ""
            if stats.mixture_weights is not None:
                used = ", ".join(
                    f"{n}: {stats.components_used(k)}" for k, n in enumerate(stats.names)
                )
                mixture = f" Class samples come from a mixture of Gaussians a class ({used})."
            self.source_label.setText(
                f"Statistics from the {stats.source}: {counts}.{skipped}{mixture}"
            )
        self.sync()

    def _build_sliders(self) -> None:
        while self.slider_grid.count():
            item = self.slider_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.sliders = []
        if self.stats is None:
            return
        for k, name in enumerate(self.stats.names):
            label = QLabel(f"→ <b>{html.escape(name)}</b>")
            label.setToolTip(f"{self.stats.counts[k]} training images")
            slider = FloatSlider(*CLASS_AMOUNT_RANGE, step=0.01)
            slider.setToolTip(
                f"0: the image's own latent; 1: the mean latent of class {name} "
                "(on the chosen levels)"
            )
            slider.value_changed.connect(lambda v, k=k: self.state.set_class_amount(k, v))
            slider.edit_finished.connect(self.state.end_edit)
            self.slider_grid.addWidget(label, k, 0)
            self.slider_grid.addWidget(slider, k, 1)
            self.sliders.append(slider)

    # -- actions ----------------------------------------------------------------------------

    def set_image_index(self, index: int) -> None:
        """Which image of the grid the nearest classes are shown for."""
        self.image_index = max(0, int(index))
        self._show_nearest()

    def reset_sliders(self) -> None:
        classes = self.state.classes
        if classes is None or not classes.active:
            return
        for k, amount in enumerate(classes.amounts):
            if amount:
                self.state.set_class_amount(k, 0.0, merge=False)

    def sample_class(self, k: int | None = None) -> None:
        """Images of class ``k`` (default: the chosen one) become the view; undoable."""
        if self.stats is None:
            return
        k = self.class_combo.currentIndex() if k is None else k
        seed = self.state.seed * 7919 + next(self._draws)
        temperature = self.temperature.value()
        latents = class_sample(self.stats, k, self.count.value(), temperature, seed, "all")
        self.state.set_latents(
            latents,
            f"samples of class {self.stats.names[k]}, drawn at the Classes tab's "
            f"temperature {temperature:.2f}",
        )

    def _mask_chosen(self) -> None:
        mask = self.mask_combo.currentData()
        if self.state.classes is not None and mask:
            self.state.set_class_mask(mask)

    # -- syncing ------------------------------------------------------------------------------

    def sync(self) -> None:
        classes = self.state.classes
        if classes is not None and self.stats is not None:
            for slider, amount in zip(self.sliders, classes.amounts):
                slider.set_value(amount)
            blocked = self.mask_combo.blockSignals(True)
            self.mask_combo.setCurrentIndex(max(0, self.mask_combo.findData(classes.mask)))
            self.mask_combo.blockSignals(blocked)
            levels = level_mask(classes.mask, len(classes.means))
            self.mask_levels.setText("level " + ", ".join(map(str, levels)))
            self.mask_combo.setToolTip(MASK_TIPS[classes.mask])
        self._show_nearest()

    def _show_nearest(self) -> None:
        if self.stats is None or self.state.classes is None:
            self.nearest_label.setText("")
            return
        index = min(self.image_index, self.state.n_images - 1)
        latents = [z[index] for z in self.state.latents()]
        rows = []
        for near in nearest_classes(latents, self.stats.names, self.stats.means):
            order = sorted(range(len(near.distances)), key=near.distances.__getitem__)
            others = " · ".join(
                f"{html.escape(self.stats.names[j])} {near.distances[j]:.2f}" for j in order[1:4]
            )
            shape = "×".join(map(str, self.state.shapes[near.level]))
            rows.append(
                f"<tr><td>level {near.level} ({shape})&nbsp;</td>"
                f"<td><b>{html.escape(near.name)}</b> {near.distances[near.index]:.2f}&nbsp;</td>"
                f"<td style='color: gray'>{others}</td></tr>"
            )
        which = f"image {index + 1} of {self.state.n_images}" if self.state.n_images > 1 else ""
        caption = f"<p>RMS distance to each class mean{', ' + which if which else ''}:</p>"
        self.nearest_label.setText(caption + "<table>" + "".join(rows) + "</table>")

    def _on_state_changed(self, change: StateChange) -> None:
        self.sync()
