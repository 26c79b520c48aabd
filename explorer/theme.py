"""The look of the app (a dark palette) and the quieting of the offscreen platform's
warnings, shared by the app, its benchmarks and the previews of single widgets."""

from __future__ import annotations

import sys

_quiet_installed = False

ACCENT = "#3d7fd6"
# A checkable tool button that is on (a Draw tool, an Images level source, a page): the
# accent fill. Fusion's own checked look is a shade darker than the button, (55,59,64)
# against (69,73,79) in the dark palette, too close to see which tool is active.
CHECKED_TOOL_STYLE = (
    f"QToolButton:checked {{ background: {ACCENT}; color: white; border-radius: 3px; }}"
)


def apply_dark_theme(app) -> None:
    """Fusion with a dark neutral palette: the same look on every platform, and images
    (mostly dark MNIST backgrounds) read well against it."""
    from PySide6.QtGui import QColor, QPalette

    app.setStyle("Fusion")
    palette = QPalette()
    roles = {
        QPalette.ColorRole.Window: "#23262a",
        QPalette.ColorRole.WindowText: "#e3e5e8",
        QPalette.ColorRole.Base: "#1b1d20",
        QPalette.ColorRole.AlternateBase: "#2a2d31",
        QPalette.ColorRole.ToolTipBase: "#2f3337",
        QPalette.ColorRole.ToolTipText: "#e3e5e8",
        QPalette.ColorRole.Text: "#e3e5e8",
        QPalette.ColorRole.Button: "#30343a",
        QPalette.ColorRole.ButtonText: "#e3e5e8",
        QPalette.ColorRole.BrightText: "#ff6b6b",
        QPalette.ColorRole.Highlight: ACCENT,
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: "#6fb1ff",
        QPalette.ColorRole.PlaceholderText: "#8b9097",
        QPalette.ColorRole.Mid: "#3a3e44",
        QPalette.ColorRole.Dark: "#151719",
    }
    for role, color in roles.items():
        palette.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6c7177"))
    app.setPalette(palette)


def quiet_offscreen_messages() -> None:
    """Drop the one warning the offscreen platform prints for every window shown
    ("does not support propagateSizeHints"); every other Qt message passes through."""
    global _quiet_installed
    if _quiet_installed:
        return
    _quiet_installed = True
    from PySide6.QtCore import qInstallMessageHandler

    previous = None

    def handler(mode, context, message: str) -> None:
        if "propagateSizeHints" in message:
            return
        if previous is not None:
            previous(mode, context, message)
        else:
            print(message, file=sys.stderr)

    previous = qInstallMessageHandler(handler)
