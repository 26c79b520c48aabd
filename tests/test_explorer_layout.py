"""The window as a person meets it: every page and tab fits 1024x640, 1366x768 and
1920x1080, and the platform's conventions (View and Help menus, a layout that comes back).

The layout test looks at the real window on the bundled model, with two images dropped so
the Images tab has all of its rows, and writes a screenshot of every size, page and tab to
``$REALNVP_SCREENSHOT_DIR`` (default: the test's own temporary folder).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QRect, QSize
from PySide6.QtGui import QRegion
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractScrollArea,
    QAbstractSlider,
    QApplication,
    QLabel,
    QPushButton,
    QScrollArea,
    QScrollBar,
    QWidget,
)

from core.images import save_png
from explorer.settings import DEFAULT_CHECKPOINT

SIZES = [(1024, 640), (1366, 768), (1920, 1080)]
SMALLEST = QSize(*SIZES[0])


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory) -> Path:
    folder = os.environ.get("REALNVP_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("layout-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def digits(tmp_path) -> list[Path]:
    """Two 28x28 strokes on black, MNIST-like enough for the bundled model."""
    paths = []
    for i, (top, left) in enumerate(((5, 12), (8, 8))):
        image = np.zeros((28, 28), np.uint8)
        image[top : top + 17, left : left + 4] = 230
        image[top : top + 3, left : left + 10] = 230
        paths.append(save_png(image, tmp_path / f"stroke{i}.png"))
    return paths


def in_scroll_viewport(widget: QWidget) -> QWidget | None:
    """The viewport of the scroll area ``widget`` lives in (content may scroll), if any."""
    parent = widget.parentWidget()
    while parent is not None:
        area = parent.parentWidget()
        if isinstance(area, QAbstractScrollArea) and area.viewport() is parent:
            return parent
        parent = area
    return None


def problems_of(widget: QWidget, window: QWidget) -> list[str]:
    """Why ``widget`` is not fully usable where it is; empty when it is."""
    name = f"{type(widget).__name__} {widget.objectName() or ''}{_describe(widget)!r}"
    rect = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
    found = []
    viewport = in_scroll_viewport(widget)
    if viewport is not None:
        # Inside a scroll area it may be scrolled out of view vertically, never sideways.
        left = widget.mapTo(viewport, QPoint(0, 0)).x()
        if left < 0 or left + widget.width() > viewport.width():
            found.append(f"{name} is cut off sideways in its scroll area")
        outer = QRect(viewport.mapTo(window, QPoint(0, 0)), viewport.size())
        if not window.rect().contains(outer):
            found.append(f"{name}'s scroll area {outer} is not inside the window")
    else:
        if not window.rect().contains(rect):
            found.append(f"{name} at {rect} is not inside the window {window.rect()}")
        if widget.visibleRegion() != QRegion(widget.rect()):
            found.append(f"{name} is clipped: {widget.visibleRegion().boundingRect()}")
    needed = needed_size(widget)
    if widget.width() < needed.width() or widget.height() < needed.height():
        found.append(f"{name}: {widget.size().toTuple()} is below what it needs {needed.toTuple()}")
    return found


def needed_size(widget: QWidget) -> QSize:
    """The size below which a control's text or handle is cut. A push button needs its
    text, not the 80 px the style would like; a wrapped label needs its longest word and
    the height of its wrapped lines."""
    metrics = widget.fontMetrics()
    if isinstance(widget, QScrollBar):
        return QSize(0, 0)
    if isinstance(widget, QPushButton):
        text = widget.text().replace("&&", "\0").replace("&", "").replace("\0", "&")
        return QSize(metrics.horizontalAdvance(text) + 8, metrics.height())
    if isinstance(widget, QLabel) and widget.wordWrap():
        text = widget.text()
        if "<" in text:
            text = html.unescape(re.sub(r"<[^>]+>", " ", text)).replace("\xa0", " ")
        words = text.split() or [""]
        width = max(metrics.horizontalAdvance(word) for word in words)
        height = widget.heightForWidth(widget.width()) if widget.hasHeightForWidth() else 0
        return QSize(min(width, widget.maximumWidth()), height)
    return widget.minimumSizeHint()


def _describe(widget: QWidget) -> str:
    if isinstance(widget, (QLabel, QAbstractButton)):
        return widget.text()[:40]
    return ""


def check_page(window, page_root: QWidget) -> list[str]:
    roots = [page_root, window.statusBar(), window.mode_bar, window.menuBar()]
    found: list[str] = []
    for root in roots:
        for widget in [root, *root.findChildren(QWidget)]:
            if not isinstance(widget, (QAbstractButton, QAbstractSlider, QLabel)):
                continue
            if not widget.isVisible() or widget.width() == 0:
                continue
            found += problems_of(widget, window)
        for area in root.findChildren(QScrollArea):
            if not area.isVisible():
                continue
            if area.horizontalScrollBar().isVisible():
                found.append(f"{type(area).__name__} needs a horizontal scroll bar")
            content = area.widget()
            if content is not None and content.width() > area.viewport().width():
                found.append(
                    f"{type(area).__name__}'s content ({content.width()} px) is wider than "
                    f"its view ({area.viewport().width()} px)"
                )
    return found


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_every_page_and_tab_fits_the_window(make_window, digits, size, screenshot_dir, qtbot):
    window = make_window(DEFAULT_CHECKPOINT)
    window.open_paths([str(p) for p in digits])
    window.images.gallery_panel.refresh()
    assert window.minimumSizeHint().width() <= SMALLEST.width()
    assert window.minimumSizeHint().height() <= SMALLEST.height()
    window.resize(*size)
    qtbot.waitUntil(lambda: window.size() == QSize(*size), timeout=5000)
    # The temperature slider has a pixel for each of its positions.
    slider = window.samples_panel.temperature.slider
    views = [("explorer", tab) for tab in ("levels", "images", "directions")]
    views.append(("training", ""))
    found: list[str] = []
    for page, tab in views:
        window.show_page(page)
        if tab:
            window.show_explorer_tab(
                window.tabs.widget(("levels", "images", "directions").index(tab))
            )
        QApplication.processEvents()
        QApplication.processEvents()
        name = f"{size[0]}x{size[1]}-{page}{'-' + tab if tab else ''}"
        assert window.grab().save(str(screenshot_dir / f"{name}.png"))
        root = window.explorer_page if page == "explorer" else window.training_page
        found += [f"{name}: {problem}" for problem in check_page(window, root)]
        if page == "explorer":
            assert slider.width() >= slider.maximum() - slider.minimum(), name
    assert not found, "\n".join(found)
