"""The Help menu's windows: About (with the versions a bug report needs) and Keyboard
Shortcuts, a list built from the window's own actions so it cannot go stale; and
:class:`FileDialogs`, the file choosers every page shares, which start in the folder the user
chose last."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QLineEdit,
    QMenu,
    QMenuBar,
    QMessageBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from explorer.settings import ExplorerSettings

APP_NAME = "Real NVP Explorer"


def package_version(name: str) -> str:
    """An installed distribution's version, read from its metadata: torch's is found
    without importing torch (the GUI process never does)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {
        APP_NAME: package_version("realnvp-explorer"),
        "Python": platform.python_version(),
        "Qt": qVersion(),
        "PySide6": pyside_version,
        "PyTorch": package_version("torch"),
        "NumPy": package_version("numpy"),
        "Platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
    }


def about_text() -> str:
    rows = "".join(
        f"<tr><td style='padding-right:12px'>{name}</td><td>{value}</td></tr>"
        for name, value in versions().items()
    )
    return (
        f"<h3>{APP_NAME}</h3>"
        "<p>Samples, latents and training of a Real NVP normalizing flow "
        "(Dinh, Sohl-Dickstein and Bengio, 2017).</p>"
        f"<table>{rows}</table>"
    )


def show_about(parent: QWidget) -> QMessageBox:
    box = QMessageBox(parent)
    box.setWindowTitle(f"About {APP_NAME}")
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(about_text())
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.open()
    return box


def plain(text: str) -> str:
    """A menu text without its mnemonic marks and ellipsis."""
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip("…").strip()


def shortcut_rows(menu_bar: QMenuBar) -> list[tuple[str, str, str]]:
    """``(menu, action, keys)`` for every action with a shortcut, in menu order; the keys
    in the platform's own notation (⌘ on macOS)."""
    rows: list[tuple[str, str, str]] = []

    def walk(menu: QMenu, path: str) -> None:
        for action in menu.actions():
            if action.menu() is not None:
                walk(action.menu(), f"{path} › {plain(action.text())}")
            elif not action.isSeparator() and action.shortcuts():
                rows.append((path, plain(action.text()), action_keys(action)))

    for action in menu_bar.actions():
        if action.menu() is not None:
            walk(action.menu(), plain(action.text()))
    return rows


class ShortcutsDialog(QDialog):
    """Every shortcut of the window's menus, grouped by menu, with a filter."""

    def __init__(self, menu_bar: QMenuBar, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard Shortcuts")
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter")
        self.filter.setClearButtonEnabled(True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Action", "Keys"])
        self.tree.setRootIsDecorated(False)
        self.tree.setAlternatingRowColors(True)
        groups: dict[str, QTreeWidgetItem] = {}
        for menu, text, keys in shortcut_rows(menu_bar):
            group = groups.get(menu)
            if group is None:
                group = groups[menu] = QTreeWidgetItem(self.tree, [menu])
                font = group.font(0)
                font.setBold(True)
                group.setFont(0, font)
                group.setFirstColumnSpanned(True)
            QTreeWidgetItem(group, [text, keys])
        self.tree.expandAll()
        self.tree.resizeColumnToContents(0)
        self.tree.resizeColumnToContents(1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter)
        layout.addWidget(self.tree, 1)
        layout.addWidget(buttons)
        self.filter.textChanged.connect(self._filter)
        self.resize(max(480, self.tree.columnWidth(0) + self.tree.columnWidth(1) + 60), 600)

    def rows(self) -> list[tuple[str, str]]:
        """The visible ``(action, keys)`` rows."""
        out = []
        for i in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(i)
            for j in range(group.childCount()):
                item = group.child(j)
                if not item.isHidden():
                    out.append((item.text(0), item.text(1)))
        return out

    def _filter(self, text: str) -> None:
        needle = text.strip().lower()
        for i in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(i)
            shown = 0
            for j in range(group.childCount()):
                item = group.child(j)
                hit = not needle or needle in f"{item.text(0)} {item.text(1)}".lower()
                item.setHidden(not hit)
                shown += hit
            group.setHidden(shown == 0)


def action_keys(action: QAction) -> str:
    return ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in action.shortcuts())


class FileDialogs:
    """The open and save choosers of one window: parented to it (so they are modal to it)
    and starting in the settings' last folder, which each accepted choice updates. Panels
    get this instead of the window, so they can ask for a path without knowing who holds
    them."""

    def __init__(self, parent: QWidget, settings: ExplorerSettings) -> None:
        self.parent = parent
        self.settings = settings

    def open_files(self, title: str, filter_: str) -> list[str]:
        paths, _ = QFileDialog.getOpenFileNames(self.parent, title, self.settings.last_dir, filter_)
        if paths:
            self.settings.last_dir = str(Path(paths[0]).parent)
        return paths

    def open_file(self, title: str, filter_: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self.parent, title, self.settings.last_dir, filter_)
        if not path:
            return None
        self.settings.last_dir = str(Path(path).parent)
        return path

    def folder(self, title: str) -> str | None:
        folder = QFileDialog.getExistingDirectory(self.parent, title, self.settings.last_dir)
        if not folder:
            return None
        self.settings.last_dir = folder
        return folder

    def save_path(self, title: str, name: str, filter_: str, suffix: str) -> str | None:
        """A path to save to, ``suffix`` added when the user typed none (``None``: cancelled)."""
        path, _ = QFileDialog.getSaveFileName(
            self.parent, title, str(Path(self.settings.last_dir) / name), filter_
        )
        if not path:
            return None
        if not path.lower().endswith(suffix):
            path += suffix
        self.settings.last_dir = str(Path(path).parent)
        return path
