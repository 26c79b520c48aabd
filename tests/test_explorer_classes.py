"""The explorer's classes: class sliders in the state (exact, undoable, saved), nearest
classes, class samples, and the Classes tab driven with real Qt events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from core.files.checkpoint import save_checkpoint
from core.stats.class_stats import META_KEY, ClassStats
from core.stats.measure import compute_class_stats
from explorer.state.classes import ClassMove, class_sample, nearest_classes
from explorer.state.state import ExplorerState
from tests.conftest import perturbed_model
from tests.test_class_stats import labelled_dataset


@pytest.fixture
def class_stats() -> ClassStats:
    return compute_class_stats(perturbed_model(), labelled_dataset((5, 3, 2)), per_class=None)


@pytest.fixture
def classes_checkpoint(tmp_path: Path, class_stats: ClassStats) -> Path:
    meta = {"dataset": "tiny-test", "step": 7, META_KEY: class_stats.to_meta()}
    return save_checkpoint(tmp_path / "classes.pt", perturbed_model(), meta)


def state_with_classes(stats: ClassStats, n: int = 3) -> ExplorerState:
    state = ExplorerState(stats.shapes, n_images=n, seed=5)
    state.set_classes(ClassMove.from_stats(stats))
    return state


def test_a_class_slider_moves_only_the_masked_levels(class_stats):
    state = state_with_classes(class_stats)
    before = state.latents()
    state.set_class_amount(2, 1.0)  # coarse: every level but the finest
    after = state.latents()
    assert np.array_equal(after[0], before[0])  # the finest level, bit for bit
    for level in range(1, len(after)):
        np.testing.assert_allclose(
            after[level],
            np.broadcast_to(class_stats.means[level][2], after[level].shape),
            atol=1e-6,
        )
    state.set_class_amount(2, 0.5)  # half way, merged into the same undo step
    np.testing.assert_allclose(
        state.latents()[1], 0.5 * (before[1] + class_stats.means[1][2]), atol=1e-6
    )
    state.end_edit()
    state.set_class_mask("fine")
    assert np.array_equal(state.latents()[1], before[1])
    assert not np.array_equal(state.latents()[0], before[0])
    state.undo()
    state.undo()
    assert all(np.array_equal(a, b) for a, b in zip(state.latents(), before))
    assert state.classes.amounts == (0.0, 0.0, 0.0)


def test_class_sliders_are_saved_and_restored(tmp_path, class_stats):
    state = state_with_classes(class_stats)
    state.set_class_amount(1, 0.75)
    state.set_class_mask("all")
    want = state.latents()
    path = state.save_npz(tmp_path / "view.npz")
    other = state_with_classes(class_stats)
    other.load_npz(path)
    assert other.classes.amounts == (0.0, 0.75, 0.0) and other.classes.mask == "all"
    assert all(np.array_equal(a, b) for a, b in zip(other.latents(), want))
    # an image becoming the view starts with every class slider at 0
    other.set_image([z[0] for z in want])
    assert not other.classes.active
    assert all(np.array_equal(a, b[:1]) for a, b in zip(other.latents(), want))


def test_nearest_classes_and_class_samples(class_stats):
    means = class_stats.means
    latents = [m[1] for m in means]  # class 1's own means
    near = nearest_classes(latents, class_stats.names, means)
    assert [n.name for n in near] == ["c1"] * len(means)
    assert all(n.distances[1] == 0 and min(n.distances) == 0 for n in near)
    a = class_sample(class_stats, 2, 4, 0.7, seed=3)
    b = class_sample(class_stats, 2, 4, 0.7, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # a pure function of the seed
    zero = class_sample(class_stats, 2, 1, 0.0, seed=3)
    assert all(np.array_equal(z[0], m[2]) for z, m in zip(zero, means))


# -- the Classes tab ---------------------------------------------------------------------------


def test_classes_tab_sliders_render_live_and_undo(
    make_window, qtbot, classes_checkpoint, class_stats
):
    window = make_window(classes_checkpoint)
    panel = window.classes_panel
    window.show_tab(panel)
    assert panel.move_box.isVisible() and not panel.unavailable.isVisible()
    assert len(panel.sliders) == 3
    before = window.last_frame.images.copy()
    first = window.last_request_id
    slider = panel.sliders[1].slider
    slider.setFocus()
    qtbot.keyClick(slider, Qt.Key.Key_End)  # all the way: onto class c1's mean
    assert window.last_request_id == first + 1  # one render request, like any slider
    assert window.state.classes.amounts[1] == 1.0
    assert not np.array_equal(window.last_frame.images, before)
    text = panel.nearest_label.text()
    assert "level 1" in text and "<b>c1</b> 0.00" in text  # the coarse levels sit on c1's mean
    window.menus.undo_action.trigger()  # Edit > Undo
    assert window.state.classes.amounts[1] == 0.0 and panel.sliders[1].value() == 0.0
    assert np.array_equal(window.last_frame.images, before)


def test_sample_a_class_from_the_tab(make_window, qtbot, classes_checkpoint):
    window = make_window(classes_checkpoint)
    panel = window.classes_panel
    window.show_tab(panel)
    panel.class_combo.setCurrentIndex(2)
    panel.count.setValue(4)
    qtbot.mouseClick(panel.sample_button, Qt.MouseButton.LeftButton)
    assert window.state.n_images == 4 and len(window.last_frame.images) == 4
    near = nearest_classes(
        [z[0] for z in window.state.latents()], panel.stats.names, panel.stats.means
    )
    assert near[-1].name == "c2"  # drawn around class c2's mean
    window.state.undo()
    assert window.state.n_images != 4 or window.state.classes is not None


def test_a_model_without_statistics_hides_the_controls_and_says_why(make_window, tiny_checkpoint):
    window = make_window(tiny_checkpoint)
    panel = window.classes_panel
    window.show_tab(panel)
    text = panel.unavailable.text()
    assert panel.unavailable.isVisible() and "no class statistics" in text
    assert "Train page" in text and "realnvp" not in text  # what to click, not to type
    assert not panel.move_box.isVisible() and not panel.sample_box.isVisible()
    assert window.state.classes is None


def test_the_engine_reads_statistics_and_says_why_when_there_are_none(
    tmp_path, classes_checkpoint, class_stats
):
    from explorer.engine.render import RenderEngine

    engine = RenderEngine(device="cpu", threaded=False)
    info = engine.open_checkpoint(classes_checkpoint)
    assert info.class_stats.names == class_stats.names and info.class_note == ""
    damaged = {**class_stats.to_meta(), "stds": [b"x"] * len(class_stats.shapes)}
    path = save_checkpoint(tmp_path / "d.pt", perturbed_model(), {META_KEY: damaged})
    info = engine.open_checkpoint(path)
    assert info.class_stats is None and "cannot be used" in info.class_note
    assert "untrained" in engine.open_random().class_note
    old = info.model_id
    info = engine.open_checkpoint(classes_checkpoint)
    # the map's batch encoder gives what the one-image encoder gives
    pixels = np.random.default_rng(0).integers(0, 256, (3, 1, 8, 8), dtype=np.uint8)
    batch = engine.encode_batch(pixels)
    one = engine.encode(pixels[1])
    assert all(np.allclose(b[1], z, atol=1e-5) for b, z in zip(batch, one.latents))
    with pytest.raises(ValueError, match="changed"):
        engine.encode_batch(pixels, model_id=old)
    engine.shutdown()


def test_a_class_sample_says_it_is_one_not_an_image(
    make_window, qtbot, classes_checkpoint, screenshot_dir
):
    window = make_window(classes_checkpoint)
    window.state.set_temperature(0.7)
    panel = window.classes_panel
    window.show_tab(panel)
    panel.class_combo.setCurrentIndex(2)
    panel.temperature.setValue(0.85)
    qtbot.mouseClick(panel.sample_button, Qt.MouseButton.LeftButton)
    assert window.state.temperature == 1.0
    note = window.samples_panel.temperature_note
    assert note.isVisible(), "the note says why the temperature slider moved to 1.00"
    text = note.text()
    assert "image" not in text and "exactly" not in text  # no image is shown
    assert "class c2" in text and "0.85" in text and "goes back to 0.70" in text
    qtbot.wait(10)  # the layout makes room for the note's lines
    assert note.height() >= note.heightForWidth(note.width()), "the note is cut off"
    assert window.samples_panel.grab().save(str(screenshot_dir / "item9_class_sample.png"))
