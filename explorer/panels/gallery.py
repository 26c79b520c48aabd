"""The gallery panel: every image dropped in this session, sortable by bits/dim.

Sorted by bits/dim, highest first, the images the model finds least typical (outliers)
come to the top. Double-click (or Enter, or Show) makes an image the current view; A and B
choose the pair for interpolation; several selected images can seed a direction group.

One highlight, one meaning: the list's selection is what the buttons act on. The image the
view shows is named in its text ("shown"), not highlighted, and when another image becomes
the view the selection moves to it, so Show never acts on an image other than the one the
user sees picked.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QItemSelectionModel, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QIcon, QKeyEvent, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from explorer.state.gallery import Gallery, GalleryImage
from explorer.widgets.images import to_qimage

ICON_SIDE = 44
REFRESH_DELAY_MS = 150  # an import of thousands of files rebuilds the list a few times a second
ID_ROLE = Qt.ItemDataRole.UserRole
# Short: the combo shares a row with Import in the narrow left column ("first" is in the
# tooltip).
SORTS = (
    ("bpd_desc", "Most bits/dim"),
    ("bpd_asc", "Fewest bits/dim"),
    ("p_value", "Least typical"),
    ("added", "Order added"),
    ("name", "Name"),
)


def icon_for(pixels: np.ndarray) -> QIcon:
    """The model-size pixels, scaled up without smoothing."""
    image = to_qimage(pixels)
    return QIcon(
        QPixmap.fromImage(
            image.scaled(
                ICON_SIDE,
                ICON_SIDE,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.FastTransformation,
            )
        )
    )


class _List(QListWidget):
    activated_by_key = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.activated_by_key.emit()
            return
        super().keyPressEvent(event)


class GalleryPanel(QGroupBox):
    """The gallery list with its sort order and the buttons that act on the selection."""

    show_requested = Signal(int)  # item id
    a_requested = Signal(int)
    b_requested = Signal(int)
    remove_requested = Signal(list)  # item ids
    import_requested = Signal()

    def __init__(self, gallery: Gallery, parent: QWidget | None = None) -> None:
        super().__init__("Your images", parent)
        self.gallery = gallery
        self._icons: dict[int, QIcon] = {}
        self._shown_id: int | None = None  # the view's image at the last refresh
        # What the list shows: item ids in row order, and what the rows' looks depend on
        # besides the image (sort, A, B, current); see refresh.
        self._shown_ids: list[int] = []
        self._shown_key: tuple = ()
        self.sort = QComboBox()
        for key, label in SORTS:
            self.sort.addItem(label, key)
        self.sort.setToolTip(
            "Sort order, each first: most or fewest bits/dim; least typical: smallest "
            "two-sided p-value against the model's "
            "test set (bits/dim or complexity-corrected score), which also catches images "
            "with too FEW bits/dim, such as blank ones"
        )
        self.list = _List()
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.list.setIconSize(QSize(ICON_SIDE, ICON_SIDE))
        self.list.setUniformItemSizes(True)
        # Long figures wrap onto a third line rather than scroll the list sideways.
        self.list.setWordWrap(True)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setToolTip(
            "Double-click or Enter: show; select several for a direction group (Directions tab)"
        )
        self.empty_label = QLabel("Drop images or a folder on the window.")
        self.empty_label.setWordWrap(True)
        self.empty_label.setStyleSheet("color: palette(placeholder-text);")
        self.import_button = QPushButton("Import…")
        self.import_button.setToolTip("Import image files (Ctrl+I)")
        self.show_button = QPushButton("Show")
        self.a_button = QPushButton("A")
        self.b_button = QPushButton("B")
        self.remove_button = QPushButton("Remove")
        self.a_button.setToolTip("Use the selected image as A for interpolation (Ctrl+1)")
        self.b_button.setToolTip("Use the selected image as B for interpolation (Ctrl+2)")
        self.show_button.setToolTip("Make the selected image the view (Enter)")
        self.remove_button.setToolTip("Remove the selected images from the gallery")
        for button in (self.a_button, self.b_button):
            button.setFixedWidth(32)
        # Fusion asks 80 px of every push button; in the narrow left column that width goes
        # to the sort box, whose longest order must show whole ("Most bits/din" did not).
        for button in (self.import_button, self.show_button, self.remove_button):
            button.setMinimumWidth(button.fontMetrics().horizontalAdvance(button.text()) + 16)
        buttons = QHBoxLayout()
        buttons.setSpacing(4)
        buttons.addWidget(self.show_button)
        buttons.addWidget(self.a_button)
        buttons.addWidget(self.b_button)
        buttons.addStretch(1)
        buttons.addWidget(self.remove_button)
        top = QHBoxLayout()
        top.addWidget(self.sort, 1)
        top.addWidget(self.import_button)
        layout = QVBoxLayout(self)
        layout.setSpacing(4)
        layout.addLayout(top)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)

        self.sort.currentIndexChanged.connect(lambda _i: self.refresh())
        self.list.itemDoubleClicked.connect(
            lambda item: self.show_requested.emit(item.data(ID_ROLE))
        )
        self.list.activated_by_key.connect(self._show_selected)
        self.list.itemSelectionChanged.connect(self._update_buttons)
        self.import_button.clicked.connect(self.import_requested)
        self.show_button.clicked.connect(self._show_selected)
        self.a_button.clicked.connect(lambda: self._emit_for_selected(self.a_requested))
        self.b_button.clicked.connect(lambda: self._emit_for_selected(self.b_requested))
        self.remove_button.clicked.connect(self._remove_selected)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self.refresh)
        gallery.changed.connect(self._schedule_refresh)
        self.refresh()

    def _schedule_refresh(self) -> None:
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    @property
    def sort_key(self) -> str:
        return str(self.sort.currentData())

    def selected_ids(self) -> list[int]:
        return [item.data(ID_ROLE) for item in self.list.selectedItems()]

    def select(self, item_ids: list[int]) -> None:
        self.list.clearSelection()
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(ID_ROLE) in item_ids:
                item.setSelected(True)
                self.list.scrollToItem(item)

    def refresh(self) -> None:
        """Show the gallery in the chosen order, keeping the selection.

        When images were only added (an import) the new rows are inserted where the order
        puts them; anything else rebuilds the list. A folder import of thousands refreshes
        a few times a second, and rebuilding 5,000 rows each time held the GUI thread for
        hundreds of milliseconds."""
        self._refresh_timer.stop()
        ordered = self.gallery.sorted(self.sort_key)
        ids = [image.item_id for image in ordered]
        g = self.gallery
        key = (self.sort_key, g.a_id, g.b_id, g.current_id)
        blocked = self.list.blockSignals(True)
        shown = set(self._shown_ids)
        if key == self._shown_key and [i for i in ids if i in shown] == self._shown_ids:
            for row, image in enumerate(ordered):
                if image.item_id not in shown:
                    self.list.insertItem(row, self._make_item(image))
        else:
            selected = set(self.selected_ids())
            current = g.current_id
            if current is not None and current != self._shown_id:
                selected = {current}  # a new view: the selection follows it
            self._shown_id = current
            live = set(ids)
            self._icons = {k: v for k, v in self._icons.items() if k in live}
            self.list.clear()
            for image in ordered:
                item = self._make_item(image)
                self.list.addItem(item)
                # Only an item in the list can be selected: before addItem it is forgotten.
                item.setSelected(image.item_id in selected)
                if image.item_id in selected:
                    self.list.setCurrentItem(item, QItemSelectionModel.SelectionFlag.NoUpdate)
        self._shown_ids, self._shown_key = ids, key
        self.list.blockSignals(blocked)
        self.empty_label.setVisible(not ordered)
        self.setTitle(f"Your images ({len(ordered)})" if ordered else "Your images")
        self._update_buttons()

    def _make_item(self, image: GalleryImage) -> QListWidgetItem:
        roles = [
            r
            for r, on in (
                ("shown", image.item_id == self.gallery.current_id),
                ("A", image.item_id == self.gallery.a_id),
                ("B", image.item_id == self.gallery.b_id),
            )
            if on
        ]
        badge = f"  [{' '.join(roles)}]" if roles else ""
        icon = self._icons.get(image.item_id)
        if icon is None:
            icon = self._icons[image.item_id] = icon_for(image.pixels)
        figures = f"{image.bits_per_dim:.3f} bits/dim"
        if image.p_value is not None:
            figures += f" · p {image.p_value:.2g}"
        item = QListWidgetItem(icon, f"{image.name}{badge}\n{figures}")
        item.setData(ID_ROLE, image.item_id)
        item.setToolTip(image.path)
        return item

    def _update_buttons(self) -> None:
        ids = self.selected_ids()
        for button in (self.show_button, self.a_button, self.b_button):
            button.setEnabled(len(ids) == 1)
        self.remove_button.setEnabled(bool(ids))

    def _remove_selected(self) -> None:
        if ids := self.selected_ids():
            self.remove_requested.emit(ids)

    def _show_selected(self) -> None:
        self._emit_for_selected(self.show_requested)

    def _emit_for_selected(self, signal) -> None:
        ids = self.selected_ids()
        if len(ids) >= 1:
            signal.emit(ids[0])
