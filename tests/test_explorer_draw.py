"""The Draw tab with real mouse events: live answers, undo, completions, the gallery."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt

from explorer.state.drawing import BRUSH, ERASER, RECTANGLE


def _point(panel, x: float, y: float) -> QPoint:
    """The widget point of canvas position ``(x, y)`` (model pixels)."""
    rect = panel.view.image_rect()
    scale = rect.width() / panel.canvas.size
    return QPoint(round(rect.left() + x * scale), round(rect.top() + y * scale))


def draw(qtbot, panel, points: list[tuple[float, float]]) -> None:
    """Press, move and release the left button on the canvas, as a hand does."""
    view = panel.view
    left = Qt.MouseButton.LeftButton
    qtbot.mousePress(view, left, pos=_point(panel, *points[0]))
    for p in points[1:]:
        qtbot.mouseMove(view, _point(panel, *p))
    qtbot.mouseRelease(view, left, pos=_point(panel, *points[-1]))


@pytest.fixture
def draw_window(make_window, tiny_checkpoint):
    def make(threaded: bool = False):
        window = make_window(tiny_checkpoint, threaded=threaded)
        window.show_explorer_tab(window.draw_panel)
        return window, window.draw_panel

    return make


def test_drawing_with_the_mouse_paints_and_each_stroke_is_answered(draw_window, qtbot):
    window, panel = draw_window()
    answers: list[float] = []
    for points in ([(1.0, 1.0), (6.0, 6.0)], [(6.5, 1.5), (1.5, 6.5)], [(4.0, 0.5), (4.0, 7.5)]):
        draw(qtbot, panel, points)
        answer = panel.last_answer
        assert answer is not None and answer.edit == panel.canvas.edits
        assert np.array_equal(answer.pixels, panel.canvas.uint8())
        expected = window.engine.encode(panel.canvas.uint8()).bits_per_dim
        assert answer.encoded.bits_per_dim == pytest.approx(expected)
        answers.append(answer.encoded.bits_per_dim)
    assert panel.canvas.uint8().any()
    assert len(set(answers)) == 3  # the figure follows the strokes
    assert list(panel.trace.arrays()[1][-3:]) == answers
    assert "bits/dim" in panel.verdict_label.text()


def test_undo_restores_the_exact_canvas_and_its_answer(draw_window, qtbot):
    window, panel = draw_window()
    draw(qtbot, panel, [(1.0, 2.0), (7.0, 2.0)])
    before, bits_before = panel.canvas.pixels.copy(), panel.last_answer.encoded.bits_per_dim
    panel.size_spin.setValue(4.0)
    draw(qtbot, panel, [(2.0, 7.0), (7.0, 4.0)])
    after = panel.canvas.pixels.copy()
    assert not np.array_equal(before, after)
    qtbot.mouseClick(panel.undo_button, Qt.MouseButton.LeftButton)
    assert np.array_equal(panel.canvas.pixels, before)
    assert panel.last_answer.encoded.bits_per_dim == pytest.approx(bits_before)
    window.menus.undo_action.trigger()  # Ctrl+Z acts on the drawing while the tab is shown
    assert not panel.canvas.pixels.any()
    window.menus.redo_action.trigger()
    qtbot.mouseClick(panel.redo_button, Qt.MouseButton.LeftButton)
    assert np.array_equal(panel.canvas.pixels, after)


@pytest.mark.slow
def test_answers_and_completions_run_off_the_gui_thread(draw_window, qtbot, monkeypatch):
    from explorer.engine import drawing

    threads: list[int] = []
    real = drawing.completion_steps

    def recorded(*args, **kwargs):
        threads.append(threading.get_ident())
        yield from real(*args, **kwargs)

    monkeypatch.setattr(drawing, "completion_steps", recorded)
    _window, panel = draw_window(threaded=True)
    gui = threading.get_ident()
    with qtbot.waitSignal(panel.answer_shown, timeout=30_000):
        draw(qtbot, panel, [(1.0, 4.0), (7.0, 4.0)])
    qtbot.waitUntil(lambda: panel.last_answer.edit == panel.canvas.edits, timeout=30_000)
    assert panel.last_answer.thread_id != gui
    panel.set_tool(RECTANGLE)
    draw(qtbot, panel, [(0.0, 4.0), (8.0, 8.0)])
    with qtbot.waitSignal(panel.completions_shown, timeout=60_000):
        qtbot.mouseClick(panel.complete_button, Qt.MouseButton.LeftButton)
    assert threads and all(t != gui for t in threads)


@pytest.mark.slow
def test_completing_the_erased_part_keeps_the_rest_and_a_pick_goes_on_the_canvas(
    draw_window, qtbot
):
    _window, panel = draw_window()
    panel.canvas.set_image(np.random.default_rng(0).integers(0, 256, (1, 8, 8), dtype=np.uint8))
    panel.set_tool(ERASER)
    panel.size_spin.setValue(3.0)
    draw(qtbot, panel, [(0.5, 6.0), (7.5, 6.0)])
    mask = panel.canvas.mask.copy()
    assert mask[6].all() and not mask[:4].any()
    kept = panel.canvas.uint8()
    panel.samples_spin.setValue(4)
    with qtbot.waitSignal(panel.completions_shown, timeout=60_000) as shown:
        qtbot.mouseClick(panel.complete_button, Qt.MouseButton.LeftButton)
    completion = shown.args[0]
    assert completion.images.shape == (4, 1, 8, 8)
    assert (completion.images[:, 0][:, ~mask] == kept[0][~mask]).all()
    assert "bits/dim" in panel.completion_label.text()
    # Pick the third with a click, take it; undo brings the erased canvas back.
    view = panel.completions_view
    qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=view.cell_rects()[2].center())
    assert view.selected == 2
    qtbot.mouseClick(panel.take_button, Qt.MouseButton.LeftButton)
    assert np.array_equal(panel.canvas.uint8(), completion.images[2])
    assert not panel.canvas.mask.any()
    panel.undo()
    assert np.array_equal(panel.canvas.uint8(), kept) and np.array_equal(panel.canvas.mask, mask)


def test_complete_without_a_mark_or_with_everything_erased_says_why(draw_window, qtbot):
    _window, panel = draw_window()
    qtbot.mouseClick(panel.complete_button, Qt.MouseButton.LeftButton)
    assert "Nothing is marked" in panel.completion_label.text()
    panel.set_tool(RECTANGLE)
    draw(qtbot, panel, [(0.2, 0.2), (7.8, 7.8)])  # QPoint(0, 0) means "the centre" to QTest
    qtbot.mouseClick(panel.complete_button, Qt.MouseButton.LeftButton)
    assert "Everything is erased" in panel.completion_label.text()
    assert panel.completion is None


def test_add_to_gallery_makes_the_drawing_an_image_like_a_dropped_one(draw_window, qtbot):
    window, panel = draw_window()
    draw(qtbot, panel, [(2.0, 2.0), (6.0, 6.0)])
    with qtbot.waitSignal(window.images.import_finished, timeout=30_000):
        qtbot.mouseClick(panel.gallery_button, Qt.MouseButton.LeftButton)
    items = window.images.gallery.items
    assert len(items) == 1 and items[0].name == "drawing-1.png"
    assert np.array_equal(items[0].pixels, panel.canvas.uint8())
    assert window.images.gallery.current_id == items[0].item_id  # it became the view


def test_start_from_the_selected_sample(draw_window, qtbot):
    window, panel = draw_window()
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    sample = window.selected_sample()
    assert sample is not None and np.array_equal(panel.canvas.uint8(), sample)
    assert panel.canvas.can_undo


def test_a_completion_can_be_cancelled_between_steps(draw_window, qtbot):
    window, panel = draw_window()
    panel.set_tool(RECTANGLE)
    draw(qtbot, panel, [(0.2, 4.0), (7.8, 7.8)])

    def cancel_after_two(task, progress):
        if progress.done >= 2:
            task.cancel()

    window.tasks.progressed.connect(cancel_after_two)
    task = panel.complete()
    assert task is not None and task.cancelled and task.finished
    assert panel.completion_label.text() == "Completion cancelled."
    assert panel.completion is None and panel.complete_button.isEnabled()


def test_an_rgb_model_draws_in_the_chosen_colour(make_window, tmp_path, qtbot):
    from conftest import perturbed_model

    from core.files.checkpoint import save_checkpoint
    from core.flow.model import FlowConfig

    config = FlowConfig(in_channels=3, image_size=8, num_scales=2, mid_channels=4, num_blocks=1)
    ckpt = save_checkpoint(tmp_path / "rgb.pt", perturbed_model(config), meta={"dataset": "t"})
    window = make_window(ckpt)
    panel = window.draw_panel
    window.show_explorer_tab(panel)
    assert panel.colour_button.isVisible() and panel.canvas.shape == (3, 8, 8)
    panel.set_colour((1.0, 0.0, 0.0))
    panel.softness_spin.setValue(0)
    draw(qtbot, panel, [(4.0, 4.0), (4.2, 4.2)])
    assert tuple(panel.canvas.uint8()[:, 3, 3]) == (255, 0, 0)
    assert panel.last_answer is not None and panel.last_answer.pixels.shape == (3, 8, 8)


def test_the_bundled_model_names_the_nearest_class_per_level(make_window, qtbot):
    from explorer.settings import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("the bundled model is not installed")
    window = make_window(DEFAULT_CHECKPOINT)
    panel = window.draw_panel
    window.show_explorer_tab(panel)
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    answer = panel.last_answer
    assert answer is not None and len(answer.nearest) == 3
    assert all(n.name in "0123456789" for n in answer.nearest)
    assert "Nearest class" in panel.classes_label.text()
    assert answer.encoded.likelihood is not None
    assert answer.encoded.likelihood.verdict in panel.verdict_label.text()


@pytest.mark.parametrize("size", [(1024, 640), (1366, 768)])
def test_the_tab_fits_the_window_with_eight_completions_shown(draw_window, qtbot, size):
    """Nothing of the tab hides under a scroll bar, completions shown or not: the canvas
    takes the height the rest leaves (at least six screen pixels a model pixel)."""
    from PySide6.QtWidgets import QApplication

    from explorer.panels.draw import CANVAS_MIN_SIDE

    window, panel = draw_window()
    window.resize(*size)
    window.show()
    qtbot.waitExposed(window)
    draw(qtbot, panel, [(1.0, 1.0), (6.0, 6.0)])
    panel.set_tool(RECTANGLE)
    draw(qtbot, panel, [(0.2, 4.2), (7.8, 7.8)])
    panel.samples_spin.setValue(8)
    with qtbot.waitSignal(panel.completions_shown, timeout=60_000):
        qtbot.mouseClick(panel.complete_button, Qt.MouseButton.LeftButton)
    QApplication.processEvents()
    assert panel.scroll.verticalScrollBar().maximum() == 0
    assert min(panel.view.width(), panel.view.height()) >= CANVAS_MIN_SIDE
    viewport = panel.scroll.viewport().rect()
    for widget in (panel.completions_view, panel.take_button, panel.view):
        corner = widget.mapTo(panel.scroll.viewport(), widget.rect().bottomRight())
        assert viewport.contains(corner), (widget, corner, viewport)
    assert len(panel.completions_view.cell_rects()) == 8


def test_the_trace_of_one_answer_is_a_readable_small_box(draw_window, qtbot):
    """With one point, pyqtgraph's autorange spans thousands (axis "-2000 … 200" and an
    "(x0.001)" prefix at 1024x640); the trace shows a small box around the point, and
    autoranges again once there are more points."""
    _window, panel = draw_window()
    if panel.last_answer is None:  # the blank canvas is answered when the model opens
        draw(qtbot, panel, [(1.0, 1.0), (6.0, 6.0)])
    x, y = panel.trace.arrays()
    assert len(x) == 1
    (x0, x1), (y0, y1) = panel.trace_plot.viewRange()
    assert x0 < x[0] < x1 and x1 - x0 < 3
    assert y0 < y[0] < y1 and y1 - y0 < 1.5
    draw(qtbot, panel, [(6.5, 1.5), (1.5, 6.5)])
    assert len(panel.trace.arrays()[0]) == 2
    assert all(panel.trace_plot.getPlotItem().vb.autoRangeEnabled())


def test_a_stroke_during_the_plan_measurement_is_answered_as_a_frame_would_be(draw_window, qtbot):
    """Right after launch the render plan is being measured: a stroke's answer cuts the
    measurement's decode short (as a waiting frame does) and runs on the render thread
    before that decode runs again, instead of waiting for the model lock until the
    measurement step ends."""
    window, panel = draw_window(threaded=True)
    engine = window.engine
    real_decode, real_encode = engine._decode, engine._encode_here
    in_measurement, drawn = threading.Event(), threading.Event()
    stroke_encodes: list[int] = []  # threads that encoded the stroke (not the blank canvas)
    seen_at_retry: list[list[int]] = []

    def decode(model, z, *rest):
        if engine.scheduler.measure_preemptible and not in_measurement.is_set():
            in_measurement.set()
            for _ in range(500):  # until the stroke's answer waits (10 s at most)
                if drawn.is_set() and engine.scheduler.answers:
                    break
                threading.Event().wait(0.02)
            engine.scheduler.check_preempted()  # what the hooks do between two layers
        elif engine.scheduler.measure_preemptible and not seen_at_retry:
            seen_at_retry.append(list(stroke_encodes))
        return real_decode(model, z, *rest)

    def encode_here(pixels):
        if pixels.any():
            stroke_encodes.append(threading.get_ident())
        return real_encode(pixels)

    engine._decode, engine._encode_here = decode, encode_here
    measuring: list[bool] = []
    panel.answer_shown.connect(lambda edit: edit and measuring.append(engine.measuring))
    qtbot.waitUntil(in_measurement.is_set, timeout=60_000)
    draw(qtbot, panel, [(1.0, 1.0), (6.0, 6.0)])
    drawn.set()
    qtbot.waitUntil(
        lambda: panel.last_answer is not None and panel.last_answer.edit == panel.canvas.edits,
        timeout=60_000,
    )
    assert stroke_encodes == [engine._render_ident]
    qtbot.waitUntil(lambda: bool(seen_at_retry), timeout=60_000)
    assert seen_at_retry == [[engine._render_ident]]  # answered before the decode resumed
    assert measuring == [True]
    qtbot.waitUntil(lambda: not engine.measuring, timeout=120_000)
    assert engine.plan.measured  # and went on afterwards


def _accent_share(button) -> float:
    """The share of the button's pixels in the accent colour (within a little blending)."""
    from PySide6.QtGui import QColor

    from explorer.theme import ACCENT

    image = button.grab().toImage()
    pixels = np.array(
        [image.pixelColor(x, y).getRgb()[:3] for y in range(image.height())
         for x in range(image.width())]
    )  # fmt: skip
    accent = np.array(QColor(ACCENT).getRgb()[:3])
    return float((np.abs(pixels - accent).sum(axis=1) <= 12).mean())


@pytest.mark.parametrize("theme", ["dark", "plain"])
def test_the_active_tool_stands_out_in_either_theme(draw_window, qtbot, request, theme):
    """Fusion's checked button was a shade darker than the others, (55,59,64) against
    (69,73,79) in the dark theme: the active tool is filled with the accent colour."""
    if theme == "dark":
        request.getfixturevalue("dark_theme")
    _window, panel = draw_window()
    brush, eraser = panel.tool_buttons[BRUSH], panel.tool_buttons[ERASER]
    assert _accent_share(brush) > 0.6 and _accent_share(eraser) < 0.05
    qtbot.mouseClick(eraser, Qt.MouseButton.LeftButton)
    assert panel.canvas.tool == ERASER
    assert _accent_share(eraser) > 0.6 and _accent_share(brush) < 0.05


@pytest.mark.slow
def test_a_completion_reads_the_same_bits_per_dim_in_the_picker_and_on_the_canvas(
    draw_window, qtbot, screenshot_dir
):
    import re

    _window, panel = draw_window()
    panel.canvas.set_image(np.random.default_rng(1).integers(0, 256, (1, 8, 8), dtype=np.uint8))
    panel.set_tool(ERASER)
    panel.size_spin.setValue(3.0)
    draw(qtbot, panel, [(0.5, 2.0), (7.5, 2.0)])
    panel.samples_spin.setValue(3)
    with qtbot.waitSignal(panel.completions_shown, timeout=60_000):
        qtbot.mouseClick(panel.complete_button, Qt.MouseButton.LeftButton)
    view = panel.completions_view
    qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=view.cell_rects()[1].center())
    picked = re.search(r"([0-9.]+) bits/dim", panel.completion_label.text()).group(1)
    with qtbot.waitSignal(panel.answer_shown, timeout=10_000):
        qtbot.mouseClick(panel.take_button, Qt.MouseButton.LeftButton)
    answered = re.search(r"<b>([0-9.]+)</b></span> bits/dim", panel.verdict_label.text()).group(1)
    assert picked == answered  # one figure for the same pixels, not centres against noise
    assert panel.completion.bits_per_dim[1] == pytest.approx(
        panel.last_answer.encoded.bits_per_dim, abs=1e-5
    )
    qtbot.wait(10)
    assert panel.grab().save(str(screenshot_dir / "item9_completion_taken.png"))
