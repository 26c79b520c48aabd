"""The app's rough edges of issue 25, each pinned by what a person meets: screenshots that
wait for what they show and change no settings, a ``--size`` below the window's smallest
size said in one line, ``--tab`` kept when ``--images`` imports, and the explorer page's
small surprises (a stale error in the status bar, a resample that moves nothing, a
temperature reset by showing an image, two gallery highlights)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from core.files.checkpoint import save_checkpoint
from core.files.images import save_png
from core.stats.class_stats import META_KEY
from core.stats.measure import compute_class_stats
from explorer import app as app_module
from explorer.panels.gallery import ID_ROLE
from tests.conftest import perturbed_model
from tests.test_class_stats import labelled_dataset
from tests.test_latent_map import write_folder


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- the explorer page -------------------------------------------------------------------------


def test_a_successful_open_replaces_an_earlier_error_in_the_status_bar(
    make_window, tiny_checkpoint, tmp_path
):
    window = make_window(tiny_checkpoint)
    bad = tmp_path / "empty.pt"
    bad.write_bytes(b"")
    assert not window.open_checkpoint(bad)
    assert "empty" in window.statusBar().currentMessage()
    assert window.open_checkpoint(tiny_checkpoint)
    message = window.statusBar().currentMessage()
    assert "empty" not in message and tiny_checkpoint.name in message
    assert window.statusBar().toolTip() == ""  # the error's full text went with it


def test_resample_with_every_level_locked_changes_nothing_and_says_why(
    make_window, tiny_checkpoint, qtbot
):
    window = make_window(tiny_checkpoint)
    state, panel = window.state, window.samples_panel
    for row in window.levels_panel.rows:
        row.locked.setChecked(True)
    assert not panel.resample_button.isEnabled()
    assert "locked" in panel.resample_button.toolTip()
    seed = state.seed
    frame = window.last_frame.request_id
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    qtbot.keyClick(panel.view, Qt.Key.Key_R)
    assert state.seed == seed and window.last_frame.request_id == frame
    assert "Every level is locked" in window.statusBar().currentMessage()
    window.levels_panel.rows[0].locked.setChecked(False)
    assert panel.resample_button.isEnabled()
    qtbot.mouseClick(panel.resample_button, Qt.MouseButton.LeftButton)
    assert state.seed == seed + 1


def test_showing_an_image_says_why_the_temperature_is_one_and_resample_brings_it_back(
    make_window, tiny_checkpoint, strokes, qtbot
):
    window = make_window(tiny_checkpoint)
    panel = window.samples_panel
    window.state.set_temperature(0.7)
    window.open_paths([str(strokes[0])])
    assert window.state.temperature == 1.0  # the image's own latents, exactly
    note = panel.temperature_note
    assert note.isVisible() and "0.70" in note.text() and "1.00" in note.text()
    qtbot.mouseClick(panel.resample_button, Qt.MouseButton.LeftButton)
    assert window.state.temperature == pytest.approx(0.7)
    assert panel.temperature.value() == pytest.approx(0.7)
    assert not note.isVisible()
    # A temperature the user sets while an image is shown is theirs: Resample keeps it.
    window.open_paths([str(strokes[1])])
    window.state.set_temperature(0.9)
    assert not note.isVisible()
    window.resample()
    assert window.state.temperature == pytest.approx(0.9)


@pytest.mark.slow
def test_the_gallery_has_one_highlight_and_show_acts_on_it(make_window, tiny_checkpoint, strokes):
    window = make_window(tiny_checkpoint)
    window.open_paths([str(p) for p in strokes])
    gallery, panel = window.images.gallery, window.images.gallery_panel
    panel.refresh()
    first = gallery.current_id
    assert panel.selected_ids() == [first]  # the selection is the image shown
    other = next(item.item_id for item in gallery.items if item.item_id != first)
    window.images.show(other)  # e.g. from the Images tab or a map point
    panel.refresh()
    assert panel.selected_ids() == [other]
    texts = {panel.list.item(r).data(ID_ROLE): panel.list.item(r) for r in range(2)}
    assert "shown" in texts[other].text() and "shown" not in texts[first].text()
    assert not any(item.font().bold() for item in texts.values())
    panel.show_button.click()
    assert gallery.current_id == other


# -- the Classes tab -----------------------------------------------------------------------------


@pytest.fixture
def classes_checkpoint(tmp_path: Path) -> Path:
    """A tiny model with class statistics (three classes)."""
    stats = compute_class_stats(perturbed_model(), labelled_dataset((5, 3, 2)), per_class=None)
    meta = {"dataset": "tiny-test", META_KEY: stats.to_meta()}
    return save_checkpoint(tmp_path / "classes.pt", perturbed_model(), meta)


@pytest.mark.parametrize("size", [(1024, 640), (1366, 768)])
@pytest.mark.slow
def test_class_controls_get_the_tab_until_a_map_is_computed(
    make_window, classes_checkpoint, tmp_path, qtbot, size
):
    window = make_window(classes_checkpoint)
    window.resize(*size)
    window.show_tab(window.classes_panel)
    qtbot.waitUntil(lambda: window.classes_tab.height() > 0)
    panels = window.classes_panel, window.map_panel
    assert not window.map_panel.view.isVisible()  # no map yet: no empty plot
    # Every class slider shows without scrolling at 1366x768; at 1024x640 most do.
    assert panels[0].height() > 0.7 * window.classes_tab.height()
    assert window.map_panel.compute_button.isVisible()
    folder = write_folder(tmp_path / "digits", {"a": 40, "b": 40})
    ckpt = save_checkpoint(tmp_path / "f.pt", perturbed_model(), {"dataset": "folder"})
    assert window.open_checkpoint(ckpt)
    window.map_panel.set_data_dir(folder)
    qtbot.mouseClick(window.map_panel.compute_button, Qt.MouseButton.LeftButton)
    assert window.map_panel.map is not None, window.map_panel.status.text()
    assert window.map_panel.view.isVisible()
    assert panels[1].height() > panels[0].height()  # a computed map gets most of the tab


def test_the_map_data_folder_is_the_models_own_and_absolute(
    make_window, make_perturbed_model, tmp_path, monkeypatch, qtbot
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REALNVP_DATA_DIR", raising=False)
    recorded = tmp_path / "mnist-files"
    recorded.mkdir()
    with_folder = save_checkpoint(
        tmp_path / "a.pt", make_perturbed_model(), {"dataset": "mnist", "data_dir": str(recorded)}
    )
    without = save_checkpoint(tmp_path / "b.pt", make_perturbed_model(), {"dataset": "mnist"})
    window = make_window(with_folder)
    panel = window.map_panel
    assert panel.data_dir.text() == str(recorded)
    assert panel.data_label.text() == "MNIST folder"
    assert window.open_checkpoint(without)
    assert panel.data_dir.text() == str(tmp_path / "data")  # absolute, not "data"
    assert Path(panel.data_dir.text()).is_absolute()
    mine = str(tmp_path / "mine")
    panel.data_dir.selectAll()
    qtbot.keyClicks(panel.data_dir, mine)
    assert window.open_checkpoint(with_folder)
    assert panel.data_dir.text() == mine  # the user's own folder is kept


# -- the training page -----------------------------------------------------------------------


@pytest.fixture
def training_panel(qtbot, tmp_path):
    from explorer.training.workspace import TrainingPanel

    panel = TrainingPanel(runs_dir=tmp_path / "runs", probe_devices=False)
    qtbot.addWidget(panel)
    panel.resize(1000, 560)
    panel.show()
    return panel


def test_the_training_page_before_any_run_reads_well(training_panel, qtbot):
    panel = training_panel
    assert panel.progress.text() == ""  # not "0 / 1 steps"
    assert panel.info.text() == "No run yet"
    assert panel.empty_plot.isVisible()
    # The preview box says what will come instead of a large black box.
    shot = panel.samples.grab().toImage()
    black = sum(
        shot.pixelColor(x, y).getRgb()[:3] == (0, 0, 0)
        for x in range(0, shot.width(), 4)
        for y in range(0, shot.height(), 4)
    )
    assert black == 0
    assert "first evaluation" in panel.samples.placeholder
    # The top tick's label has room above the axis: the plot's top margin holds half of it.
    _left, top, _right, _bottom = panel.plot.getPlotItem().layout.getContentsMargins()
    assert top >= panel.plot.fontMetrics().height() / 2


def write_events(folder: Path, events: list[dict]) -> Path:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return folder


def test_a_reopened_run_shows_its_threads_and_a_stop_names_the_evaluations_step(
    training_panel, tmp_path
):
    panel = training_panel
    train = {"dataset": "mnist", "data_dir": str(tmp_path), "max_steps": 300, "device": "cpu"}
    run = write_events(
        tmp_path / "runs" / "r",
        [
            {"event": "start", "step": 0, "total_steps": 300, "parameters": 10,
             "device": "cpu", "threads": 1, "train_config": train},
            {"event": "step", "step": 100, "loss": 2.0, "total_steps": 300},
            {"event": "eval", "step": 100, "test_bpd": 1.9},
            {"event": "step", "step": 130, "loss": 1.8, "total_steps": 300},
            {"event": "done", "step": 130, "reason": "stopped", "test_bpd": 1.9,
             "best_test_bpd": 1.9},
        ],
    )  # fmt: skip
    assert panel.open_run(run)
    panel.catch_up()
    assert panel.form.threads.value() == 1
    assert panel.form.threads.text() == "1"  # not "default"
    message = panel.message.text()
    assert message.startswith("Stopped at step 130: last test 1.900 bits/dim at step 100")
    assert panel.progress.text() == "130 / 300 steps"
    assert not panel.empty_plot.isVisible()


# -- the system libraries Qt's X11 plugin needs -------------------------------------------------

LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxkbcommon-x11.so.0 => not found
\tlibxcb-icccm.so.4 => not found
"""


def test_missing_x11_libraries_are_named_with_their_packages():
    from explorer.system_libs import debian_package, missing_libraries

    missing = missing_libraries(Path("libqxcb.so"), ldd=lambda _p: LDD_OUTPUT)
    assert missing == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxkbcommon-x11.so.0"]
    packages = [debian_package(lib) for lib in missing]
    assert packages == ["libxcb-icccm4", "libxcb-keysyms1", "libxkbcommon-x11-0"]


def test_the_x11_check_runs_only_where_qt_uses_x11():
    from explorer.system_libs import xcb_problem

    def missing(_plugin):
        return ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]

    x11 = {"DISPLAY": ":0"}
    problem = xcb_problem(x11, "linux", missing)
    assert problem is not None
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1" in problem
    assert "sudo apt install libxcb-icccm4 libxcb-keysyms1" in problem
    assert xcb_problem({**x11, "QT_QPA_PLATFORM": "offscreen"}, "linux", missing) is None
    assert xcb_problem({**x11, "WAYLAND_DISPLAY": "wayland-0"}, "linux", missing) is None
    assert xcb_problem(x11, "darwin", missing) is None
    assert xcb_problem({"QT_QPA_PLATFORM": "xcb"}, "linux", missing) is not None
    assert xcb_problem(x11, "linux", lambda _p: []) is None


def test_the_app_says_which_libraries_are_missing_before_qt_aborts():
    """In a fresh interpreter (no QApplication yet), as ``make run`` starts it."""
    code = (
        "import explorer.app as app, explorer.system_libs as libs;"
        "libs.missing_libraries = lambda p, ldd=None: ['libxcb-keysyms.so.1'];"
        "raise SystemExit(app.main(['--threads', '1']))"
    )
    env = {**os.environ, "DISPLAY": ":99", "QT_QPA_PLATFORM": "xcb"}
    env.pop("WAYLAND_DISPLAY", None)
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code], env={**env, "PYTHONPATH": str(root)},
        capture_output=True, text=True, timeout=120, cwd=root,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        "realnvp-explorer: Qt's X11 plugin needs system libraries that are not installed: "
        "libxcb-keysyms.so.1. On Debian or Ubuntu: sudo apt install libxcb-keysyms1 "
        "(see docs/explorer.md)"
    )


def test_no_display_is_told_before_qt_chooses_a_platform():
    from explorer.system_libs import display_problem

    assert "no display" in display_problem({}, "linux")
    assert "no display" in display_problem({"QT_QPA_PLATFORM": "xcb"}, "linux")
    assert (
        display_problem({"QT_QPA_PLATFORM": "wayland", "WAYLAND_DISPLAY": "w-0"}, "linux") is None
    )
    assert "no display" in display_problem({"QT_QPA_PLATFORM": "wayland", "DISPLAY": ":0"}, "linux")
    assert display_problem({"QT_QPA_PLATFORM": "wayland;xcb", "DISPLAY": ":0"}, "linux") is None
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    assert display_problem({"DISPLAY": ":0"}, "linux") is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert display_problem({}, "darwin") is None and display_problem({}, "win32") is None


def test_the_app_says_there_is_no_display_instead_of_qts_abort():
    """``make run`` over SSH or in a container: one sentence, status 1, no Qt abort about
    xcb-cursor0; the screenshot it suggests works there."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "explorer", "--threads", "1"],
        env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120,
        cwd=root,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("realnvp-explorer: there is no display")
    assert "--screenshot" in lines[0] and "QT_QPA_PLATFORM=offscreen" in lines[0]
    assert "xcb" not in result.stderr


# -- a 4K window ---------------------------------------------------------------------------------


def test_at_4k_the_side_columns_and_the_level_views_grow(make_window, tiny_checkpoint, qtbot):
    from explorer.window_layout import column_widths

    assert column_widths(1366, 768) == (300, 534, 492)  # a laptop's first start as before
    window = make_window(tiny_checkpoint)
    window.resize(3840, 2160)
    qtbot.waitUntil(lambda: window.width() == 3840)
    window.reset_layout()
    window.show_tab(window.levels_panel)
    qtbot.waitUntil(lambda: window.tabs.width() > 1000, timeout=5000)
    left, samples, tabs = window.splitter.sizes()
    assert left > 500 and tabs > 1000
    assert samples <= window.samples_panel.height()  # about square: no 3,000 px slider
    row = window.levels_panel.rows[-1]
    assert row.latent_view.width() > 150 and row.histogram.height() == row.latent_view.width()
    window.resize(1366, 768)  # and they shrink back with the column
    qtbot.waitUntil(lambda: window.levels_panel.rows[-1].latent_view.width() < 150, timeout=5000)


def test_only_the_measuring_thread_is_cut_short(tiny_checkpoint, one_torch_thread):
    """The hooks run in every thread that decodes with the model (a likelihood worker, an
    export): a waiting frame cuts short the render thread's measurement decode only."""
    import threading

    from explorer.engine.render import RenderEngine, RenderRequest
    from explorer.engine.requests import Preempted

    engine = RenderEngine(device="cpu", threaded=False)
    info = engine.open_checkpoint(tiny_checkpoint)
    latents = tuple(np.zeros((1, *shape), np.float32) for shape in info.latent_shapes)
    engine.scheduler.pending["samples"] = RenderRequest(1, info.model_id, latents)  # a frame waits
    try:
        engine.scheduler.measure_preemptible = threading.get_ident() + 1  # another thread measures
        engine.scheduler.check_preempted()  # this thread's decode goes on
        engine.scheduler.measure_preemptible = threading.get_ident()
        with pytest.raises(Preempted):
            engine.scheduler.check_preempted()
    finally:
        engine.scheduler.measure_preemptible = None
        engine.scheduler.pending.clear()
        engine.shutdown()


def test_the_model_panel_shows_the_threads_the_plan_chose(make_window, tiny_checkpoint):
    """The model panel's device row and the status bar say the same thing after the
    render plan's measurement changes the thread count (the panel kept the count the
    model was opened with: "cpu (1 thread)" beside "cpu (2 threads)")."""
    window = make_window(tiny_checkpoint)
    engine = window.engine
    device = window.model_panel.values["device"]
    assert device.text() == window.device_label.text() == engine.device_label
    other = "cpu (2 threads)" if "1 thread" in engine.device_label else "cpu (1 thread)"
    engine.device_label = other  # what a measurement that changes the plan sets
    engine.plan_changed.emit(engine.plan)
    assert device.text() == window.device_label.text() == other


def test_command_line_advice_from_core_is_said_as_what_to_click(tmp_path):
    """Core writes for the command line ("pass --download", "add it with `realnvp export
    …`"); the app's messages name what to click instead."""
    from core.stats.typicality import judge
    from core.training.datasets import DatasetError
    from explorer.engine.datasets import load_map_images
    from explorer.state.advice import in_app_words

    no_reference = in_app_words(judge(None, 1.2, 0.1).reason)
    assert "realnvp" not in no_reference and "Train page" in no_reference
    for dataset, channels, size in (("mnist", 1, 28), ("cifar10", 3, 32)):
        with pytest.raises(DatasetError) as raised:
            load_map_images(dataset, str(tmp_path), channels, size, 10)
        words = in_app_words(str(raised.value))
        assert "--download" not in words and "Download if missing" in words, words
