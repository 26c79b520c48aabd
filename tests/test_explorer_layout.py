"""The window as a person meets it: every page and tab fits 1024x640, 1366x768 and
1920x1080, and the platform's conventions (View and Help menus, a layout that comes back).

The layout test looks at the real window on the bundled model, with two images dropped so
the Images tab has all of its rows, and writes a screenshot of every size, page and tab to
``$REALNVP_SCREENSHOT_DIR`` (default: the test's own temporary folder).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtGui import QRegion
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractScrollArea,
    QAbstractSlider,
    QApplication,
    QComboBox,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QScrollBar,
    QWidget,
)

from core.files.images import save_png
from explorer.main_window import TABS
from explorer.settings import DEFAULT_CHECKPOINT

SIZES = [(1024, 640), (1366, 768), (1920, 1080)]
SMALLEST = QSize(*SIZES[0])


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
    the height of its wrapped lines (a path wraps after each "/")."""
    metrics = widget.fontMetrics()
    if isinstance(widget, QScrollBar):
        return QSize(0, 0)
    if isinstance(widget, QPushButton):
        text = widget.text().replace("&&", "\0").replace("&", "").replace("\0", "&")
        return QSize(metrics.horizontalAdvance(text) + 8, metrics.height())
    if isinstance(widget, QComboBox):  # the chosen item's text beside the arrow
        return QSize(metrics.horizontalAdvance(widget.currentText()) + 28, metrics.height())
    if isinstance(widget, QLabel) and widget.wordWrap():
        text = widget.text()
        if "<" in text:
            text = html.unescape(re.sub(r"<[^>]+>", " ", text)).replace("\xa0", " ")
        words = re.split(r"\s+|(?<=/)", text.strip()) or [""]  # Qt breaks a path after "/"
        width = max(metrics.horizontalAdvance(word) for word in words)
        height = widget.heightForWidth(widget.width()) if widget.hasHeightForWidth() else 0
        return QSize(min(width, widget.maximumWidth()), height)
    return widget.minimumSizeHint()


def _describe(widget: QWidget) -> str:
    if isinstance(widget, (QLabel, QAbstractButton)):
        return widget.text()[:40]
    return ""


def check_page(window, page_root: QWidget) -> list[str]:
    roots = [page_root, window.statusBar(), window.menus.mode_bar, window.menuBar()]
    found: list[str] = []
    for root in roots:
        for widget in [root, *root.findChildren(QWidget)]:
            if not isinstance(widget, (QAbstractButton, QAbstractSlider, QLabel, QComboBox)):
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
@pytest.mark.slow
def test_every_page_and_tab_fits_the_window(
    make_window, digits, size, screenshot_dir, qtbot, dark_theme
):
    window = make_window(DEFAULT_CHECKPOINT)
    window.open_paths([str(p) for p in digits])
    window.images.gallery_panel.refresh()
    assert window.minimumSizeHint().width() <= SMALLEST.width()
    assert window.minimumSizeHint().height() <= SMALLEST.height()
    window.resize(*size)
    qtbot.waitUntil(lambda: window.size() == QSize(*size), timeout=5000)
    # The temperature slider has a pixel for each of its positions.
    slider = window.samples_panel.temperature.slider
    views = [("explorer", tab) for tab in TABS]
    views.append(("training", ""))
    found: list[str] = []
    for page, tab in views:
        window.show_page(page)
        if tab:
            window.show_explorer_tab(window.tabs.widget(TABS.index(tab)))
        QApplication.processEvents()
        QApplication.processEvents()
        name = f"{size[0]}x{size[1]}-{page}{'-' + tab if tab else ''}"
        assert window.grab().save(str(screenshot_dir / f"{name}.png"))
        root = window.explorer_page if page == "explorer" else window.training_page
        found += [f"{name}: {problem}" for problem in check_page(window, root)]
        if page == "explorer":
            assert slider.width() >= slider.maximum() - slider.minimum(), name
    assert not found, "\n".join(found)


# -- the platform's conventions ----------------------------------------------------------------


def test_pages_switch_from_the_mode_bar_the_view_menu_and_alt_keys(
    make_window, tiny_checkpoint, qtbot
):
    window = make_window(tiny_checkpoint)
    window.activateWindow()  # shortcuts go to the active window
    qtbot.waitUntil(window.isActiveWindow)
    assert window.current_page == "explorer"
    qtbot.keyClick(window, Qt.Key.Key_2, Qt.KeyboardModifier.AltModifier)
    assert window.current_page == "training"
    assert window.pages.currentWidget() is window.training_page
    assert window.training_panel.isVisible() and not window.samples_panel.isVisible()
    explore = window.menus.mode_bar.widgetForAction(window.menus.page_actions["explorer"])
    qtbot.mouseClick(explore, Qt.MouseButton.LeftButton)
    assert window.current_page == "explorer" and window.samples_panel.isVisible()
    assert window.menus.page_actions["explorer"].isChecked()
    qtbot.keyClick(window, Qt.Key.Key_2, Qt.KeyboardModifier.AltModifier)
    window.menus.tab_actions["directions"].trigger()  # View > Directions Tab: back to the explorer
    assert window.current_page == "explorer"
    assert window.tabs.currentWidget() is window.images.directions_panel
    assert window.menus.view_menu.actions()[0] is window.menus.page_actions["explorer"]


@pytest.mark.slow
def test_splitters_page_and_tab_come_back_on_the_next_start(
    make_window, tiny_checkpoint, explorer_settings
):
    window = make_window(tiny_checkpoint)
    window.splitter.setSizes([260, 330, 400])
    window.training_panel.splitters()["form"].setSizes([450, 530])
    window.show_explorer_tab(window.images.images_panel)
    window.show_page("training")
    sizes = window.splitter.sizes()
    form_sizes = window.training_panel.splitters()["form"].sizes()
    window.close()

    again = make_window(tiny_checkpoint)
    assert again.current_page == "explorer"  # a window starts plain; restoring is a step
    # The offscreen screen is 800x600: Qt would fit the saved geometry to it.
    explorer_settings.qsettings.remove("geometry")
    again.restore_layout()
    assert again.current_page == "training" and again.current_tab == "images"
    assert again.splitter.sizes() == sizes
    assert again.training_panel.splitters()["form"].sizes() == form_sizes
    again.menus.reset_layout_action.trigger()
    assert again.splitter.sizes() != sizes


def test_keyboard_shortcuts_come_from_the_actions_and_about_names_the_versions(
    make_window, tiny_checkpoint
):
    from importlib.metadata import version

    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import qVersion
    from PySide6.QtGui import QKeySequence

    window = make_window(tiny_checkpoint)
    dialog = window.show_shortcuts()
    rows = dict(dialog.rows())
    native = QKeySequence.SequenceFormat.NativeText
    assert rows["Use Selected Image as A"] == QKeySequence("Ctrl+1").toString(native)
    assert rows["Train"] == QKeySequence("Alt+2").toString(native)
    assert rows["Resample"] == "R"
    assert QKeySequence(QKeySequence.StandardKey.Undo).toString(native) in rows["Undo"]
    menu_shortcuts = [
        action
        for menu in window.menuBar().actions()
        for action in menu.menu().actions()
        if action.shortcuts() and not action.menu()
    ]
    assert len(dialog.rows()) == len(menu_shortcuts)
    dialog.filter.setText("interpolation")
    assert dialog.rows() and all("nterpolation" in text for text, _ in dialog.rows())
    dialog.close()

    window.menus.about_action.trigger()
    box = next(w for w in window.findChildren(QMessageBox) if w.isVisible())
    text = box.text()
    for expected in (version("torch"), qVersion(), pyside_version, version("realnvp-explorer")):
        assert expected in text
    box.close()


def test_a_running_run_shows_in_the_status_bar_from_the_explorer_page(
    make_window, tiny_checkpoint, tmp_path, qtbot
):
    run = tmp_path / "run"
    run.mkdir()
    events = [
        {"event": "start", "step": 0, "total_steps": 500, "parameters": 1000, "device": "cpu"},
        {"event": "step", "step": 100, "total_steps": 500, "loss": 3.1, "time": 10.0},
        {"event": "step", "step": 120, "total_steps": 500, "loss": 2.9, "time": 12.0},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    window = make_window(tiny_checkpoint)
    status = window.training_status
    assert not status.isVisible()
    assert window.training_panel.open_run(run)  # a run still going: followed
    qtbot.waitUntil(status.isVisible, timeout=5000)
    assert window.current_page == "explorer"
    qtbot.waitUntil(lambda: "120 / 500" in status.button.text(), timeout=5000)
    assert "ETA 38 s" in status.button.text()  # 380 steps to go at 10 steps/s
    assert status.bar.value() == 120 and status.bar.maximum() == 500
    qtbot.mouseClick(status.button, Qt.MouseButton.LeftButton)
    assert window.current_page == "training"
    with (run / "events.jsonl").open("a") as f:  # the run ends: no ETA any more
        f.write(json.dumps({"event": "done", "step": 130, "reason": "stopped"}) + "\n")
    qtbot.waitUntil(lambda: status.button.text() == "Training stopped", timeout=5000)
    assert not status.bar.isVisible()


@pytest.mark.slow
def test_screenshot_of_any_page_at_any_size(
    qapp, tiny_checkpoint, tmp_path, explorer_settings, one_torch_thread
):
    from explorer.app import main

    accent = np.array([0x3D, 0x7F, 0xD6])  # the checked page button

    def accent_pixels(image: np.ndarray, left: int, right: int) -> int:
        band = image[20:52, left:right].astype(int)
        return int((np.abs(band - accent).sum(axis=2) == 0).sum())

    for page, size in (("training", (1024, 640)), ("explorer", (1366, 768))):
        path = tmp_path / f"{page}.png"
        argv = ["--screenshot", str(path), "--size", f"{size[0]}x{size[1]}", "--page", page]
        assert main([*argv, "--threads", "1", str(tiny_checkpoint)]) == 0
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image.shape[:2] == (size[1], size[0])
        explore, train = accent_pixels(image, 0, 92), accent_pixels(image, 92, 180)
        assert (train > 500 and explore == 0) if page == "training" else (explore > 500)
    with pytest.raises(SystemExit):
        main(["--screenshot", str(tmp_path / "x.png"), "--size", "big"])


# -- states that once cut text mid-line ------------------------------------------------------


@pytest.fixture
def bundled_without_test_statistics(tmp_path) -> Path:
    """The bundled model as a checkpoint that carries no test-set statistics."""
    from core.files.checkpoint import load_checkpoint, save_checkpoint
    from core.stats.typicality import META_KEY

    model, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    for key in (META_KEY, "config", "has_training_state"):
        meta.pop(key, None)
    return save_checkpoint(tmp_path / "no-test-statistics.pt", model, meta)


def wholly_shown(widget: QWidget, area: QScrollArea) -> bool:
    """Whether all of ``widget`` lies inside ``area``'s viewport as it is scrolled now."""
    viewport = area.viewport()
    corners = (
        widget.mapTo(viewport, QPoint(0, 0)),
        widget.mapTo(viewport, widget.rect().bottomRight()),
    )
    return all(viewport.rect().contains(corner) for corner in corners)


def _show(window) -> None:
    QApplication.processEvents()
    QApplication.processEvents()


def _compute_map(window, folder: Path):
    """Compute map on the Classes tab from ``folder``; the map panel."""
    panel = window.map_panel
    window.show_explorer_tab(window.classes_tab)
    panel.set_data_dir(folder)
    panel.compute()
    _show(window)
    return panel


def latent_map_error(window, data) -> QWidget:
    """Compute map with a folder that holds no MNIST: the error wraps over lines."""
    panel = _compute_map(window, data["empty"])
    text = panel.status.text()
    assert text.startswith("No map") and "Download if missing" in text, text
    assert "--download" not in text  # what to click, not what to type
    return window.classes_tab, []


def classes_after_a_map(window, data) -> QWidget:
    """A computed map takes most of the tab; the nearest classes above stay whole."""
    panel = _compute_map(window, data["mnist"])
    assert panel.map is not None, panel.status.text()
    classes = window.classes_panel
    if wholly_shown(classes.nearest_box, classes):
        return window.classes_tab, []
    return window.classes_tab, [
        f"the nearest-class box is cut: {classes.viewport().height()} px shown"
    ]


def gallery_sorted_by_most_bits(window, data) -> QWidget:
    """The sort box beside Import… in a left column dragged to its narrowest."""
    sizes = window.splitter.sizes()
    window.splitter.setSizes([0, sizes[1] + sizes[0], sizes[2]])
    sort = window.images.gallery_panel.sort
    sort.setCurrentIndex(sort.findData("bpd_desc"))
    _show(window)
    return window.images.gallery_panel, []


def remote_connection_lost(window, data) -> QWidget:
    status = window.training_status
    status.set_host("gpubox")
    status.progressed(1200, 5000, "ETA 3 min")
    status.set_connection("connection lost, retrying in 5 s")
    _show(window)
    text = status.button.text()
    whole = text.endswith("connection lost, retrying in 5 s")
    return window.statusBar(), [] if whole else [f"the status bar says {text!r}"]


def draw_verdict_without_test_statistics(window, data) -> QWidget:
    assert window.open_checkpoint(data["no_statistics"]), window.last_error
    window.show_explorer_tab(window.draw_panel)
    panel = window.draw_panel
    panel.request_answer()
    _show(window)
    assert "no test-set statistics" in panel.verdict_label.text()
    return panel, []


CLIPPED_STATES = (
    latent_map_error,
    classes_after_a_map,
    gallery_sorted_by_most_bits,
    remote_connection_lost,
    draw_verdict_without_test_statistics,  # last: it opens another model
)
CLIPPED_SIZES = SIZES[:2]


@pytest.mark.parametrize("size", CLIPPED_SIZES, ids=[f"{w}x{h}" for w, h in CLIPPED_SIZES])
@pytest.mark.slow
def test_states_that_once_cut_text_show_it_whole(
    make_window, size, screenshot_dir, qtbot, dark_theme, small_mnist, tmp_path,
    bundled_without_test_statistics,
):  # fmt: skip
    """The latent map's error (its panel was capped at its one-line height), the nearest
    classes above a computed map (about 60 px, the second row cut), the gallery's sort box
    ("Most bits/din"), a lost remote connection in the status bar ("… · conn…") and the Draw
    verdict of a checkpoint without test statistics (fixed at 4 lines)."""
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    data = {"empty": empty, "mnist": small_mnist, "no_statistics": bundled_without_test_statistics}
    window = make_window(DEFAULT_CHECKPOINT)
    window.resize(*size)
    qtbot.waitUntil(lambda: window.size() == QSize(*size), timeout=5000)
    found: list[str] = []
    for state in CLIPPED_STATES:
        root, problems = state(window, data)
        if window.size() != QSize(*size):
            problems.append(f"the window grew to {window.size().toTuple()}")
        name = f"clip_{state.__name__}_{size[0]}x{size[1]}"
        assert window.grab().save(str(screenshot_dir / f"{name}.png"))
        problems += check_page(window, root)
        found += [f"{name}: {problem}" for problem in problems]
    assert not found, "\n".join(found)
