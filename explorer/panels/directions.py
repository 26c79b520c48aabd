"""The directions panel: named latent directions made from two groups of example images.

Pick group A (say, digits without a stroke through them) and group B (with), from the
gallery selection or a folder; Create turns the mean latent difference into a named slider
that moves whatever the view shows, image or sample. Directions can be saved and loaded.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from explorer.state.state import AppliedDirection, ExplorerState, StateChange
from explorer.widgets.controls import FloatSlider

AMOUNT_RANGE = (-2.0, 2.0)
GROUPS = ("A", "B")


class DirectionRow(QWidget):
    """One named direction: its slider, Save and Remove."""

    def __init__(self, index: int, applied: AppliedDirection) -> None:
        super().__init__()
        self.index = index
        self.direction = applied.direction
        d = applied.direction
        self.name = QLabel(f"<b>{d.name}</b>")
        self.name.setTextFormat(Qt.TextFormat.RichText)
        counts = f"{d.count_a} → {d.count_b} images" if d.count_a or d.count_b else "loaded"
        self.name.setToolTip(f"mean latent of group B minus group A ({counts})")
        self.slider = FloatSlider(*AMOUNT_RANGE, step=0.01, value=applied.amount)
        self.slider.setToolTip("Adds this many times the direction to every level's latent")
        self.save_button = QToolButton()
        self.save_button.setText("Save…")
        self.save_button.setToolTip("Save this direction as .npz")
        self.remove_button = QToolButton()
        self.remove_button.setText("✕")
        self.remove_button.setToolTip("Remove this direction")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.name)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.save_button)
        layout.addWidget(self.remove_button)


class DirectionsPanel(QScrollArea):
    """Groups, Create, and one slider per direction; bound to the state's directions."""

    group_from_selection = Signal(str)  # "A" or "B"
    group_from_folder = Signal(str)
    create_requested = Signal(str)  # name
    load_requested = Signal()
    save_requested = Signal(int)

    def __init__(self, state: ExplorerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.rows: list[DirectionRow] = []
        self.groups: dict[str, list[int]] = {g: [] for g in GROUPS}  # gallery item ids
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        make = QGroupBox("New direction from examples")
        grid = QGridLayout(make)
        grid.setHorizontalSpacing(6)
        self.group_labels: dict[str, QLabel] = {}
        self.selection_buttons: dict[str, QPushButton] = {}
        self.folder_buttons: dict[str, QPushButton] = {}
        for row, group in enumerate(GROUPS):
            title = QLabel(f"{group} ({'from' if group == 'A' else 'to'})")
            title.setToolTip(f"Group {group}: the examples the direction goes {title.text()[3:-1]}")
            label = QLabel("no images")
            label.setStyleSheet("color: palette(placeholder-text);")
            selection = QPushButton("Gallery selection")
            selection.setToolTip(f"Group {group} = the images selected in the gallery")
            folder = QPushButton("Folder…")
            folder.setToolTip(f"Group {group} = every image in a folder (added to the gallery)")
            selection.clicked.connect(lambda _c=False, g=group: self.group_from_selection.emit(g))
            folder.clicked.connect(lambda _c=False, g=group: self.group_from_folder.emit(g))
            self.group_labels[group] = label
            self.selection_buttons[group] = selection
            self.folder_buttons[group] = folder
            grid.addWidget(title, row, 0)
            grid.addWidget(label, row, 1)
            grid.addWidget(selection, row, 2)
            grid.addWidget(folder, row, 3)
        self.name = QLineEdit()
        self.name.setPlaceholderText("name, e.g. thick strokes")
        self.create_button = QPushButton("Create")
        self.create_button.setToolTip("The mean latent of B minus the mean latent of A")
        grid.addWidget(QLabel("Name"), 2, 0)
        grid.addWidget(self.name, 2, 1, 1, 2)
        grid.addWidget(self.create_button, 2, 3)
        grid.setColumnStretch(1, 1)

        self.list_box = QGroupBox("Directions")
        self.rows_layout = QVBoxLayout()
        self.rows_layout.setSpacing(4)
        self.empty_label = QLabel(
            "None yet. Make one above, or load a saved one. A direction's slider adds "
            "amount × (mean of B − mean of A) to the latents of whatever the view shows."
        )
        self.empty_label.setWordWrap(True)
        self.empty_label.setStyleSheet("color: palette(placeholder-text);")
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("Load a direction saved as .npz")
        list_layout = QVBoxLayout(self.list_box)
        list_layout.addWidget(self.empty_label)
        list_layout.addLayout(self.rows_layout)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.load_button)
        list_layout.addLayout(buttons)

        container = QWidget()
        layout = QVBoxLayout(container)
        layout.setContentsMargins(0, 0, 4, 0)
        layout.addWidget(make)
        layout.addWidget(self.list_box)
        layout.addStretch(1)
        self.setWidget(container)

        self.create_button.clicked.connect(lambda: self.create_requested.emit(self.name.text()))
        self.name.returnPressed.connect(self.create_button.click)
        self.load_button.clicked.connect(self.load_requested)
        self.state.changed.connect(self._on_state_changed)
        self.sync()

    def set_group(self, group: str, item_ids: list[int]) -> None:
        self.groups[group] = list(item_ids)
        n = len(item_ids)
        self.group_labels[group].setText(f"{n} image{'s' if n != 1 else ''}" if n else "no images")
        self._update_create()

    def sync(self) -> None:
        """Rows for the state's directions: rebuilt when the list changed, else values set."""
        directions = self.state.directions
        if [r.direction for r in self.rows] != [d.direction for d in directions]:
            for row in self.rows:
                row.setParent(None)
                row.deleteLater()
            self.rows = [DirectionRow(i, d) for i, d in enumerate(directions)]
            for row in self.rows:
                row.slider.value_changed.connect(
                    lambda v, i=row.index: self.state.set_direction_amount(i, v)
                )
                row.slider.edit_finished.connect(self.state.end_edit)
                row.save_button.clicked.connect(
                    lambda _c=False, i=row.index: self.save_requested.emit(i)
                )
                row.remove_button.clicked.connect(
                    lambda _c=False, i=row.index: self.state.remove_direction(i)
                )
                self.rows_layout.addWidget(row)
        else:
            for row, applied in zip(self.rows, directions):
                row.slider.set_value(applied.amount)
        self.empty_label.setVisible(not self.rows)
        self._update_create()

    def _update_create(self) -> None:
        self.create_button.setEnabled(all(self.groups[g] for g in GROUPS))

    def _on_state_changed(self, change: StateChange) -> None:
        self.sync()
