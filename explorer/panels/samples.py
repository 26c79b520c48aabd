"""The samples panel: the image grid with its grid size, seed, Resample and temperature.

The panel binds to :class:`~explorer.state.state.ExplorerState` both ways: user input calls
state methods, and :meth:`SamplesPanel.sync` copies the state back into the controls with
their signals blocked, so a sync never loops back into an edit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from explorer.state.state import (
    MAX_IMAGES,
    MAX_SEED,
    TEMPERATURE_RANGE,
    ExplorerState,
    StateChange,
)
from explorer.widgets.controls import FloatSlider
from explorer.widgets.images import ImageGridView


def frame_text(frame: Any, num_levels: int) -> str:
    """The status bar's frame time for an engine ``Frame`` (or a part of a progressive
    one): ``frame 41.2 ms``, ``first image 12.0 ms, grid 4/16``, ``..., 1/2 levels``,
    ``draft 17.0 ms`` (during a drag; the exact frame follows)."""
    cached = (
        ""
        if frame.levels_decoded == num_levels
        else (f", {frame.levels_decoded}/{num_levels} levels")
    )
    if frame.precision == "draft" and frame.first_ms is None:
        return f"draft {frame.elapsed_ms:.1f} ms{cached}"
    if frame.precision == "draft":
        cached += ", draft"
    if frame.first_ms is None:
        return f"frame {frame.elapsed_ms:.1f} ms{cached}"
    if not frame.complete:
        done = len(frame.images) - len(frame.stale)
        return f"first image {frame.first_ms:.1f} ms, grid {done}/{len(frame.images)}{cached}"
    return f"frame {frame.elapsed_ms:.1f} ms, first image {frame.first_ms:.1f} ms{cached}"


def shown_frame(frame: Any) -> str:
    """The frame-time tooltip's first line: which frame is shown."""
    if frame.precision == "draft":
        return (
            "Shown: a draft (bf16 s/t networks, drawn while dragging); the exact float32 "
            "frame replaces it once the drag rests"
        )
    if frame.precision == "bf16":
        return "Shown: the exact frame in bf16 (the same picture as float32)"
    return "Shown: the exact frame (float32)"


class SamplesPanel(QWidget):
    """The grid of samples and the controls that act on all of them."""

    def __init__(self, state: ExplorerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.view = ImageGridView(selectable=True)

        self.count = QSpinBox()
        self.count.setRange(1, MAX_IMAGES)
        self.count.setKeyboardTracking(False)  # one edit per typed number, not per digit
        self.count.setToolTip("Number of images in the grid")
        self.seed = QSpinBox()
        self.seed.setRange(0, MAX_SEED)
        self.seed.setKeyboardTracking(False)
        self.seed.setToolTip("The same seed draws the same images")
        self.seed.setMinimumWidth(self.seed.fontMetrics().horizontalAdvance("0000000000") + 24)
        self.resample_button = QPushButton("Resample")
        self.resample_button.setToolTip("New noise for every unlocked level (R)")
        # A row of its own, and a spin box for exact values: 151 positions need room.
        self.temperature = FloatSlider(
            *TEMPERATURE_RANGE, step=0.01, value=state.temperature, spin=True
        )
        self.temperature.setToolTip("Scales every level's noise; lower is smoother")
        # Shown while latents taken as they are (an image's, a class sample, a map move) are
        # the view at 1.00: says what they are, why the slider moved and that Resample
        # brings the user's temperature back.
        self.temperature_note = QLabel()
        self.temperature_note.setWordWrap(True)
        self.temperature_note.setStyleSheet("color: palette(placeholder-text);")
        self.temperature_note.hide()

        controls = QHBoxLayout()
        controls.setSpacing(8)
        for label, widget in (("Images", self.count), ("Seed", self.seed)):
            controls.addWidget(QLabel(label))
            controls.addWidget(widget)
        controls.addStretch(1)
        controls.addWidget(self.resample_button)
        temperature = QHBoxLayout()
        temperature.setSpacing(8)
        temperature.addWidget(QLabel("Temperature"))
        temperature.addWidget(self.temperature, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.view, 1)
        layout.addLayout(temperature)
        layout.addWidget(self.temperature_note)
        layout.addLayout(controls)

        self.count.valueChanged.connect(self.state.set_n_images)
        self.seed.valueChanged.connect(self.state.set_seed)
        self.resample_button.clicked.connect(lambda: self.state.resample())
        self.temperature.value_changed.connect(self.state.set_temperature)
        self.temperature.edit_finished.connect(self.state.end_edit)
        self.state.changed.connect(self._on_state_changed)
        self.sync()

    def sync(self) -> None:
        """Show the state's values in the controls without emitting edits."""
        for spin, value in ((self.count, self.state.n_images), (self.seed, self.state.seed)):
            blocked = spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(blocked)
        self.temperature.set_value(self.state.temperature)
        sampled_at = self.state.sampling_temperature
        self.temperature_note.setVisible(sampled_at is not None)
        if sampled_at is not None:
            self.temperature_note.setText(
                f"Temperature {self.state.temperature:.2f}: {self.state.shown}. "
                + (
                    f"Resample goes back to {sampled_at:.2f}."
                    if not self.state.any_locked
                    else f"With no level locked, Resample goes back to {sampled_at:.2f}."
                )
            )
        locked = self.state.all_locked
        self.resample_button.setEnabled(not locked)
        self.resample_button.setToolTip(
            "Every level is locked: unlock one to resample"
            if locked
            else "New noise for every unlocked level (R)"
        )

    def show_frame(self, images: np.ndarray, frame_id: int, stale: tuple[int, ...] = ()) -> None:
        """Display ``uint8 (N, C, H, W)`` images; ``stale`` ones (not yet rendered for this
        frame) are dimmed."""
        self.view.set_images(images, frame_id, stale)

    def _on_state_changed(self, change: StateChange) -> None:
        self.sync()


if __name__ == "__main__":
    import sys

    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    preview_state = ExplorerState(((1, 8, 8),), n_images=16)
    panel = SamplesPanel(preview_state)

    def _show_noise(change: StateChange | None = None) -> None:
        z = preview_state.latent(0)
        images = (1.0 / (1.0 + np.exp(-z)) * 255).astype(np.uint8)
        panel.show_frame(images, panel.view.frame_id + 1)

    preview_state.changed.connect(_show_noise)
    _show_noise()
    panel.setWindowTitle("SamplesPanel preview (noise, no model)")
    panel.resize(640, 700)
    panel.show()
    sys.exit(app.exec())
