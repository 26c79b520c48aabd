"""The training form's *Model* box: a preset (:data:`core.config.PRESETS`) or a custom
size (scales, width, blocks); editing a size makes the preset *Custom*."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QGroupBox, QHBoxLayout, QLabel, QWidget

from core.config import MODEL_OPTIONS
from explorer.training.form_widgets import form_rows, option_spin
from explorer.training.process import PRESETS

CUSTOM = "custom"


class ModelFields(QGroupBox):
    """The model's size; ``changed`` when a preset fills the sizes."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__("Model")
        self.preset = QComboBox()
        for name in PRESETS:
            self.preset.addItem(name, name)
        self.preset.addItem("Custom", CUSTOM)
        self.num_scales = option_spin(MODEL_OPTIONS["num_scales"])
        self.mid_channels = option_spin(MODEL_OPTIONS["mid_channels"])
        self.num_blocks = option_spin(MODEL_OPTIONS["num_blocks"])
        self.spins = (self.num_scales, self.mid_channels, self.num_blocks)
        rows = form_rows(self)
        rows.addRow("Preset", self.preset)
        sizes = QWidget()
        row = QHBoxLayout(sizes)
        row.setContentsMargins(0, 0, 0, 0)
        for label, spin in zip(("scales", "width", "blocks"), self.spins):
            row.addWidget(QLabel(label))
            row.addWidget(spin)
        row.addStretch(1)
        rows.addRow("Size", sizes)
        self.preset.currentIndexChanged.connect(self.apply_preset)
        for spin in self.spins:
            spin.valueChanged.connect(self._sizes_edited)

    @property
    def preset_name(self) -> str | None:
        """The preset chosen; None for a custom size."""
        preset = self.preset.currentData()
        return None if preset == CUSTOM else preset

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Scales, width and blocks."""
        return (self.num_scales.value(), self.mid_channels.value(), self.num_blocks.value())

    def show_model(self, preset: str | None, sizes: tuple[int, int, int]) -> None:
        self.preset.setCurrentIndex(self.preset.findData(preset or CUSTOM))
        for spin, value in zip(self.spins, sizes):
            spin.setValue(value)

    def apply_preset(self) -> None:
        sizes = PRESETS.get(self.preset.currentData())
        if sizes is None:
            return
        for spin, value in zip(self.spins, sizes):
            blocked = spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(blocked)
        self.changed.emit()

    def _sizes_edited(self) -> None:
        if PRESETS.get(self.preset.currentData()) != self.sizes:
            blocked = self.preset.blockSignals(True)
            self.preset.setCurrentIndex(self.preset.findData(CUSTOM))
            self.preset.blockSignals(blocked)
