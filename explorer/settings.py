"""Persistent settings (recent files, last folder, window layout) and where the bundled
model lives.

Settings are always an INI file in the user scope: the same format on every platform, and
tests redirect it to a temporary folder with ``QSettings.setPath``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

from core.files.resources import bundled_model_path

ORGANIZATION = "realnvp"
APPLICATION = "explorer"
# Absolute, and found the same way as the CLI's ``bundled``: from any working directory,
# in an installed package as in a source checkout.
DEFAULT_CHECKPOINT = bundled_model_path()
MAX_RECENT = 8
MAX_RECENT_RUNS = 12
HOST_KEYS = ("run_on", "host", "python", "runs_dir", "config_file")


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

    @property
    def error_log(self) -> Path:
        """The file that keeps tracebacks of unexpected failures: beside the settings (a
        test's or a screenshot's settings keep their own)."""
        return Path(self.qsettings.fileName()).parent / "explorer-errors.log"

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

    # -- training runs, here and on ssh hosts ---------------------------------------------------
    # Stored as JSON text: an INI file keeps lists of maps badly, and JSON reads the same on
    # every platform.

    def _json(self, key: str, default: Any) -> Any:
        value = self.qsettings.value(key, "")
        try:
            data = json.loads(str(value)) if value else default
        except ValueError:
            return default
        return data if isinstance(data, type(default)) else default

    @property
    def remote_host(self) -> dict[str, str]:
        """The training form's last "Run on" choice: ``run_on`` (``local`` or ``ssh``),
        ``host``, ``python``, ``runs_dir`` and ``config_file`` (the ssh ``-F`` file)."""
        data = self._json("training/remote_host", {})
        return {k: str(data[k]) for k in HOST_KEYS if isinstance(data.get(k), str)}

    @remote_host.setter
    def remote_host(self, values: dict[str, str]) -> None:
        data = {k: str(values[k]) for k in HOST_KEYS if k in values}
        self.qsettings.setValue("training/remote_host", json.dumps(data))

    def recent_runs(self) -> list[dict[str, Any]]:
        """Runs the training page started or followed, newest first: ``out`` and ``host``
        (``None``: this computer) with what re-attaching needs (``python``, ``runs_dir``,
        ``config_file``) and the last state seen (``state``, ``step``, ``max_steps``)."""
        runs = self._json("training/recent_runs", [])
        return [r for r in runs if isinstance(r, dict) and isinstance(r.get("out"), str)]

    def remember_run(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        """Put ``run`` first (merged with what was known of the same run)."""
        key = (run.get("host"), run["out"])
        old = next((r for r in self.recent_runs() if (r.get("host"), r["out"]) == key), {})
        rest = [r for r in self.recent_runs() if (r.get("host"), r["out"]) != key]
        runs = [{**old, **run}, *rest][:MAX_RECENT_RUNS]
        self.qsettings.setValue("training/recent_runs", json.dumps(runs))
        return runs

    def update_run(self, host: str | None, out: str, **fields: Any) -> None:
        """New facts (``state``, ``step``) about a remembered run, keeping its place."""
        runs = self.recent_runs()
        for run in runs:
            if (run.get("host"), run["out"]) == (host, out):
                run.update(fields)
        self.qsettings.setValue("training/recent_runs", json.dumps(runs))

    def forget_runs(self) -> None:
        self.qsettings.setValue("training/recent_runs", "[]")

    def checkpoint_origin(self, path: str | os.PathLike) -> str | None:
        """Where a fetched checkpoint came from (``HOST:/path/on/the/host``), or ``None``."""
        origin = self._json("training/origins", {}).get(str(Path(path).resolve()))
        return origin if isinstance(origin, str) else None

    def set_checkpoint_origin(self, path: str | os.PathLike, origin: str) -> None:
        origins = self._json("training/origins", {})
        origins[str(Path(path).resolve())] = origin
        # Only the newest few: the cache folder is the user's to clear.
        keep = dict(list(origins.items())[-4 * MAX_RECENT :])
        self.qsettings.setValue("training/origins", json.dumps(keep))

    def sync(self) -> None:
        self.qsettings.sync()
