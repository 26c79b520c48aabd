"""The drawing canvas model (explorer.state.drawing): no Qt, no torch."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.state.drawing import BRUSH, ERASER, RECTANGLE, BitsTrace, Brush, Canvas, stamp


def stroke(canvas: Canvas, points: list[tuple[float, float]]) -> bool:
    canvas.begin_stroke(*points[0])
    for p in points[1:]:
        canvas.stroke_to(*p)
    return canvas.end_stroke()


def test_a_hard_stamp_covers_the_pixels_inside_its_radius():
    cover = stamp((9, 9), 4.5, 4.5, Brush(size=3.0, softness=0.0))
    assert cover[4, 4] == 1.0 and cover[4, 5] == 1.0  # centre and a neighbour
    assert cover[0, 0] == 0.0 and cover[4, 8] == 0.0
    soft = stamp((9, 9), 4.5, 4.5, Brush(size=3.0, softness=1.0))
    assert 0.0 < soft[4, 6] < 1.0  # the soft edge fades


def test_a_stroke_paints_along_its_path_and_is_not_darker_where_slow():
    canvas = Canvas(1, 16)
    assert stroke(canvas, [(2.5, 8.5), (13.5, 8.5)])
    row = canvas.uint8()[0, 8]
    assert (row[3:13] == 255).all()
    assert canvas.uint8()[0, 0].max() == 0


def test_undo_restores_the_exact_canvas_and_redo_the_stroke():
    canvas = Canvas(1, 16)
    stroke(canvas, [(3.0, 3.0), (12.0, 12.0)])
    before = canvas.pixels.copy()
    canvas.brush = Brush(size=4.0, softness=0.7)
    stroke(canvas, [(12.0, 3.0), (3.0, 12.0)])
    after = canvas.pixels.copy()
    assert not np.array_equal(before, after)
    assert canvas.undo() and np.array_equal(canvas.pixels, before)
    assert canvas.redo() and np.array_equal(canvas.pixels, after)
    assert canvas.undo() and canvas.undo() and not canvas.pixels.any()
    assert not canvas.can_undo and not canvas.undo()


def test_a_new_edit_drops_the_redo_history():
    canvas = Canvas(1, 8)
    stroke(canvas, [(2.0, 2.0)])
    canvas.undo()
    stroke(canvas, [(5.0, 5.0)])
    assert not canvas.can_redo


def test_the_eraser_blackens_and_marks_what_it_touched():
    canvas = Canvas(1, 12)
    canvas.set_image(np.full((1, 12, 12), 200, np.uint8))
    canvas.tool = ERASER
    canvas.brush = Brush(size=3.0, softness=0.0)
    stroke(canvas, [(1.5, 6.5), (10.5, 6.5)])
    assert canvas.mask[6, 2:10].all() and not canvas.mask[0].any()
    assert (canvas.uint8()[0][canvas.mask] == 0).all()
    assert (canvas.uint8()[0, 0] == 200).all()
    canvas.undo()
    assert not canvas.mask.any() and (canvas.uint8() == 200).all()


def test_a_rectangle_erases_and_marks_the_pixels_it_covers():
    canvas = Canvas(1, 8)
    canvas.set_image(np.full((1, 8, 8), 90, np.uint8))
    canvas.tool = RECTANGLE
    stroke(canvas, [(0.0, 4.0), (8.0, 8.0)])  # the bottom half
    expected = np.zeros((8, 8), bool)
    expected[4:] = True
    assert np.array_equal(canvas.mask, expected)
    assert (canvas.uint8()[0, 4:] == 0).all() and (canvas.uint8()[0, :4] == 90).all()


def test_set_image_keeps_the_exact_pixels_and_is_undoable():
    canvas = Canvas(3, 6)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 6, 6), dtype=np.uint8)
    assert canvas.set_image(pixels)
    assert np.array_equal(canvas.uint8(), pixels)
    assert not canvas.set_image(pixels)  # no change, no history entry
    canvas.undo()
    assert not canvas.uint8().any()
    with pytest.raises(ValueError, match="shape"):
        canvas.set_image(np.zeros((1, 6, 6), np.uint8))


def test_the_brush_colour_paints_rgb_and_its_mean_on_grey():
    rgb = Canvas(3, 8)
    rgb.brush = Brush(size=2.0, softness=0.0, colour=(1.0, 0.0, 0.5))
    stroke(rgb, [(4.0, 4.0)])
    assert tuple(rgb.uint8()[:, 3, 3]) == (255, 0, 128)
    grey = Canvas(1, 8)
    grey.brush = rgb.brush
    stroke(grey, [(4.0, 4.0)])
    assert grey.uint8()[0, 3, 3] == 128


def test_clear_and_clear_mask():
    canvas = Canvas(1, 8)
    assert not canvas.clear()  # already blank
    stroke(canvas, [(4.0, 4.0)])
    canvas.tool = ERASER
    stroke(canvas, [(4.0, 4.0)])
    assert canvas.mask.any() and canvas.clear_mask() and not canvas.mask.any()
    canvas.tool = BRUSH
    stroke(canvas, [(2.0, 2.0)])
    assert canvas.clear() and not canvas.pixels.any()


def test_bad_brushes_are_refused():
    for bad in ({"size": 0.0}, {"softness": 1.5}, {"colour": (2.0, 0.0, 0.0)}):
        with pytest.raises(ValueError):
            Brush(**bad)


def test_the_trace_keeps_one_point_per_edit():
    trace = BitsTrace(limit=3)
    for edit, bits in ((1, 2.0), (1, 2.5), (2, 3.0), (3, 1.0), (4, 0.5)):
        trace.add(edit, bits)
    x, y = trace.arrays()
    assert list(y) == [3.0, 1.0, 0.5] and list(x) == [0.0, 1.0, 2.0]
