"""The app's rough edges of issue 25, each pinned by what a person meets: screenshots that
wait for what they show and change no settings, a ``--size`` below the window's smallest
size said in one line, ``--tab`` kept when ``--images`` imports, and the explorer page's
small surprises (a stale error in the status bar, a resample that moves nothing, a
temperature reset by showing an image, two gallery highlights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.files.images import save_png
from explorer import app as app_module


@pytest.fixture
def strokes(tmp_path) -> list[Path]:
    """Two 8x8 grey strokes, the tiny model's own size."""
    paths = []
    for i in range(2):
        image = np.zeros((8, 8), np.uint8)
        image[1:7, 2 + 3 * i : 4 + 3 * i] = 220
        paths.append(save_png(image, tmp_path / f"stroke{i}.png"))
    return paths


def screenshot_argv(path: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["--screenshot", str(path), "--threads", "1", *extra, str(checkpoint)]


def test_screenshot_of_the_likelihood_tab_waits_for_the_sample(
    make_window, tiny_checkpoint, tmp_path, qtbot
):
    window = make_window(threaded=True)
    with qtbot.waitSignal(window.frame_shown, timeout=30_000):
        window.open_checkpoint(tiny_checkpoint)
    window.show_explorer_tab(window.sample_likelihood.panel)
    app_module.take_screenshot(window, tmp_path / "likelihood.png", size=(1024, 640))
    panel = window.sample_likelihood.panel
    assert panel.view is not None, panel.verdict_label.text()
    assert "No image yet" not in panel.verdict_label.text()
    assert "Measuring" not in panel.verdict_label.text()


def test_a_size_below_the_smallest_window_is_said_in_one_line(
    qapp, tiny_checkpoint, tmp_path, explorer_settings, one_torch_thread, capsys
):
    path = tmp_path / "small.png"
    assert app_module.main(screenshot_argv(path, tiny_checkpoint, "--size", "800x300")) == 0
    width, height = Image.open(path).size
    assert width > 800 and height > 300  # Qt keeps the window at its smallest size
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"realnvp-explorer: --size 800x300 is below the window's smallest size, "
        f"so the picture is {width}x{height}"
    ]


def test_a_screenshot_changes_no_settings(
    qapp, tiny_checkpoint, tmp_path, explorer_settings, one_torch_thread
):
    explorer_settings.page = "explorer"
    explorer_settings.sync()
    path = tmp_path / "train.png"
    argv = screenshot_argv(path, tiny_checkpoint, "--page", "training", "--size", "1024x640")
    assert app_module.main(argv) == 0
    assert path.is_file()
    explorer_settings.qsettings.sync()  # read what is on disk now
    assert explorer_settings.page == "explorer"
    assert explorer_settings.recent_files() == []  # the checkpoint was not added either
    assert explorer_settings.layout_state("splitter_explorer") is None


def test_tab_is_kept_when_images_are_imported(
    qapp, tiny_checkpoint, strokes, tmp_path, explorer_settings, one_torch_thread, monkeypatch
):
    seen: dict[str, str] = {}
    real = app_module.take_screenshot

    def spy(window, path, **kwargs):
        saved = real(window, path, **kwargs)
        seen["tab"] = window.current_tab
        seen["imported"] = str(len(window.images.gallery.items))
        return saved

    monkeypatch.setattr(app_module, "take_screenshot", spy)
    argv = screenshot_argv(tmp_path / "classes.png", tiny_checkpoint, "--tab", "classes")
    assert app_module.main([*argv, "--images", *map(str, strokes)]) == 0
    assert seen == {"tab": "classes", "imported": "2"}
