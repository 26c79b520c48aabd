"""The system libraries Qt's X11 platform plugin needs, checked before Qt starts.

On Linux under X11 Qt loads ``platforms/libqxcb.so``, which links a dozen ``libxcb-*``
libraries that the PySide6 wheel does not ship. When one is missing Qt aborts the process
with "Could not load the Qt platform plugin "xcb"" and no name of the missing library
(``QT_DEBUG_PLUGINS=1`` shows it, deep in a long log). Before the ``QApplication`` is made
the app asks the dynamic linker (``ldd``, or a trial ``dlopen`` where there is no ``ldd``)
which of the plugin's libraries it cannot find and says so in one sentence, with the
Debian/Ubuntu packages that hold them. Without any display to connect to (an SSH session,
a container) Qt aborts too, with a message about ``xcb-cursor0`` that misleads:
:func:`display_problem` says instead that there is no display and how to work without one.
Nothing here imports Qt: the checks run before it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)
CANNOT_OPEN = re.compile(r"(\S+\.so[.\d]*): cannot open shared object file")
SONAME = re.compile(r"^(lib[\w+.-]*?)\.so\.(\d+)")


def qt_plugin(name: str = "xcb") -> Path | None:
    """The Qt platform plugin ``libq<name>.so`` inside the installed PySide6 (found without
    importing it), or ``None``."""
    spec = importlib.util.find_spec("PySide6")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "Qt" / "plugins" / "platforms" / f"libq{name}.so"
        if path.is_file():
            return path
    return None


def _ldd(path: Path) -> str:
    result = subprocess.run(
        ["ldd", str(path)], capture_output=True, text=True, timeout=20, check=False
    )
    return result.stdout


def missing_libraries(path: Path, ldd: Callable[[Path], str] | None = None) -> list[str]:
    """The shared libraries ``path`` needs that the dynamic linker cannot find, in the
    order it names them, each once. ``ldd`` lists them all; without it a trial load names
    the first one."""
    if ldd is None and shutil.which("ldd"):
        ldd = _ldd
    if ldd is not None:
        try:
            return list(dict.fromkeys(NOT_FOUND.findall(ldd(path))))
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return CANNOT_OPEN.findall(str(exc))[:1]
    return []


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package holding a library: ``libxcb-icccm.so.4`` is in
    ``libxcb-icccm4``, ``libxkbcommon-x11.so.0`` in ``libxkbcommon-x11-0`` (a name that
    ends in a digit takes a hyphen before the version)."""
    match = SONAME.match(soname)
    if match is None:
        return soname
    name, version = match.groups()
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def uses_xcb(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> bool:
    """Whether Qt will pick its X11 plugin: asked for by ``QT_QPA_PLATFORM``, or, with
    that unset, on Linux with an X display and no Wayland one."""
    chosen = _platforms(environ)
    if chosen:
        return chosen[0] == "xcb"
    return (
        platform.startswith("linux")
        and bool(environ.get("DISPLAY"))
        and not environ.get("WAYLAND_DISPLAY")
    )


def _platforms(environ: Mapping[str, str]) -> list[str]:
    """The platform plugins ``QT_QPA_PLATFORM`` names, in the order Qt tries them
    (``"wayland;xcb"`` is a fallback list, ``"xcb:option"`` carries options)."""
    chosen = environ.get("QT_QPA_PLATFORM", "")
    return [name.split(":")[0].strip() for name in chosen.split(";") if name.strip()]


def display_problem(
    environ: Mapping[str, str] = os.environ, platform: str = sys.platform
) -> str | None:
    """One sentence saying there is no display and how to run without one, or ``None``
    when Qt has a display (or a platform that needs none, such as ``offscreen``).
    On Linux Qt's X11 plugin needs ``DISPLAY`` and its Wayland plugin ``WAYLAND_DISPLAY``;
    macOS and Windows always have their own."""
    if not platform.startswith("linux"):
        return None
    needs = {"xcb": "DISPLAY", "wayland": "WAYLAND_DISPLAY"}
    chosen = _platforms(environ) or ["wayland", "xcb"]  # unset: whichever display is there
    for name in chosen:
        variable = needs.get("wayland" if name.startswith("wayland") else name)
        if variable is None or environ.get(variable):
            return None
    return (
        "there is no display to show the window on (neither DISPLAY nor WAYLAND_DISPLAY is "
        "set): run it in a desktop session, write a picture of the window with "
        "`realnvp-explorer --screenshot window.png`, or run it without a window with "
        "QT_QPA_PLATFORM=offscreen"
    )


def xcb_problem(
    environ: Mapping[str, str] = os.environ,
    platform: str = sys.platform,
    missing: Callable[[Path], list[str]] | None = None,
) -> str | None:
    """One sentence naming the libraries the X11 plugin lacks and how to install them,
    or ``None`` when Qt will not use X11 or nothing is missing."""
    if not uses_xcb(environ, platform):
        return None
    plugin = qt_plugin("xcb")
    if plugin is None:
        return None
    libraries = (missing or missing_libraries)(plugin)
    if not libraries:
        return None
    packages = " ".join(dict.fromkeys(debian_package(lib) for lib in libraries))
    return (
        f"Qt's X11 plugin needs system libraries that are not installed: "
        f"{', '.join(libraries)}. On Debian or Ubuntu: sudo apt install {packages} "
        "(see docs/explorer.md)"
    )
