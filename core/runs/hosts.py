"""What is remembered about each ssh host: its Python, its runs folder and the ssh config
file that reaches it (and, for a Slurm cluster's login node, the job's partition, GPUs,
nodes, time limit and account), typed once (``realnvp remote HOST ... --python PY`` or the training
page) and read by every later command, in ``hosts.json`` in the user's config folder.

The folder is ``$REALNVP_CONFIG_DIR`` when set (tests point it at their own folder), else
the platform's: ``$XDG_CONFIG_HOME/realnvp`` (``~/.config/realnvp``), ``~/Library/Application
Support/realnvp`` or ``%APPDATA%\\realnvp``. A file that is missing or unreadable remembers
nothing; it is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from core.files.atomic import atomic_write

CONFIG_DIR_VAR = "REALNVP_CONFIG_DIR"
HOSTS_FILE = "hosts.json"
FIELDS = ("python", "runs_dir", "ssh_config")
# A Slurm job's request on the page, per login node (explorer/training/slurm_fields.py).
SLURM_FIELDS = ("slurm_partition", "slurm_gpus", "slurm_nodes", "slurm_time", "slurm_account")
FIELDS += SLURM_FIELDS


# The user's folders by platform: (Windows variable, its default under home, macOS folder
# under home, XDG variable, its default under home).
_USER_FOLDERS = {
    "config": ("APPDATA", "AppData/Roaming", "Library/Application Support", "XDG_CONFIG_HOME",
               ".config"),
    "cache": ("LOCALAPPDATA", "AppData/Local", "Library/Caches", "XDG_CACHE_HOME", ".cache"),
}  # fmt: skip


def user_folder(kind: str) -> Path:
    """This program's ``config`` or ``cache`` folder in the platform's place for it:
    ``$XDG_CONFIG_HOME/realnvp`` (``~/.config``), ``$XDG_CACHE_HOME/realnvp`` (``~/.cache``),
    their Windows and macOS counterparts."""
    win_var, win_default, mac, xdg_var, xdg_default = _USER_FOLDERS[kind]
    if sys.platform == "win32":
        base = Path(os.environ.get(win_var) or Path.home() / win_default)
    elif sys.platform == "darwin":
        base = Path.home() / mac
    else:
        base = Path(os.environ.get(xdg_var) or Path.home() / xdg_default)
    return base / "realnvp"


def config_dir() -> Path:
    if os.environ.get(CONFIG_DIR_VAR):
        return Path(os.environ[CONFIG_DIR_VAR]).expanduser()
    return user_folder("config")


def hosts_file() -> Path:
    return config_dir() / HOSTS_FILE


def _read() -> dict[str, dict[str, str]]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(hosts_file().read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return {str(k): v for k, v in data.items() if isinstance(v, dict)}
    return {}


def remembered(host: str) -> dict[str, str]:
    """``python``, ``runs_dir``, ``ssh_config`` and the ``slurm_*`` fields remembered for
    ``host`` (those known)."""
    entry = _read().get(host.strip(), {})
    return {
        k: v
        for k, v in entry.items()
        if k in FIELDS and isinstance(v, str) and (v or k in SLURM_FIELDS)
    }


def remember(host: str, **fields: Any) -> None:
    """Remember the given fields (``None`` or empty: leave as they were; a ``slurm_*``
    field is remembered empty too: the cluster's default) for ``host``. A config folder
    that cannot be written remembers nothing, silently: it is a convenience."""
    given = {
        k: str(v)
        for k, v in fields.items()
        if k in FIELDS and (v or (k in SLURM_FIELDS and v is not None))
    }
    host = host.strip()
    if not host or not given:
        return
    hosts = _read()
    if all(hosts.get(host, {}).get(k) == v for k, v in given.items()):
        return
    hosts[host] = {**hosts.get(host, {}), **given}
    with contextlib.suppress(OSError):
        hosts_file().parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(hosts_file()) as f:
            f.write((json.dumps(hosts, indent=1, sort_keys=True) + "\n").encode())
