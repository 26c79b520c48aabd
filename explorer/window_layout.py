"""The main window's layout: the explorer page's column widths on a first start, the
splitters, page and tab kept in the settings at close and brought back on the next start,
and the Classes tab's split between the class controls and the latent map. The window
builds the widgets; this module only sizes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QSplitter

from explorer.menus import PAGES, TABS

if TYPE_CHECKING:
    from explorer.main_window import MainWindow

TABS_MIN_WIDTH = 436
COLUMN_STRETCH = (1, 3, 2)  # model and gallery, samples, tabs: how a growing window shares


def column_widths(width: int, height: int) -> tuple[int, int, int]:
    """The explorer page's three columns (model and gallery, samples, tabs) for a window
    of ``width`` x ``height``: the side columns about a fifth and a third of the width
    (within their minimums and a laptop's maximums), the samples what is left but no
    wider than the grid is tall; what the samples leave goes to the side columns in
    proportion."""
    left = min(max(round(0.22 * width), 220), 300)
    tabs = min(max(round(0.36 * width), TABS_MIN_WIDTH), 560)
    samples = max(300, width - left - tabs - 40)
    square = max(300, height - 150)  # the grid's height: menus, bars and controls off
    if samples > square:
        extra = samples - square
        grow_left = round(extra * left / (left + tabs))
        left, samples, tabs = left + grow_left, square, tabs + extra - grow_left
    return left, samples, tabs


class WindowLayout(QObject):
    """Sizes ``window``'s splitters; ``is_set`` once they hold a first start's sizes or
    the user's own (the window's first show sets them otherwise)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.is_set = False
        window.map_panel.map_shown.connect(self.fit_classes_tab)
        window.map_panel.installEventFilter(self)
        self.fit_classes_tab(False)

    def reset(self) -> None:
        """Splitter sizes of a first start, for the window's size: on a laptop the
        samples get what the side columns' minimums leave; on a large screen the samples
        are about as wide as they are tall (a square grid, a temperature slider as long as
        the grid) and the side columns take the rest, so the level panels grow too."""
        window = self.window
        width, height = max(window.width(), 1024), max(window.height(), 640)
        left, samples, tabs = column_widths(width, height)
        window.splitter.setSizes([left, samples, tabs])
        model = window.model_panel.sizeHint().height()
        window.left_splitter.setSizes([model, max(200, window.height() - model)])
        window.training_panel.reset_layout(width)
        self.is_set = True

    def fit_classes_tab(self, map_shown: bool) -> None:
        """Until a map exists its panel is two rows of controls and its status (a line,
        or the lines of an error), and the class controls get the rest of the tab; a
        computed map gets most of it: the class controls scroll, their first box (the
        nearest classes) shown whole."""
        panel, classes_tab = self.window.map_panel, self.window.classes_tab
        if not map_shown:
            panel.setMaximumHeight(panel.sizeHint().height())
            return
        panel.setMaximumHeight(16_777_215)  # QWIDGETSIZE_MAX
        total = sum(classes_tab.sizes())
        if total > 0:
            classes_panel = self.window.classes_panel
            classes = min(classes_panel.sizeHint().height(), round(0.4 * total))
            classes = max(classes, classes_panel.first_box_height())
            classes_tab.setSizes([classes, total - classes])

    def eventFilter(self, watched, event) -> bool:
        # The map panel's status changed its height (an error over several lines, a
        # narrower column): without a map the panel's height follows it.
        panel = self.window.map_panel
        if watched is panel and event.type() == QEvent.Type.LayoutRequest and panel.map is None:
            self.fit_classes_tab(False)
        return super().eventFilter(watched, event)

    def splitters(self) -> dict[str, QSplitter]:
        window = self.window
        return {
            "explorer": window.splitter,
            "explorer_left": window.left_splitter,
            **{f"training_{k}": v for k, v in window.training_panel.splitters().items()},
        }

    def save(self) -> None:
        """Window geometry, splitters, page and tab into the settings."""
        window, settings = self.window, self.window.settings
        if window.isVisible():
            settings.geometry = window.saveGeometry()
        for name, splitter in self.splitters().items():
            settings.set_layout_state(f"splitter_{name}", splitter.saveState())
        settings.page = window.current_page
        settings.tab = window.current_tab

    def restore(self) -> None:
        """What :meth:`save` kept at the last close (nothing on a first start)."""
        window, settings = self.window, self.window.settings
        if settings.geometry is not None:  # the size and place at the last close
            window.restoreGeometry(settings.geometry)
        for name, splitter in self.splitters().items():
            state = settings.layout_state(f"splitter_{name}")
            if state is not None and splitter.restoreState(state):
                self.is_set = True
        if settings.tab in TABS:
            window.tabs.setCurrentIndex(TABS.index(settings.tab))
        if settings.page in PAGES:
            window.show_page(settings.page)
