"""The main window and its panels, driven through the real widgets on a tiny real model."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from explorer import main_window as main_window_module


def latents_bytes(window) -> list[bytes]:
    return [z.tobytes() for z in window.state.latents()]


def shown_images(window) -> np.ndarray:
    images = window.samples_panel.view.images
    assert images is not None
    return images.copy()


def test_window_opens_on_a_checkpoint(make_window, tiny_checkpoint):
    window = make_window(tiny_checkpoint)
    values = window.model_panel.values
    assert values["source"].text() == "tiny.pt"
    assert values["dataset"].text() == "tiny-test"
    assert values["image"].text() == "8×8"
    assert values["test_bpd"].text() == "5.250"
    assert values["levels"].text() == "1: 2×4×4\n0: 2×4×4"
    assert values["device"].text().startswith("cpu")
    assert not window.notice.isVisible()
    assert len(window.levels_panel.rows) == 2
    images = shown_images(window)
    assert images.shape == (16, 1, 8, 8) and images.dtype == np.uint8
    assert window.frame_label.text().startswith("frame ")
    assert str(tiny_checkpoint.resolve()) in window.settings.recent_files()


def test_missing_default_model_opens_a_random_model_with_a_notice(
    make_window, tmp_path, monkeypatch
):
    monkeypatch.setattr(main_window_module, "DEFAULT_CHECKPOINT", tmp_path / "missing.pt")
    window = make_window()
    assert not window.open_default()
    assert window.notice.isVisible()
    assert "Untrained model" in window.notice.text()
    assert window.engine.model_info.untrained
    assert window.model_panel.values["source"].text() == "random, untrained"
    assert shown_images(window).shape[-2:] == (28, 28)


def test_default_model_is_opened_when_present(make_window, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(main_window_module, "DEFAULT_CHECKPOINT", tiny_checkpoint)
    window = make_window()
    assert window.open_default()
    assert not window.notice.isVisible()
    assert window.engine.model_info.source == str(tiny_checkpoint)


def test_temperature_slider_renders_a_new_image(make_window, tiny_checkpoint):
    window = make_window(tiny_checkpoint)
    before = shown_images(window)
    frame_before = window.last_frame.request_id
    slider = window.samples_panel.temperature.slider
    slider.setValue(slider.maximum())
    assert window.state.temperature == pytest.approx(1.5)
    assert window.last_frame.request_id > frame_before
    assert not np.array_equal(shown_images(window), before)


def test_level_slider_moves_only_its_level(make_window, tiny_checkpoint):
    window = make_window(tiny_checkpoint)
    before = latents_bytes(window)
    pixels_before = shown_images(window)
    row = window.levels_panel.rows[1]
    row.offset.slider.setValue(60)
    after = latents_bytes(window)
    assert after[1] != before[1]
    assert after[0] == before[0]  # bit-identical
    assert window.state.level(1).offset == pytest.approx(0.6)
    assert window.last_frame.levels_decoded == 2  # the coarsest level changed
    assert not np.array_equal(shown_images(window), pixels_before)

    window.levels_panel.rows[0].offset.slider.setValue(-40)
    assert latents_bytes(window)[1] == after[1]
    assert window.last_frame.levels_decoded == 1  # coarse level came from the cache


def test_level_resample_button_changes_only_its_level(make_window, tiny_checkpoint):
    window = make_window(tiny_checkpoint)
    before = latents_bytes(window)
    window.levels_panel.rows[0].resample_button.click()
    after = latents_bytes(window)
    assert after[0] != before[0]
    assert after[1] == before[1]


def test_lock_keeps_a_level_through_resample_and_r_key(make_window, tiny_checkpoint, qtbot):
    window = make_window(tiny_checkpoint)
    window.levels_panel.rows[1].locked.setChecked(True)
    before = latents_bytes(window)
    seed = window.state.seed
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    qtbot.keyClick(window.samples_panel.view, Qt.Key.Key_R)
    assert window.state.seed == seed + 1
    assert window.samples_panel.seed.value() == seed + 1
    after = latents_bytes(window)
    assert after[1] == before[1] and after[0] != before[0]


def test_undo_and_redo_restore_latents_exactly(make_window, tiny_checkpoint):
    window = make_window(tiny_checkpoint)
    before = latents_bytes(window)
    pixels = shown_images(window)
    window.levels_panel.rows[0].temperature.slider.setValue(20)
    assert latents_bytes(window) != before
    window.menus.undo_action.trigger()
    assert latents_bytes(window) == before
    np.testing.assert_array_equal(shown_images(window), pixels)
    assert window.levels_panel.rows[0].temperature.value() == pytest.approx(1.0)
    window.menus.redo_action.trigger()
    assert window.state.level(0).temperature == pytest.approx(0.2)


def test_grid_size_and_seed_fields(make_window, tiny_checkpoint):
    window = make_window(tiny_checkpoint)
    window.samples_panel.count.setValue(5)
    assert shown_images(window).shape[0] == 5
    window.samples_panel.seed.setValue(1234)
    assert window.state.seed == 1234
    first = shown_images(window)
    window.samples_panel.resample_button.click()
    window.samples_panel.seed.setValue(1234)
    np.testing.assert_array_equal(shown_images(window), first)


def test_corrupt_checkpoint_shows_an_error_and_keeps_the_model(
    make_window, tiny_checkpoint, tmp_path
):
    window = make_window(tiny_checkpoint)
    info = window.engine.model_info
    latents = latents_bytes(window)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x80\x02 this is not a checkpoint")
    assert not window.open_checkpoint(bad)
    assert "corrupt.pt" in window.last_error
    assert window.error_box is not None and window.error_box.isVisible()
    assert "corrupt.pt" in window.error_box.text()
    assert window.engine.model_info is info
    assert latents_bytes(window) == latents
    assert window.model_panel.values["source"].text() == "tiny.pt"
    window.levels_panel.rows[0].resample_button.click()  # still renders
    assert window.last_frame.model_id == info.model_id
    window.error_box.close()


def drop_file(window, path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    pos = QPointF(window.width() / 2, window.height() / 2)
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    drop = QDropEvent(pos, Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(window, drop)


@pytest.mark.slow
def test_dropping_a_checkpoint_opens_it(make_window, tiny_checkpoint, tmp_path):
    window = make_window()
    window.open_random("test")
    assert window.engine.model_info.untrained
    drop_file(window, tiny_checkpoint)
    assert window.engine.model_info.source == str(tiny_checkpoint)
    assert not window.notice.isVisible()
    assert shown_images(window).shape[-2:] == (8, 8)


def test_state_file_round_trip_through_the_window(make_window, tiny_checkpoint, tmp_path):
    window = make_window(tiny_checkpoint)
    window.levels_panel.rows[1].offset.slider.setValue(-35)
    window.samples_panel.temperature.slider.setValue(110)
    latents, pixels = latents_bytes(window), shown_images(window)
    path = window.save_state(tmp_path / "view.npz")
    window.samples_panel.resample_button.click()
    window.levels_panel.rows[1].offset.slider.setValue(0)
    assert latents_bytes(window) != latents
    drop_file(window, path)  # a dropped .npz restores the view
    assert latents_bytes(window) == latents
    np.testing.assert_array_equal(shown_images(window), pixels)
    assert window.levels_panel.rows[1].offset.value() == pytest.approx(-0.35)


def test_save_grid_and_selected_image_as_png(make_window, tiny_checkpoint, tmp_path):
    window = make_window(tiny_checkpoint)
    window.samples_panel.count.setValue(4)
    window.samples_panel.view.select(3)
    grid = np.asarray(Image.open(window.save_grid(tmp_path / "grid.png")))
    assert grid.shape == (2 + 2 * 10, 2 + 2 * 10)
    single = np.asarray(Image.open(window.save_image(tmp_path / "one.png")))
    np.testing.assert_array_equal(single, window.last_frame.images[3, 0])


def test_recent_files_menu_lists_opened_checkpoints(make_window, tiny_checkpoint):
    window = make_window(tiny_checkpoint)
    window.menus.recent_menu.aboutToShow.emit()
    names = [a.text() for a in window.menus.recent_menu.actions()]
    assert "tiny.pt" in names
    assert window.settings.last_dir == str(tiny_checkpoint.resolve().parent)
    window.close()  # settings are written where the test fixture put them, read back fresh
    from explorer.settings import ExplorerSettings

    again = ExplorerSettings()
    assert again.recent_files() == [str(tiny_checkpoint.resolve())]
    assert again.geometry is not None


def test_threaded_window_shows_frames(make_window, tiny_checkpoint, qtbot):
    window = make_window(threaded=True)
    with qtbot.waitSignal(window.frame_shown, timeout=30_000):
        window.open_checkpoint(tiny_checkpoint)
    first = shown_images(window)
    with qtbot.waitSignal(window.frame_shown, timeout=30_000):
        window.levels_panel.rows[0].offset.slider.setValue(80)
    qtbot.waitUntil(lambda: window.last_frame.request_id == window.last_request_id, timeout=30_000)
    assert not np.array_equal(shown_images(window), first)


@pytest.mark.slow
def test_screenshot_writes_a_non_blank_png(
    qapp, tiny_checkpoint, tmp_path, explorer_settings, one_torch_thread
):
    from explorer.app import main

    path = tmp_path / "shot.png"
    assert main(["--screenshot", str(path), "--threads", "1", str(tiny_checkpoint)]) == 0
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image.std() > 10  # not a blank canvas
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20


def test_the_word_bundled_opens_the_bundled_model(
    qapp, tiny_checkpoint, tmp_path, explorer_settings, one_torch_thread, monkeypatch, capsys
):
    from explorer.app import main

    monkeypatch.setattr(main_window_module, "DEFAULT_CHECKPOINT", tiny_checkpoint)
    monkeypatch.chdir(tmp_path)  # no file called "bundled" here: the word is the model
    assert main(["--screenshot", "shot.png", "--threads", "1", "bundled"]) == 0
    assert capsys.readouterr().err == ""
    image = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    notice_color = np.array([0x5A, 0x45, 0x10])  # the untrained-model banner is not there
    assert (np.abs(image - notice_color).sum(axis=2) == 0).sum() == 0


def test_screenshot_of_a_bad_checkpoint_fails_cleanly(qapp, tmp_path, explorer_settings, capsys):
    from explorer.app import main

    bad = tmp_path / "empty.pt"
    bad.write_bytes(b"")
    assert main(["--screenshot", str(tmp_path / "x.png"), str(bad)]) == 1
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_screenshot_without_bundled_model_shows_the_notice_and_fails(
    qapp, tmp_path, explorer_settings, one_torch_thread, monkeypatch, capsys
):
    from explorer.app import main

    monkeypatch.setattr(main_window_module, "DEFAULT_CHECKPOINT", tmp_path / "missing.pt")
    path = tmp_path / "default.png"
    assert main(["--screenshot", str(path), "--threads", "1"]) == 1
    assert f"The bundled model {tmp_path / 'missing.pt'} was not found" in capsys.readouterr().err
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    notice_color = np.array([0x5A, 0x45, 0x10])  # the notice banner's background
    assert (np.abs(image - notice_color).sum(axis=2) == 0).sum() > 1000


def test_colour_models_are_shown_and_saved_in_colour(make_window, make_perturbed_model, tmp_path):
    from core.files.checkpoint import save_checkpoint
    from core.flow.model import FlowConfig

    config = FlowConfig(in_channels=3, image_size=8, num_scales=2, mid_channels=4, num_blocks=1)
    path = save_checkpoint(tmp_path / "rgb.pt", make_perturbed_model(config))
    window = make_window(path)
    assert shown_images(window).shape == (16, 3, 8, 8)
    assert window.model_panel.values["channels"].text() == "3"
    grid = np.asarray(Image.open(window.save_grid(tmp_path / "grid.png")))
    assert grid.shape == (42, 42, 3)
    shot = window.samples_panel.view.grab().toImage()
    colours = {
        shot.pixelColor(x, y).getRgb()[:3]
        for x in range(0, shot.width(), 5)
        for y in range(0, shot.height(), 5)
    }
    assert any(r != g or g != b for r, g, b in colours)  # painted in colour, not grey


# -- what a person meets: undo steps, plain error messages, going back ------------------------


def test_each_keyboard_or_groove_click_slider_move_is_one_undo_step(
    make_window, tiny_checkpoint, qtbot
):
    window = make_window(tiny_checkpoint)
    slider = window.samples_panel.temperature.slider
    start = window.state.temperature
    slider.setFocus()
    for _ in range(3):
        qtbot.keyClick(slider, Qt.Key.Key_PageUp)
    assert window.state.temperature == pytest.approx(start + 0.3)
    window.menus.undo_action.trigger()
    assert window.state.temperature == pytest.approx(start + 0.2)
    # A click on the groove beside the handle: one page step, one undo step each.
    handle_x = slider.style().sliderPositionFromValue(
        slider.minimum(), slider.maximum(), slider.value(), slider.width()
    )
    for _ in range(2):
        x = min(slider.width() - 3, handle_x + 40)
        qtbot.mouseClick(
            slider, Qt.MouseButton.LeftButton, pos=QPointF(x, slider.height() / 2).toPoint()
        )
        handle_x = slider.style().sliderPositionFromValue(
            slider.minimum(), slider.maximum(), slider.value(), slider.width()
        )
    assert window.state.temperature == pytest.approx(start + 0.4)
    window.menus.undo_action.trigger()
    assert window.state.temperature == pytest.approx(start + 0.3)
    # A level row's slider too.
    level_slider = window.levels_panel.rows[0].temperature.slider
    level_slider.setFocus()
    qtbot.keyClick(level_slider, Qt.Key.Key_PageDown)
    qtbot.keyClick(level_slider, Qt.Key.Key_PageDown)
    window.menus.undo_action.trigger()
    assert window.state.level(0).temperature == pytest.approx(0.9)


def test_checkpoint_errors_are_plain_words_and_shown_in_full(
    make_window, tiny_checkpoint, tmp_path
):
    window = make_window(tiny_checkpoint)
    data = tiny_checkpoint.read_bytes()
    for name, content in (("cut.pt", data[: len(data) // 2]), ("junk.pt", b"PK\x03\x04" * 40)):
        bad = tmp_path / name
        bad.write_bytes(content)
        assert not window.open_checkpoint(bad)
        message = window.last_error
        assert name in message
        assert not re.search(r"\b\w*(Error|Exception)\b", message), message
        assert window.error_box.text() + window.error_box.informativeText() == message or (
            message in window.error_box.text() + "\n" + window.error_box.informativeText()
        )
        window.error_box.close()


def test_multi_line_errors_are_not_cut_off_in_the_status_bar(make_window, tiny_checkpoint):
    window = make_window(tiny_checkpoint)
    lines = ["3 of 4 files could not be used; 1 imported.", "a.png: damaged", "b.png: empty"]
    window.report_error("Some files could not be used", "\n".join(lines))
    status = window.statusBar().currentMessage()
    assert "\n" not in status and status  # one line, pointing at the full text
    shown_text = window.error_box.text() + "\n" + window.error_box.informativeText()
    assert all(line in shown_text for line in lines)
    window.error_box.close()


def test_opening_another_model_after_an_image_goes_back_to_the_samples_grid(
    make_window, tiny_checkpoint, make_perturbed_model, tmp_path
):
    from core.files.checkpoint import save_checkpoint

    window = make_window(tiny_checkpoint)
    grid = window.state.n_images
    image = tmp_path / "one.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(image)
    window.open_paths([str(image)])
    assert window.state.n_images == 1
    other = save_checkpoint(tmp_path / "other.pt", make_perturbed_model(seed=3))
    assert window.open_checkpoint(other)
    assert window.state.n_images == grid
    assert shown_images(window).shape[0] == grid


def test_the_bundled_model_can_be_reopened_from_the_file_menu(
    make_window, tiny_checkpoint, make_perturbed_model, tmp_path, monkeypatch
):
    from core.files.checkpoint import save_checkpoint

    monkeypatch.setattr(main_window_module, "DEFAULT_CHECKPOINT", tiny_checkpoint)
    window = make_window(tiny_checkpoint)
    other = save_checkpoint(tmp_path / "other.pt", make_perturbed_model(seed=4))
    assert window.open_checkpoint(other)
    window.menus.fill_recent()
    texts = [a.text() for a in window.menus.recent_menu.actions()]
    assert any("bundled" in t.lower() for t in texts), texts
    window.menus.open_bundled_action.trigger()
    assert window.engine.model_info.source == str(tiny_checkpoint)
