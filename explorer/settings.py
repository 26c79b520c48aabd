"""Persistent settings (recent files, last folder, window layout) and where the bundled
model lives.

Settings are always an INI file in the user scope: the same format on every platform, and
tests redirect it to a temporary folder with ``QSettings.setPath``.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from core.files.resources import bundled_model_path

ORGANIZATION = "realnvp"
APPLICATION = "explorer"
# Absolute, and found the same way as the CLI's ``bundled``: from any working directory,
# in an installed package as in a source checkout.
DEFAULT_CHECKPOINT = bundled_model_path()
MAX_RECENT = 8


class ExplorerSettings:
    """Typed access to the few values the explorer keeps between runs."""

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self.qsettings = qsettings or QSettings(
            QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION
        )

    @classmethod
    def in_file(cls, path: str | os.PathLike) -> ExplorerSettings:
        """Settings kept in the INI file ``path`` instead of the user's (a screenshot's
        throwaway settings)."""
        return cls(QSettings(str(path), QSettings.Format.IniFormat))

    def recent_files(self) -> list[str]:
        value = self.qsettings.value("recent_files", [])
        if isinstance(value, str):  # QSettings gives back a lone string for a 1-item list
            value = [value]
        return [str(v) for v in value or [] if v]

    def add_recent_file(self, path: str | os.PathLike) -> list[str]:
        path = str(Path(path).resolve())
        files = [path, *(f for f in self.recent_files() if f != path)][:MAX_RECENT]
        self.qsettings.setValue("recent_files", files)
        self.last_dir = str(Path(path).parent)
        return files

    def remove_recent_file(self, path: str) -> None:
        self.qsettings.setValue("recent_files", [f for f in self.recent_files() if f != path])

    def clear_recent_files(self) -> None:
        self.qsettings.setValue("recent_files", [])

    @property
    def last_dir(self) -> str:
        value = self.qsettings.value("last_dir", "")
        return str(value) if value and Path(str(value)).is_dir() else str(Path.home())

    @last_dir.setter
    def last_dir(self, path: str) -> None:
        self.qsettings.setValue("last_dir", str(path))

    @property
    def geometry(self) -> QByteArray | None:
        value = self.qsettings.value("geometry")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    @geometry.setter
    def geometry(self, value: QByteArray) -> None:
        self.qsettings.setValue("geometry", value)

    def layout_state(self, name: str) -> QByteArray | None:
        """A splitter's saved state (``QSplitter.saveState``), or ``None``."""
        value = self.qsettings.value(f"layout/{name}")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def set_layout_state(self, name: str, value: QByteArray) -> None:
        self.qsettings.setValue(f"layout/{name}", value)

    @property
    def page(self) -> str:
        return str(self.qsettings.value("layout/page", "") or "")

    @page.setter
    def page(self, name: str) -> None:
        self.qsettings.setValue("layout/page", name)

    @property
    def tab(self) -> str:
        return str(self.qsettings.value("layout/tab", "") or "")

    @tab.setter
    def tab(self, name: str) -> None:
        self.qsettings.setValue("layout/tab", name)

    def sync(self) -> None:
        self.qsettings.sync()
