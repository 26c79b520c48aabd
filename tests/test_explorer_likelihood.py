"""The likelihood in the explorer: heat map, bits per level, test-set histogram and verdict
for dropped images (Images tab) and for the selected sample (Likelihood tab); the gallery
sorted by p-value. Real window, real events, tiny real models, synchronous engine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, Qt
from test_explorer_images import MNIST_TINY, drop

from core.files.checkpoint import save_checkpoint
from core.stats.typicality import NO_REFERENCE, TypicalityReference
from explorer.state.gallery import EncodedImage, Gallery
from explorer.state.likelihood import TOTAL, LikelihoodView, level_key, overlay


@pytest.fixture
def checkpoint_with_reference(tmp_path, make_perturbed_model):
    """A tiny 28x28 model whose meta carries a typicality reference made of its own bits
    on 40 stroke images."""
    import torch

    from core.flow.model import per_image_bits_per_dim

    model = make_perturbed_model(MNIST_TINY, seed=1, scale=0.01)
    rng = np.random.default_rng(0)
    pixels = np.zeros((40, 1, 28, 28), np.uint8)
    for i in range(40):
        pixels[i, 0, 6:22, 8 + i % 10 : 12 + i % 10] = 200 + rng.integers(0, 50)
    bpd = per_image_bits_per_dim(model, torch.from_numpy(pixels))
    reference = TypicalityReference.from_scores("strokes", bpd.numpy(), pixels)
    meta = {"dataset": "strokes", "test_bpd": float(bpd.mean()), "typicality": reference.to_meta()}
    return save_checkpoint(tmp_path / "ref.pt", model, meta)


def _stroke_png(tmp_path, name="stroke.png", column=12):
    img = np.zeros((28, 28), np.uint8)
    img[6:22, column : column + 4] = 220
    Image.fromarray(img).save(tmp_path / name)
    return tmp_path / name


def test_dropped_image_shows_map_levels_histogram_and_verdict(
    qtbot, make_window, checkpoint_with_reference, tmp_path
):
    window = make_window(checkpoint_with_reference)
    drop(window, [_stroke_png(tmp_path)])
    window.show_explorer_tab(window.images.images_panel)
    panel = window.images.images_panel.likelihood_panel
    window.images.images_panel.ensureWidgetVisible(panel.heat_toggle)
    assert panel.heat_toggle.isVisible()
    view = panel.view
    assert isinstance(view, LikelihoodView) and view.num_levels == 3
    assert view.reference_bits is not None and len(view.reference_bits) == 40
    assert view.verdict in ("in distribution", "unusual", "out of distribution")
    assert view.verdict in panel.verdict_label.text()
    # The reference's size stands beside the verdict: 40 images is evidence of a kind.
    assert f"against 40 {view.reference_dataset} test images" in panel.verdict_label.text()
    # bars: three levels and the preprocessing, summing to the total
    heights = panel.bars.opts["height"]
    assert len(heights) == 4 and sum(heights) == pytest.approx(view.bits_per_dim, rel=1e-5)
    # the heat map is over the image; the toggle shows the plain image
    item = window.images.gallery.current
    tile = panel.image.view.images[0]
    np.testing.assert_array_equal(tile, overlay(item.pixels, view.heat[TOTAL], 0.8))
    box = QPoint(8, panel.heat_toggle.height() // 2)  # on the indicator
    qtbot.mouseClick(panel.heat_toggle, Qt.MouseButton.LeftButton, pos=box)
    assert not panel.heat_toggle.isChecked()
    np.testing.assert_array_equal(panel.image.view.images[0], item.pixels)
    qtbot.mouseClick(panel.heat_toggle, Qt.MouseButton.LeftButton, pos=box)
    # one level's map, chosen from the keyboard
    panel.map_choice.setFocus()
    qtbot.keyClick(panel.map_choice, Qt.Key.Key_Down)
    assert panel.map_name == level_key(0)
    np.testing.assert_array_equal(
        panel.image.view.images[0], overlay(item.pixels, view.heat[level_key(0)], 0.8)
    )
    assert "bits per pixel" in panel.range_label.text()


def test_gallery_sorts_least_typical_first_from_its_combo_box(
    qtbot, make_window, checkpoint_with_reference, tmp_path
):
    """(Verdicts on real digits, blank images and photos are tested on the bundled model in
    test_likelihood_cli.py; this tiny model is barely trained.)"""
    window = make_window(checkpoint_with_reference)
    Image.new("L", (28, 28), 0).save(tmp_path / "black.png")
    Image.new("L", (28, 28), 255).save(tmp_path / "white.png")
    drop(window, [tmp_path / "black.png", tmp_path / "white.png", _stroke_png(tmp_path)])
    gallery = window.images.gallery
    p_values = {it.item_id: it.encoded.likelihood.p_min for it in gallery.items}
    assert all(p is not None for p in p_values.values())
    gp = window.images.gallery_panel
    gp.sort.setFocus()
    while gp.sort_key != "p_value":  # chosen from the keyboard, as a user would
        qtbot.keyClick(gp.sort, Qt.Key.Key_Down)
    listed = [gp.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(gp.list.count())]
    assert [p_values[i] for i in listed] == sorted(p_values.values())
    assert f"p {p_values[listed[0]]:.2g}" in gp.list.item(0).text()


def test_checkpoint_without_statistics_says_how_to_add_them_in_the_app(
    qtbot, make_window, tiny_checkpoint, tmp_path
):
    window = make_window(tiny_checkpoint)  # 8x8: the importer resizes the stroke
    drop(window, [_stroke_png(tmp_path)])
    panel = window.images.images_panel.likelihood_panel
    assert panel.view.verdict == NO_REFERENCE
    text = panel.verdict_label.text()
    assert "trained on the Train page" in text and "realnvp" not in text  # a click, not a command
    assert panel.view.reference_bits is None


def test_selected_sample_gets_its_likelihood_in_its_tab(
    qtbot, make_window, checkpoint_with_reference
):
    window = make_window(checkpoint_with_reference)
    window.samples_panel.count.setValue(4)
    sample = window.sample_likelihood
    tabs = window.tabs
    bar = tabs.tabBar()
    index = tabs.indexOf(sample.panel)
    qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(index).center())
    assert tabs.currentWidget() is sample.panel
    view = window.samples_panel.view
    rect = view.cell_rects()[2]
    qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=rect.center())
    assert view.selected == 2
    qtbot.waitUntil(lambda: sample.panel.view is not None, timeout=5000)
    np.testing.assert_array_equal(sample.panel.pixels, window.last_frame.images[2])
    expected = window.engine.describe_likelihood(window.last_frame.images[2])
    assert sample.panel.view.bits_per_dim == pytest.approx(expected.bits_per_dim)
    assert sample.panel.view.verdict in sample.panel.verdict_label.text()


def test_sample_likelihood_runs_off_the_gui_thread(qtbot, make_window, checkpoint_with_reference):
    window = make_window(checkpoint_with_reference, threaded=True)
    qtbot.waitUntil(lambda: window.last_frame is not None, timeout=20000)
    sample = window.sample_likelihood
    window.show_explorer_tab(sample.panel)
    calls = []
    original = window.engine.describe_likelihood

    def spy(pixels):
        import threading

        calls.append(threading.current_thread() is threading.main_thread())
        return original(pixels)

    window.engine.describe_likelihood = spy
    sample.refresh()
    qtbot.waitUntil(lambda: sample.panel.view is not None, timeout=20000)
    assert calls == [False]


def test_gallery_sorts_by_p_value_without_qt():
    gallery = Gallery()

    def encoded(p):
        view = LikelihoodView(
            1.0, (0.5,), (0.1,), 0.4, {}, {}, "v", "r", 50.0, p, 0.0, 1.0 if p else None
        )
        z = np.zeros((1, 2, 2), np.float32)
        return EncodedImage(1, (z,), np.zeros((1, 2, 2), np.uint8), z, 1.0, view)

    for name, p in (("a", 0.5), ("b", None), ("c", 0.001), ("d", 0.2)):
        gallery.add(f"/{name}.png", np.zeros((1, 2, 2), np.uint8), encoded(p))
    assert [it.name for it in gallery.sorted("p_value")] == ["c.png", "d.png", "a.png", "b.png"]


def test_a_negative_level_bar_says_why_it_is_right(qtbot, make_window, tmp_path):
    """The bundled model gives a clean stroke's finest level negative bits/dim (a density
    above 1): the bars' tooltip says why, and only when a bar is negative."""
    from explorer.panels.likelihood import NEGATIVE_BITS_NOTE
    from explorer.settings import DEFAULT_CHECKPOINT

    window = make_window(DEFAULT_CHECKPOINT)
    drop(window, [_stroke_png(tmp_path)])
    panel = window.images.images_panel.likelihood_panel
    assert panel.view.level_bits_per_dim[0] < 0
    assert NEGATIVE_BITS_NOTE in panel.levels_plot.toolTip()
    positive = LikelihoodView(**{**vars(panel.view), "logdet_bits_per_dim": (5.0, 5.0, 5.0)})
    panel.show_view(positive, panel.pixels)
    assert "Bits/dim per level" in panel.levels_plot.toolTip()
    assert NEGATIVE_BITS_NOTE not in panel.levels_plot.toolTip()
