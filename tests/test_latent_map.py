"""The latent map: principal components, placing a latent at a point, the map job with
progress and cancel, and the Map tab driven with the mouse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from core.files.checkpoint import save_checkpoint
from explorer.state.jobs import Progress
from explorer.state.latent_map import (
    ALL_LEVELS,
    LatentMap,
    MapImages,
    fit_projection,
    flatten,
    latent_map_job,
    nearest_point,
)
from tests.conftest import perturbed_model
from tests.test_class_stats import write_folder

SHAPES = [(2, 4, 4), (4, 2, 2)]


def random_latents(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *s)).astype(np.float32) for s in SHAPES]


def test_place_moves_onto_the_point_and_keeps_the_rest():
    rows = flatten(random_latents(50), ALL_LEVELS)
    projection = fit_projection(rows)
    assert np.allclose(projection.axes @ projection.axes.T, np.eye(2))
    assert projection.explained[0] >= projection.explained[1] > 0
    x = rows[3]
    moved = projection.place(x, (1.5, -2.0))
    assert np.allclose(projection.project(moved[None])[0], (1.5, -2.0))
    # what changed lies in the plane: the orthogonal components are kept
    change = moved - x
    assert np.allclose(change - projection.axes.T @ (projection.axes @ change), 0)


def test_nearest_point_within_a_pixel_radius():
    points = np.array([[0.0, 0.0], [10.0, 0.0]])
    assert nearest_point(points, (9.0, 0.5), (1.0, 1.0), 2.0) == 1
    assert nearest_point(points, (5.0, 0.0), (1.0, 1.0), 2.0) is None
    assert nearest_point(points, (5.0, 0.0), (0.5, 0.5), 12.0) is not None  # zoomed out


def test_the_job_reports_progress_and_makes_a_map_of_one_level():
    latents = random_latents(25)
    pixels = np.zeros((25, 1, 8, 8), np.uint8)
    labels = np.arange(25) % 3
    calls = []

    def encode(batch):
        calls.append(len(batch))
        start = sum(calls) - len(batch)
        return [z[start : start + len(batch)] for z in latents]

    items = list(
        latent_map_job(
            7, 1, lambda: MapImages(pixels, labels, ("a", "b", "c"), "test"), encode, chunk=10
        )
    )
    progress = [i for i in items if isinstance(i, Progress)]
    (result,) = [i for i in items if isinstance(i, LatentMap)]
    assert calls == [10, 10, 5] and [p.done for p in progress[1:4]] == [10, 20, 25]
    assert result.level == 1 and result.points.shape == (25, 2)
    assert np.allclose(result.coordinates(latents), result.points)
    other = result.with_level(0)
    assert other.level == 0 and not np.allclose(other.points, result.points)
    # moving one image's level-1 latent onto a point of the level-1 plane
    one = [z[4:5] for z in latents]
    (moved,) = result.moved(one, (0.25, 0.5))
    assert moved.shape == (1, *SHAPES[1])
    assert np.allclose(result.coordinates([one[0], moved])[0], (0.25, 0.5), atol=1e-5)


# -- the Map tab ---------------------------------------------------------------------------------


@pytest.fixture
def folder_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    folder = write_folder(tmp_path / "digits", {"a": 40, "b": 40})
    ckpt = save_checkpoint(tmp_path / "f.pt", perturbed_model(), {"dataset": "folder"})
    return ckpt, folder


def _mouse(widget, kind: QEvent.Type, pos: QPointF, buttons: Qt.MouseButton) -> None:
    button = Qt.MouseButton.NoButton if kind == QEvent.Type.MouseMove else Qt.MouseButton.LeftButton
    global_pos = QPointF(widget.mapToGlobal(pos.toPoint()))
    event = QMouseEvent(kind, pos, global_pos, button, buttons, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def test_map_tab_click_a_point_and_drag_the_current_image(make_window, qtbot, folder_checkpoint):
    ckpt, folder = folder_checkpoint
    window = make_window(ckpt)
    panel = window.map_panel
    window.show_tab(panel)
    panel.set_data_dir(folder)
    qtbot.mouseClick(panel.compute_button, Qt.MouseButton.LeftButton)
    assert panel.map is not None, panel.status.text()
    latent_map = panel.map
    assert latent_map.level == 1 and len(latent_map) >= 3
    assert latent_map.class_names == ("a", "b") and set(latent_map.labels) <= {0, 1}
    view = panel.view
    viewport = view.viewport()

    # hover over a point: its thumbnail shows
    x, y = latent_map.points[2]
    pos = view.viewport_point(x, y)
    _mouse(viewport, QEvent.Type.MouseMove, pos, Qt.MouseButton.NoButton)
    assert view.thumbnail.isVisible()

    # click a point: that image becomes the view
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=pos.toPoint())
    assert window.state.n_images == 1
    shown = window.state.latents()
    assert all(np.array_equal(z[0], m[2]) for z, m in zip(shown, latent_map.latents))
    frames = window.last_request_id

    # click in empty space and drag: the level-1 latent follows the pointer
    xs, ys = latent_map.points[:, 0], latent_map.points[:, 1]
    start = view.viewport_point(xs.max() + 0.02 * np.ptp(xs), ys.min())
    end = QPointF(start.x() - 20, start.y() - 20)
    _mouse(viewport, QEvent.Type.MouseButtonPress, start, Qt.MouseButton.LeftButton)
    _mouse(
        viewport,
        QEvent.Type.MouseMove,
        QPointF(start.x() - 10, start.y() - 5),
        Qt.MouseButton.LeftButton,
    )
    _mouse(viewport, QEvent.Type.MouseMove, end, Qt.MouseButton.LeftButton)
    _mouse(viewport, QEvent.Type.MouseButtonRelease, end, Qt.MouseButton.NoButton)
    assert window.last_request_id == frames + 3  # one render per pointer event
    moved = window.state.latents()
    assert np.array_equal(moved[0], shown[0])  # the other level, bit for bit
    where = latent_map.coordinates(moved)[0]
    assert np.allclose(where, view.view_point(end), atol=1e-4)
    assert window.last_frame.request_id == window.last_request_id
    # the whole drag is one undo step
    window.menus.undo_action.trigger()
    assert all(np.array_equal(a, b) for a, b in zip(window.state.latents(), shown))


def test_map_errors_say_why_and_the_map_is_cached(make_window, qtbot, folder_checkpoint, tmp_path):
    ckpt, folder = folder_checkpoint
    window = make_window(ckpt)
    panel = window.map_panel
    panel.set_data_dir(tmp_path / "nowhere")
    panel.compute()
    assert panel.map is None and "no such folder" in panel.status.text()
    panel.set_data_dir(folder)
    assert panel.compute() is not None  # a job
    first = panel.map
    panel.level_combo.setCurrentIndex(panel.level_combo.findData(ALL_LEVELS))
    assert panel.map.level == ALL_LEVELS and panel.map.latents is first.latents
    assert panel.compute() is None  # cached for this model: no new job


def test_computing_a_map_can_be_cancelled(make_window, folder_checkpoint):
    ckpt, folder = folder_checkpoint
    window = make_window(ckpt)
    panel = window.map_panel
    panel.set_data_dir(folder)
    panel.count.setValue(20)
    seen = []

    def cancel_on_encoding(task, progress):
        seen.append(progress.text)
        if progress.text == "encoding":
            task.cancel()

    window.tasks.progressed.connect(cancel_on_encoding)
    task = panel.compute()
    assert task.cancelled and panel.map is None
    assert "encoding" in seen and "principal components" not in seen
    assert panel.status.text() == "Cancelled."


def test_the_projection_agrees_with_a_full_svd_up_to_sign():
    """Only the top two components are computed (eigenvectors of the covariance, or an SVD
    when there are fewer rows than dimensions); they are the SVD's, up to sign."""
    rng = np.random.default_rng(3)
    for n, d in ((400, 30), (12, 30)):
        scales = np.linspace(3.0, 0.5, d)  # distinct variances: the axes are well defined
        rows = rng.standard_normal((n, d)) * scales + rng.standard_normal(d)
        projection = fit_projection(rows)
        _, s, vt = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
        for axis, reference in zip(projection.axes, vt[:2]):
            assert np.allclose(axis * np.sign(axis @ reference), reference, atol=1e-8)
        assert np.allclose(projection.explained, s[:2] ** 2 / (s**2).sum())


def test_another_level_is_fitted_off_the_gui_thread_and_the_old_map_stays(
    make_window, qtbot, folder_checkpoint, monkeypatch
):
    """Choosing a level refits the plane over the whole data set: a job on the task runner,
    with the map shown until the new one arrives."""
    import threading

    import explorer.state.latent_map as latent_map_module

    ckpt, folder = folder_checkpoint
    window = make_window(ckpt, threaded=True)
    panel = window.map_panel
    panel.set_data_dir(folder)
    panel.compute()
    qtbot.waitUntil(lambda: panel.map is not None, timeout=60_000)
    first = panel.map
    assert first.level == 1
    real_fit = latent_map_module.fit_projection
    fitting, release, threads = threading.Event(), threading.Event(), []

    def slow_fit(rows):
        threads.append(threading.get_ident())
        fitting.set()
        release.wait(timeout=5)  # a fit on the GUI thread (the defect) must not hang here
        return real_fit(rows)

    monkeypatch.setattr(latent_map_module, "fit_projection", slow_fit)
    panel.level_combo.setCurrentIndex(panel.level_combo.findData(0))
    assert fitting.wait(timeout=30)
    assert threads == [threads[0]] and threads[0] != threading.get_ident()
    assert panel.map is first and not panel.view.isHidden()  # the old map, while it fits
    release.set()
    qtbot.waitUntil(lambda: panel.map is not first, timeout=30_000)
    assert panel.map.level == 0 and panel.map.latents is first.latents
    # both planes are kept: going back is immediate, no second job
    panel.level_combo.setCurrentIndex(panel.level_combo.findData(1))
    assert panel.map is first and len(threads) == 1


def test_a_user_error_is_a_message_and_a_defect_goes_once_to_the_named_log(
    make_window, qtbot, tmp_path, capfd, monkeypatch
):
    """Compute map with a folder without MNIST says why in the panel and prints nothing; an
    unexpected failure writes its traceback once to the log, whose path the panel names."""
    import explorer.panels.latent_map as panel_module

    ckpt = save_checkpoint(tmp_path / "m.pt", perturbed_model(), {"dataset": "mnist"})
    window = make_window(ckpt)
    panel = window.map_panel
    empty = tmp_path / "empty"
    empty.mkdir()
    panel.set_data_dir(empty)
    qtbot.mouseClick(panel.compute_button, Qt.MouseButton.LeftButton)
    text = panel.status.text()
    assert panel.map is None and text.startswith("No map: ") and str(empty) in text
    assert "Error" not in text  # the message, not the exception's class
    log = window.tasks.error_log.path
    assert tmp_path in log.parents and not log.exists()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err

    def broken(*args):
        raise KeyError("a defect")

    monkeypatch.setattr(panel_module, "load_map_images", broken)
    qtbot.mouseClick(panel.compute_button, Qt.MouseButton.LeftButton)
    text = panel.status.text()
    assert "KeyError" in text and str(log) in text
    written = log.read_text()
    assert written.count("Traceback") == 1 and "a defect" in written and "broken" in written
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_a_map_move_from_samples_says_it_moved_latents_not_an_image(
    make_window, qtbot, folder_checkpoint, screenshot_dir
):
    ckpt, folder = folder_checkpoint
    window = make_window(ckpt)
    window.state.set_temperature(0.7)  # samples, no image shown
    panel = window.map_panel
    window.show_tab(panel)
    panel.set_data_dir(folder)
    qtbot.mouseClick(panel.compute_button, Qt.MouseButton.LeftButton)
    assert panel.map is not None, panel.status.text()
    xs, ys = panel.map.points[:, 0], panel.map.points[:, 1]
    viewport = panel.view.viewport()
    start = panel.view.viewport_point(xs.max() + 0.02 * np.ptp(xs), ys.min())
    end = QPointF(start.x() - 20, start.y() - 20)
    _mouse(viewport, QEvent.Type.MouseButtonPress, start, Qt.MouseButton.LeftButton)
    _mouse(viewport, QEvent.Type.MouseMove, end, Qt.MouseButton.LeftButton)
    _mouse(viewport, QEvent.Type.MouseButtonRelease, end, Qt.MouseButton.NoButton)
    assert window.state.temperature == 1.0
    note = window.samples_panel.temperature_note
    assert note.isVisible()
    text = note.text()
    assert "image's own" not in text and "exactly" not in text
    assert "moved on the latent map" in text and "goes back to 0.70" in text
    qtbot.wait(10)  # the layout makes room for the note's lines
    assert note.height() >= note.heightForWidth(note.width()), "the note is cut off"
    assert window.samples_panel.grab().save(str(screenshot_dir / "item9_map_move.png"))
