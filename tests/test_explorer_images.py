"""Your own images in the explorer: drop, encode, reconstruct, bits/dim, gallery, A → B
interpolation, level mixing, directions from examples, export, and bad input.

Everything is driven through the real window with real ``QDropEvent`` objects, on tiny
real models; the engine runs synchronously unless a test says otherwise.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MNIST_DIR, assert_frame_shows, force_bf16_faster, needs_mnist
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from core.files.checkpoint import load_checkpoint, save_checkpoint
from core.files.images import center_crop_box, load_image, save_png
from core.flow.likelihood import describe_image
from core.flow.model import ENCODE_SEED, FlowConfig
from core.training.data import load_mnist
from explorer.state.blend import LevelSource
from explorer.state.directions import load_direction, save_direction
from explorer.state.export import mp4_available

# 28x28 grey like MNIST; 2 scales keep it small: levels (2, 14, 14) and (2, 14, 14)... at
# 3 scales 28 leaves 7x7: three levels, so level mixing has a middle level to test.
MNIST_TINY = FlowConfig(in_channels=1, image_size=28, num_scales=3, mid_channels=4, num_blocks=1)
RGB_TINY = FlowConfig(in_channels=3, image_size=16, num_scales=2, mid_channels=4, num_blocks=1)
RECONSTRUCTION_TOLERANCE = 1e-4  # in [0, 1] units; float32 round trips give about 1e-6


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_pngs(tmp_path_factory) -> list[Path]:
    """Eight real test-set digits saved as PNG files."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST files not found in {MNIST_DIR} (set REALNVP_MNIST_DIR)")
    images = load_mnist(MNIST_DIR, train=False).images[:8]  # (8, 1, 28, 28) uint8
    folder = tmp_path_factory.mktemp("digits")
    return [save_png(img[0].numpy(), folder / f"digit{i}.png") for i, img in enumerate(images)]


@pytest.fixture
def grey_pngs(tmp_path) -> list[Path]:
    """Four synthetic 28x28 grey images (strokes on black), for tests that need no MNIST."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        img = np.zeros((28, 28), np.uint8)
        img[6 + i : 22, 10 + 2 * i : 14 + 2 * i] = 255
        img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
        paths.append(save_png(img, tmp_path / f"grey{i}.png"))
    return paths


@pytest.fixture
def mnist_checkpoint(tmp_path, make_perturbed_model) -> Path:
    return save_checkpoint(
        tmp_path / "mnist_tiny.pt",
        make_perturbed_model(MNIST_TINY, seed=1, scale=0.01),
        meta={"dataset": "mnist", "test_bpd": 4.0},
    )


@pytest.fixture
def rgb_checkpoint(tmp_path, make_perturbed_model) -> Path:
    return save_checkpoint(
        tmp_path / "rgb_tiny.pt", make_perturbed_model(RGB_TINY, seed=2, scale=0.01)
    )


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients, a few shapes and sensor-like noise: ``uint8 (H, W, 3)``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([0.5 + 0.4 * np.sin(3 * x + 1), 0.3 + 0.5 * y, 0.6 - 0.3 * x * y], axis=-1)
    cx, cy = width * 0.55, height * 0.45
    disc = (
        (np.mgrid[0:height, 0:width][1] - cx) ** 2 + (np.mgrid[0:height, 0:width][0] - cy) ** 2
    ) < (0.2 * min(width, height)) ** 2
    rgb[disc] = [0.9, 0.8, 0.2]
    rgb += rng.normal(0, 0.03, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def drop(window, paths) -> None:
    """Drag ``paths`` over the window and drop them, as the platform would."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPointF(window.width() / 2, window.height() / 2)
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    event = QDropEvent(pos, Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(window, event)
    assert event.isAccepted()


def latents_bytes(window) -> list[bytes]:
    return [z.tobytes() for z in window.state.latents()]


def shown(window) -> np.ndarray:
    return window.samples_panel.view.images.copy()


def core_bits_per_dim(checkpoint: Path, pixels: np.ndarray) -> float:
    """What ``realnvp encode`` prints for ``pixels``: the likelihood map's total with the
    encode seed's noise. It is ``RealNVP.bits_per_dim`` with that seed up to float32
    rounding (the two sum the same terms in another order)."""
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        figure = describe_image(model, pixels, None).summary["bits_per_dim"]
        x8 = torch.from_numpy(pixels)[None]
        direct = model.bits_per_dim(x8, torch.Generator().manual_seed(ENCODE_SEED)).item()
    assert figure == pytest.approx(direct, rel=2e-5)
    return figure


# -- dropping and encoding --------------------------------------------------------------------


@needs_mnist
def test_dropped_digit_is_encoded_reconstructed_and_becomes_the_view(
    make_window, mnist_checkpoint, mnist_pngs
):
    window = make_window(mnist_checkpoint)
    drop(window, [mnist_pngs[0]])
    assert window.last_error is None
    gallery = window.images.gallery
    assert len(gallery) == 1
    item = gallery.current
    pixels = load_image(mnist_pngs[0], 1, 28)
    np.testing.assert_array_equal(item.pixels, pixels)
    # Exact up to float error, and the UI says how exact.
    assert item.encoded.max_abs_error < RECONSTRUCTION_TOLERANCE
    np.testing.assert_array_equal(item.encoded.reconstruction, pixels)
    panel = window.images.images_panel
    assert f"{item.encoded.max_abs_error:.1e}" in panel.exact_label.text()
    assert "all 784 values identical" in panel.exact_label.text()
    np.testing.assert_array_equal(panel.original.view.images[0], pixels)
    np.testing.assert_array_equal(panel.reconstruction.view.images[0], pixels)
    assert panel.error.view.images is not None
    # bits/dim is core's figure, and is shown.
    expected = core_bits_per_dim(mnist_checkpoint, pixels)
    assert item.bits_per_dim == pytest.approx(expected, abs=1e-6)
    assert f"{expected:.3f}" in panel.likelihood_label.text()
    window.images.gallery_panel.refresh()  # the list refreshes a moment after a change
    assert f"{expected:.3f} bits/dim" in window.images.gallery_panel.list.item(0).text()
    # The image's latents are the view: temperature 1, one image, the reconstruction shown.
    assert window.state.n_images == 1 and window.state.temperature == 1.0
    for z, level in zip(window.state.latents(), item.latents):
        np.testing.assert_array_equal(z[0], level)
    np.testing.assert_array_equal(shown(window)[0], pixels)
    assert window.tabs.currentWidget() is panel


@needs_mnist
def test_temperature_and_level_resample_act_on_the_image_and_undo_restores(
    make_window, mnist_checkpoint, mnist_pngs
):
    window = make_window(mnist_checkpoint)
    samples = latents_bytes(window)
    drop(window, [mnist_pngs[1]])
    image = latents_bytes(window)
    window.samples_panel.temperature.slider.setValue(50)
    after = window.state.latents()
    item = window.images.gallery.current
    np.testing.assert_array_equal(after[0][0], item.latents[0] * np.float32(0.5))
    window.levels_panel.rows[0].resample_button.click()
    assert latents_bytes(window)[1:] == [z.tobytes() for z in after[1:]]
    window.menus.undo_action.trigger()
    window.menus.undo_action.trigger()
    assert latents_bytes(window) == image
    window.menus.undo_action.trigger()  # before the drop: the samples, exactly
    assert latents_bytes(window) == samples


@pytest.mark.slow
def test_several_files_and_a_folder(make_window, mnist_checkpoint, grey_pngs, tmp_path):
    window = make_window(mnist_checkpoint)
    gallery = window.images.gallery
    drop(window, grey_pngs[:2])
    assert len(gallery) == 2
    first, second = gallery.items
    assert (gallery.a_id, gallery.b_id, gallery.current_id) == (
        first.item_id,
        second.item_id,
        first.item_id,
    )
    folder = tmp_path / "more"
    folder.mkdir()
    for i, path in enumerate(grey_pngs[2:]):
        (folder / f"sub{i}").mkdir()
        (folder / f"sub{i}" / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image, and not listed")
    drop(window, [folder])
    assert len(gallery) == 4
    assert window.last_error is None
    # A single drop after that: the image shown before becomes A, the new one B.
    shown_before = gallery.current_id
    drop(window, [grey_pngs[0]])  # the same file again: shown again, not added twice
    assert len(gallery) == 4
    assert (gallery.a_id, gallery.b_id) == (shown_before, first.item_id)


def test_rgb_photo_is_cropped_resized_and_reconstructed(make_window, rgb_checkpoint, tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(photo_like(400, 300)).save(photo, quality=92)
    window = make_window(rgb_checkpoint)
    drop(window, [photo])
    item = window.images.gallery.current
    assert item is not None, window.last_error
    np.testing.assert_array_equal(item.pixels, load_image(photo, 3, 16))
    assert item.pixels.shape == (3, 16, 16)
    assert item.encoded.max_abs_error < RECONSTRUCTION_TOLERANCE
    assert np.abs(item.encoded.reconstruction.astype(int) - item.pixels).max() <= 1
    assert item.bits_per_dim == pytest.approx(
        core_bits_per_dim(rgb_checkpoint, item.pixels), abs=1e-6
    )
    # The preview of the crop: the whole picture with the centre square marked.
    preview = item.preview
    assert preview is not None and preview.file_size == (400, 300)
    h, w = preview.image.shape[:2]
    assert (w, h) == (128, 96)
    assert preview.crop_box == center_crop_box(w, h)
    assert "400×300 → centre 300×300 → 16×16" in window.images.images_panel.file_label.text()
    assert shown(window).shape == (1, 3, 16, 16)


def test_gallery_sorts_by_bits_per_dim(make_window, mnist_checkpoint, grey_pngs, tmp_path):
    noise = tmp_path / "noise.png"
    save_png(np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8), noise)
    window = make_window(mnist_checkpoint)
    drop(window, [*grey_pngs, noise])
    gallery, panel = window.images.gallery, window.images.gallery_panel
    ordered = gallery.sorted("bpd_desc")
    figures = [it.bits_per_dim for it in ordered]
    assert figures == sorted(figures, reverse=True)
    panel.refresh()
    names = [panel.list.item(i).text().split("\n")[0].split()[0] for i in range(panel.list.count())]
    assert names == [it.name for it in ordered]
    panel.sort.setCurrentIndex(panel.sort.findData("bpd_asc"))
    assert panel.list.item(0).text().startswith(ordered[-1].name)


# -- interpolation and level mixing ------------------------------------------------------------


def test_interpolation_endpoints_are_a_and_b(make_window, mnist_checkpoint, grey_pngs):
    window = make_window(mnist_checkpoint)
    drop(window, grey_pngs[:2])
    images, panel = window.images, window.images.images_panel
    a, b = images.gallery.a, images.gallery.b
    for mode in ("linear", "spherical"):
        panel.mode.setCurrentIndex(panel.mode.findData(mode))
        for position, item in ((100, b), (0, a)):
            panel.t.slider.setValue(37)
            panel.t.slider.setValue(position)
            for z, level in zip(window.state.latents(), item.latents):
                np.testing.assert_array_equal(z[0], level)
            np.testing.assert_array_equal(shown(window)[0], item.encoded.reconstruction)
        panel.t.slider.setValue(50)  # half way: neither end
        assert not np.array_equal(window.state.latents()[-1][0], a.latents[-1])
        assert not np.array_equal(window.state.latents()[-1][0], b.latents[-1])
    # The strip: N frames from A to B, ends equal to the reconstructions.
    panel.strip_frames.setValue(5)
    strip = images.last_strip
    assert strip.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(strip[0], a.encoded.reconstruction)
    np.testing.assert_array_equal(strip[-1], b.encoded.reconstruction)
    np.testing.assert_array_equal(panel.strip.images, strip)


def test_level_mixing_takes_each_level_from_the_chosen_image(
    make_window, mnist_checkpoint, grey_pngs
):
    window = make_window(mnist_checkpoint)
    drop(window, grey_pngs[:2])
    panel = window.images.images_panel
    a, b = window.images.gallery.a, window.images.gallery.b
    assert len(panel.level_rows) == 3
    panel.level_rows[2].set_source(LevelSource.A)  # coarsest from A
    panel.level_rows[0].set_source(LevelSource.B)  # finest from B
    panel.t.slider.setValue(30)  # the middle level follows the slider
    z = window.state.latents()
    np.testing.assert_array_equal(z[2][0], a.latents[2])
    np.testing.assert_array_equal(z[0][0], b.latents[0])
    a64, b64 = a.latents[1].astype(np.float64), b.latents[1].astype(np.float64)
    expected = ((1.0 - 0.3) * a64 + 0.3 * b64).astype(np.float32)
    np.testing.assert_array_equal(z[1][0], expected)
    # Every level pinned: coarse structure of B with the fine detail of A, at any t.
    panel.level_rows[2].set_source(LevelSource.B)
    panel.level_rows[1].set_source(LevelSource.B)
    panel.level_rows[0].set_source(LevelSource.A)
    for position in (0, 64, 100):
        panel.t.slider.setValue(position)
        z = window.state.latents()
        for level, source in ((0, a), (1, b), (2, b)):
            np.testing.assert_array_equal(z[level][0], source.latents[level])
    strip = window.images.last_strip
    assert all(np.array_equal(frame, strip[0]) for frame in strip)  # nothing follows t


# -- keep coarse, resample fine ---------------------------------------------------------------


def test_keep_coarse_resample_fine_makes_a_grid_of_variations(
    make_window, mnist_checkpoint, grey_pngs, qtbot
):
    window = make_window(mnist_checkpoint)
    drop(window, [grey_pngs[0]])
    item = window.images.gallery.current
    panel = window.images.images_panel
    panel.keep_levels.setValue(2)
    panel.variations.setValue(9)
    panel.vary_button.click()
    z = window.state.latents()
    assert z[0].shape[0] == 9 and shown(window).shape[0] == 9
    for level in (1, 2):  # kept: the image's latents in every cell, locked
        assert all(np.array_equal(row, item.latents[level]) for row in z[level])
        assert window.state.level(level).locked
    np.testing.assert_array_equal(z[0][0], item.latents[0])  # the first cell is the image
    assert not any(np.array_equal(row, item.latents[0]) for row in z[0][1:])
    np.testing.assert_array_equal(shown(window)[0], item.encoded.reconstruction)
    # R now redraws only the fine level; K again from the keyboard.
    kept = latents_bytes(window)[1:]
    window.menus.resample_action.trigger()
    assert latents_bytes(window)[1:] == kept
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    qtbot.keyClick(window.samples_panel.view, Qt.Key.Key_K)
    assert window.state.n_images == 9


# -- directions ---------------------------------------------------------------------------


def test_direction_from_two_groups_moves_the_latent_by_the_mean_difference(
    make_window, mnist_checkpoint, grey_pngs, tmp_path
):
    window = make_window(mnist_checkpoint)
    drop(window, grey_pngs)
    images = window.images
    gallery_panel, directions = images.gallery_panel, images.directions_panel
    gallery_panel.refresh()
    ids = [it.item_id for it in images.gallery.items]
    gallery_panel.select(ids[:2])
    directions.selection_buttons["A"].click()
    gallery_panel.select(ids[2:])
    directions.selection_buttons["B"].click()
    directions.name.setText("wider")
    directions.create_button.click()
    assert len(window.state.directions) == 1 and len(directions.rows) == 1
    direction = window.state.directions[0].direction
    assert direction.name == "wider" and (direction.count_a, direction.count_b) == (2, 2)
    items = images.gallery.items
    for level, vector in enumerate(direction.vectors):
        mean_a = np.mean([it.latents[level] for it in items[:2]], axis=0, dtype=np.float64)
        mean_b = np.mean([it.latents[level] for it in items[2:]], axis=0, dtype=np.float64)
        np.testing.assert_allclose(vector, mean_b - mean_a, rtol=1e-6, atol=1e-6)

    images.show(ids[0])
    before = window.state.latents()
    pixels_before = shown(window)
    directions.rows[0].slider.slider.setValue(150)
    after = window.state.latents()
    for z0, z1, vector in zip(before, after, direction.vectors):
        np.testing.assert_array_equal(z1, z0 + np.float32(1.5) * vector)
    assert not np.array_equal(shown(window), pixels_before)
    directions.rows[0].slider.slider.setValue(0)
    assert [z.tobytes() for z in window.state.latents()] == [z.tobytes() for z in before]

    # Saved and loaded as plain arrays; a loaded direction is a slider like any other.
    path = images.save_direction_file(0, tmp_path / "wider.npz")
    with np.load(path, allow_pickle=False) as data:
        assert str(data["name"]) == "wider"
    drop(window, [path])
    assert len(window.state.directions) == 2
    loaded = window.state.directions[1].direction
    for a, b in zip(loaded.vectors, direction.vectors):
        np.testing.assert_array_equal(a, b)
    assert load_direction(path).name == "wider"


def test_direction_for_another_model_or_damaged_is_refused(
    make_window, mnist_checkpoint, rgb_checkpoint, grey_pngs, tmp_path
):
    from explorer.state.directions import Direction

    window = make_window(mnist_checkpoint)
    drop(window, [grey_pngs[0]])
    latents = latents_bytes(window)
    wrong = save_direction(
        Direction("rgb", (np.zeros((6, 8, 8)), np.zeros((6, 8, 8)))), tmp_path / "wrong.npz"
    )
    assert not window.images.load_direction_file(wrong)
    assert "levels" in window.last_error
    hostile = tmp_path / "hostile.npz"
    np.savez(hostile, format=np.array([object()], dtype=object))
    assert not window.images.load_direction_file(hostile)
    assert window.state.directions == () and latents_bytes(window) == latents


# -- export ------------------------------------------------------------------------------------


def test_export_strip_png_and_gif(make_window, mnist_checkpoint, grey_pngs, tmp_path):
    window = make_window(mnist_checkpoint)
    drop(window, grey_pngs[:2])
    images, panel = window.images, window.images.images_panel
    a = images.gallery.a
    panel.strip_frames.setValue(4)
    png = np.asarray(Image.open(images.export_strip(tmp_path / "strip.png")))
    assert png.shape == (28 + 4, 4 * 30 + 2)
    np.testing.assert_array_equal(png[2:30, 2:30], a.encoded.reconstruction[0])

    panel.animation_frames.setValue(6)
    finished = []
    images.export_finished.connect(finished.append)
    images.export_animation(tmp_path / "blend.gif", "gif")
    assert finished == [tmp_path / "blend.gif"]
    gif = Image.open(tmp_path / "blend.gif")
    assert gif.n_frames == 6 + 4  # A → B and back, without repeating the ends
    first = np.asarray(gif.convert("L"))
    factor = first.shape[0] // 28
    assert factor * 28 >= 256
    np.testing.assert_array_equal(first[::factor, ::factor], a.encoded.reconstruction[0])
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.slow
def test_cancelled_export_writes_nothing(make_window, mnist_checkpoint, grey_pngs, tmp_path):
    window = make_window(mnist_checkpoint)
    drop(window, grey_pngs[:2])
    images = window.images
    images.images_panel.animation_frames.setValue(40)
    window.tasks.progressed.connect(lambda task, progress: task.cancel())
    finished = []
    images.export_finished.connect(finished.append)
    images.export_animation(tmp_path / "never.gif", "gif")
    assert finished == [None]
    assert list(tmp_path.glob("*.gif")) == [] and not list(tmp_path.glob(".*"))
    assert "cancelled" in window.statusBar().currentMessage()


@pytest.mark.skipif(not mp4_available(), reason="imageio-ffmpeg not installed")
def test_export_mp4(make_window, mnist_checkpoint, grey_pngs, tmp_path):
    window = make_window(mnist_checkpoint)
    drop(window, grey_pngs[:2])
    window.images.images_panel.animation_frames.setValue(4)
    window.images.export_animation(tmp_path / "blend.mp4", "mp4")
    data = (tmp_path / "blend.mp4").read_bytes()
    assert len(data) > 1000 and b"ftyp" in data[:32]


# -- bad input ------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims ``width`` x ``height`` pixels (a decompression
    bomb's header: the data would only be inflated on decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo_like(64, 64)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"just some text\n", "not an image"),
        ("fake.png", b"this is not a png at all", "not an image"),
        ("empty.png", b"", "empty"),
        ("cut.jpg", None, "damaged or truncated"),
        ("bomb.png", png_claiming(50_000, 50_000), "too large"),
        ("weights.pt.gz", gzip.compress(b"junk"), "not an image"),
    ],
    ids=["text", "fake-png", "zero-bytes", "truncated-jpeg", "decompression-bomb", "unknown"],
)
@pytest.mark.slow
def test_bad_files_get_a_clear_message_and_keep_the_view(
    make_window, mnist_checkpoint, tmp_path, name, content, message
):
    path = tmp_path / name
    path.write_bytes(truncated_jpeg() if content is None else content)
    window = make_window(mnist_checkpoint)
    before, pixels = latents_bytes(window), shown(window)
    drop(window, [path])
    assert message in window.last_error and name in window.last_error
    assert window.error_box is not None and window.error_box.isVisible()
    assert len(window.images.gallery) == 0
    assert latents_bytes(window) == before
    np.testing.assert_array_equal(shown(window), pixels)
    assert not window.task_progress.isVisible()
    window.error_box.close()


def test_a_bad_file_among_good_ones_costs_only_itself(
    make_window, mnist_checkpoint, grey_pngs, tmp_path
):
    bad = tmp_path / "zero.jpg"
    bad.write_bytes(b"")
    window = make_window(mnist_checkpoint)
    drop(window, [grey_pngs[0], bad, grey_pngs[1]])
    assert len(window.images.gallery) == 2
    assert "1 of 3 could not be used" in window.last_error and "zero.jpg" in window.last_error
    assert window.images.gallery.current.name == grey_pngs[0].name


def test_animated_gif_gives_its_first_frame(make_window, mnist_checkpoint, tmp_path):
    frames = [np.full((28, 28), v, np.uint8) for v in (30, 200, 120)]
    frames[0][5:20, 12:16] = 255
    path = tmp_path / "anim.gif"
    Image.fromarray(frames[0]).save(
        path, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]], duration=100
    )
    window = make_window(mnist_checkpoint)
    drop(window, [path])
    item = window.images.gallery.current
    assert window.last_error is None and item is not None
    np.testing.assert_array_equal(item.pixels[0], frames[0])


@pytest.mark.slow
def test_folder_of_300_files_shows_progress_and_can_be_cancelled(
    make_window, mnist_checkpoint, tmp_path
):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        save_png(rng.integers(0, 256, (28, 28), dtype=np.uint8), folder / f"{i:03d}.png")
    window = make_window(mnist_checkpoint)
    seen = []

    def on_progress(task, progress) -> None:
        seen.append((progress.done, progress.total))
        assert window.task_progress.isVisible()
        if progress.done >= 12:
            window.task_progress.cancel_button.click()

    window.tasks.progressed.connect(on_progress)
    drop(window, [folder])
    report = window.images.last_report
    assert report.cancelled
    # Files are encoded in batches: the cancel takes effect before the next batch, and
    # every image of the batches done is kept.
    done = seen[-1][0]
    assert seen[-1][1] == 300 and 12 <= done < 300
    assert len(window.images.gallery) == len(report.ids) == done
    assert window.images.gallery.current is not None  # what was imported is kept
    assert f"Import cancelled: {done} images imported" in window.statusBar().currentMessage()
    assert not window.task_progress.isVisible()
    assert window.last_error is None


def _gated_import_window(
    make_window, mnist_checkpoint, qtbot, monkeypatch, after: int = 1, bf16_frames: bool = False
):
    """A threaded window whose import waits at its file number ``after`` (from 0) until
    ``gate`` is set (however fast the machine, it still runs when the test acts), and the
    number of images each batched encode was asked for. ``bf16_frames``: the render plan
    measures bf16 decodes faster (as a CPU with AMX may) and has chosen bf16 frames
    before the window is returned."""
    import itertools
    import threading

    from explorer.panels import importer

    gate, calls, read_preview = threading.Event(), itertools.count(), importer.read_preview

    def gated_preview(path):
        if next(calls) >= after:
            gate.wait(30)
        return read_preview(path)

    monkeypatch.setattr(importer, "read_preview", gated_preview)
    window = make_window(threaded=True)
    if bf16_frames:
        force_bf16_faster(monkeypatch, window.engine)
    with qtbot.waitSignal(window.frame_shown, timeout=30_000):
        window.open_checkpoint(mnist_checkpoint)
    if bf16_frames:
        qtbot.waitUntil(lambda: bool(window.engine.plan.precisions), timeout=60_000)
        assert set(window.engine.plan.precisions.values()) == {"bf16"}, window.engine.render_status
    encoded: list[int] = []
    encode_images = window.engine.encode_images

    def counting(pixels, model_id=None):
        encoded.append(len(pixels))
        return encode_images(pixels, model_id)

    monkeypatch.setattr(window.engine, "encode_images", counting)
    return window, gate, encoded


@pytest.mark.slow
@pytest.mark.parametrize("frames", ["measured", "bf16"])
def test_threaded_import_and_cancel_from_the_status_bar(
    make_window, mnist_checkpoint, grey_pngs, tmp_path, qtbot, monkeypatch, frames
):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):
        (folder / f"{i:03d}.png").write_bytes(grey_pngs[i % 4].read_bytes())
    window, gate, _ = _gated_import_window(
        make_window, mnist_checkpoint, qtbot, monkeypatch, after=2, bf16_frames=frames == "bf16"
    )
    with qtbot.waitSignal(window.images.image_shown, timeout=30_000):
        drop(window, [folder])
    assert window.task_progress.isVisible()
    with qtbot.waitSignal(window.images.import_finished, timeout=30_000) as blocker:
        window.task_progress.cancel_button.click()
        gate.set()
    report = blocker.args[0]
    assert report.cancelled and 1 <= len(report.ids) < 300
    assert len(window.images.gallery) == len(report.ids)
    qtbot.waitUntil(lambda: not window.task_progress.isVisible(), timeout=10_000)
    # The view shows the first image's reconstruction, rendered on the worker.
    first = window.images.gallery[report.ids[0]]
    qtbot.waitUntil(lambda: window.last_frame.request_id == window.last_request_id, timeout=30_000)
    frame = window.last_frame
    np.testing.assert_array_equal(shown(window), frame.images)
    # The reconstruction came from the batched float32 encode; the frame may be bf16.
    assert_frame_shows(frame, first.encoded.reconstruction, shown(window)[0])
    if frames == "bf16":
        assert frame.precision == "bf16"


def test_drops_of_files_in_the_gallery_wait_visibly_and_encode_nothing(
    make_window, mnist_checkpoint, grey_pngs, tmp_path, qtbot, monkeypatch
):
    """The same folder dropped three times: the second and third drops wait behind the
    first (the status bar says how many), then find every file in the gallery by its
    content hash and encode none of them."""
    folder = tmp_path / "six"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.png").write_bytes(grey_pngs[i % 4].read_bytes())
    window, gate, encoded = _gated_import_window(make_window, mnist_checkpoint, qtbot, monkeypatch)
    reports = []
    window.images.import_finished.connect(reports.append)
    for _ in range(3):
        drop(window, [folder])
    assert window.tasks.waiting == 2
    assert "2 more waiting" in window.task_progress.label.text()
    gate.set()
    qtbot.waitUntil(lambda: len(reports) == 3, timeout=60_000)
    assert sum(encoded) == 6  # the first drop's six images, nothing after
    assert len(window.images.gallery) == 6
    assert [(len(r.ids), r.existing) for r in reports] == [(6, 0), (6, 6), (6, 6)]
    assert window.statusBar().currentMessage() == "No new images: 6 already in the gallery"
    assert "waiting" not in window.task_progress.label.text()


def test_cancel_in_the_status_bar_clears_the_waiting_imports(
    make_window, mnist_checkpoint, grey_pngs, qtbot, monkeypatch
):
    window, gate, encoded = _gated_import_window(make_window, mnist_checkpoint, qtbot, monkeypatch)
    reports = []
    window.images.import_finished.connect(reports.append)
    for pair in (grey_pngs[:2], grey_pngs[2:], grey_pngs[1:3]):
        drop(window, pair)
    assert window.tasks.waiting == 2
    window.task_progress.cancel_button.click()
    gate.set()
    qtbot.waitUntil(lambda: len(reports) == 3, timeout=60_000)
    assert all(r.cancelled for r in reports)
    # Only the running import did any work (as far as it got); the waiting two none.
    assert [r.ids for r in reports[1:]] == [[], []] and sum(encoded) <= 2
    names = {item.name for item in window.images.gallery.items}
    assert names <= {grey_pngs[0].name, grey_pngs[1].name}
    assert not window.tasks.busy
    qtbot.waitUntil(lambda: not window.task_progress.isVisible(), timeout=10_000)


@pytest.mark.slow
def test_a_new_model_re_encodes_the_gallery(
    make_window, mnist_checkpoint, grey_pngs, tmp_path, make_perturbed_model
):
    window = make_window(mnist_checkpoint)
    drop(window, grey_pngs[:3])
    gallery = window.images.gallery
    a_name, b_name = gallery.a.name, gallery.b.name
    other = save_checkpoint(
        tmp_path / "other.pt", make_perturbed_model(MNIST_TINY, seed=7, scale=0.01)
    )
    assert window.open_checkpoint(other)
    assert len(gallery) == 3
    assert {it.model_id for it in gallery.items} == {window.engine.model_id}
    assert (gallery.a.name, gallery.b.name) == (a_name, b_name)
    assert gallery.a.bits_per_dim == pytest.approx(core_bits_per_dim(other, gallery.a.pixels))


# -- the numbers behind interpolation and directions (no Qt) ---------------------------------


def test_lerp_and_slerp_end_exactly_at_a_and_b():
    from explorer.state.blend import lerp, slerp

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4, 4), dtype=np.float32), rng.standard_normal((2, 4, 4))
    b = b.astype(np.float32)
    for mix in (lerp, slerp):
        assert mix(a, b, 0.0).tobytes() == a.tobytes()
        assert mix(a, b, 1.0).tobytes() == b.tobytes()
    # Spherical keeps the norm of equal-norm endpoints half way; linear shrinks it.
    b = b * (np.linalg.norm(a) / np.linalg.norm(b))
    half_s, half_l = slerp(a, b, 0.5), lerp(a, b, 0.5)
    assert np.linalg.norm(half_s) == pytest.approx(np.linalg.norm(a), rel=1e-5)
    assert np.linalg.norm(half_l) < np.linalg.norm(a)
    np.testing.assert_allclose(slerp(a, 2 * a, 0.5), 1.5 * a, rtol=1e-6)  # parallel: a line


def test_direction_is_the_mean_difference_and_its_file_refuses_pickles(tmp_path):
    from explorer.state.directions import DirectionFileError, direction_from_groups

    rng = np.random.default_rng(1)
    group_a = [rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 4, 2, 2))]
    group_b = [rng.standard_normal((5, 2, 4, 4)), rng.standard_normal((5, 4, 2, 2))]
    d = direction_from_groups("x", group_a, group_b)
    for v, za, zb in zip(d.vectors, group_a, group_b):
        np.testing.assert_allclose(v, zb.mean(0) - za.mean(0), rtol=1e-6, atol=1e-7)
    assert (d.count_a, d.count_b) == (3, 5)
    loaded = load_direction(save_direction(d, tmp_path / "x.npz"))
    for a, b in zip(loaded.vectors, d.vectors):
        assert a.tobytes() == b.tobytes()
    for content in (b"", b"junk", b"PK\x03\x04 cut"):
        (tmp_path / "bad.npz").write_bytes(content)
        with pytest.raises(DirectionFileError, match=r"bad\.npz"):
            load_direction(tmp_path / "bad.npz")


@pytest.mark.slow
def test_screenshot_with_images_waits_for_the_import_and_the_strip(
    qapp, mnist_checkpoint, grey_pngs, tmp_path, explorer_settings, one_torch_thread
):
    from explorer.app import main

    path = tmp_path / "images.png"
    argv = ["--screenshot", str(path), "--threads", "1", str(mnist_checkpoint)]
    assert main([*argv, "--images", *map(str, grey_pngs[:2])]) == 0
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 300 and image.std() > 10


# -- what a person meets: selection, the t slider after a drop, repeated drops -----------------


def click_row(panel, row: int, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    from pytestqt.qtbot import QtBot

    rect = panel.list.visualItemRect(panel.list.item(row))
    QtBot.mouseClick(panel.list.viewport(), Qt.MouseButton.LeftButton, modifier, rect.center())


def test_gallery_keeps_its_selection_when_it_refreshes(
    make_window, mnist_checkpoint, grey_pngs, qtbot
):
    window = make_window(mnist_checkpoint)
    drop(window, grey_pngs[:3])
    panel = window.images.gallery_panel
    panel.refresh()
    click_row(panel, 0)
    click_row(panel, 2, Qt.KeyboardModifier.ControlModifier)
    chosen = set(panel.selected_ids())
    assert len(chosen) == 2
    window.images.gallery.swap_ab()  # any gallery change refreshes the list a moment later
    qtbot.waitUntil(lambda: not panel._refresh_timer.isActive())
    assert set(panel.selected_ids()) == chosen  # a direction group's selection survives
    click_row(panel, 1)
    only = panel.selected_ids()
    qtbot.keyClick(window, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)  # use as A
    assert window.images.gallery.a_id == only[0]
    qtbot.waitUntil(lambda: not panel._refresh_timer.isActive())
    assert panel.selected_ids() == only
    assert panel.show_button.isEnabled() and panel.b_button.isEnabled()


def test_after_a_two_image_drop_the_slider_and_image_box_match_the_view(
    make_window, mnist_checkpoint, grey_pngs, qtbot
):
    window = make_window(mnist_checkpoint)
    drop(window, [grey_pngs[3]])  # an image is the view before the pair is dropped
    drop(window, grey_pngs[:2])
    gallery, panel = window.images.gallery, window.images.images_panel
    a = gallery.a
    assert (a.name, gallery.b.name) == (grey_pngs[0].name, grey_pngs[1].name)
    assert gallery.current_id == a.item_id
    np.testing.assert_array_equal(shown(window)[0], a.encoded.reconstruction)
    assert panel.t.value() == 0.0  # the view shows A: the slider says so
    assert panel.file_label.text().startswith(a.name)
    # A nudge moves a little from A, not to B; the image box says the view is a blend.
    panel.t.slider.setFocus()
    qtbot.keyClick(panel.t.slider, Qt.Key.Key_Right)
    assert panel.t.value() == pytest.approx(0.01)
    assert gallery.current_id is None
    assert "blend" in panel.file_label.text().lower()
    assert grey_pngs[3].name not in panel.file_label.text()
    assert not panel.original.view.isVisible() or panel.original.view.images is None
    qtbot.keyClick(panel.t.slider, Qt.Key.Key_Home)  # back at A: the image box shows A
    assert gallery.current_id == a.item_id
    assert panel.file_label.text().startswith(a.name)


@pytest.mark.slow
def test_dropping_images_already_there_says_how_many_were_new(
    make_window, mnist_checkpoint, grey_pngs
):
    window = make_window(mnist_checkpoint)
    drop(window, grey_pngs[:2])
    assert window.statusBar().currentMessage() == "Imported 2 images"
    drop(window, grey_pngs[:3])
    message = window.statusBar().currentMessage()
    assert "1 new image" in message and "2 already in the gallery" in message
    drop(window, grey_pngs[:3])
    assert "no new images" in window.statusBar().currentMessage().lower()
    assert len(window.images.gallery) == 3


def test_a_blend_shows_no_empty_test_set_axes_and_says_where_its_bits_are_measured(
    make_window, mnist_checkpoint, grey_pngs, qtbot, screenshot_dir
):
    window = make_window(mnist_checkpoint)
    window.state.set_temperature(0.7)
    drop(window, grey_pngs[:2])
    panel = window.images.images_panel
    bits = panel.likelihood_panel
    window.show_images_tab()
    assert bits.histogram_plot.isVisible() and bits.levels_plot.isVisible()  # image A's
    panel.t.slider.setFocus()
    qtbot.keyClick(panel.t.slider, Qt.Key.Key_PageUp)
    assert 0 < panel.t.value() < 1 and "blend" in panel.file_label.text().lower()
    # No axes without a measurement; the words say where the blend's bits are measured.
    assert not bits.histogram_plot.isVisible() and not bits.levels_plot.isVisible()
    assert not bits.heat_box.isVisible()
    assert "Likelihood tab" in bits.verdict_label.text()
    note = window.samples_panel.temperature_note
    assert "a blend of images A and B" in note.text() and "image's own" not in note.text()
    qtbot.wait(10)
    assert panel.grab().save(str(screenshot_dir / "item9_blend_bits.png"))
    # What the note says works: the Likelihood tab measures the blend in the samples grid.
    window.show_tab(window.sample_likelihood.panel)
    qtbot.waitUntil(lambda: window.sample_likelihood.panel.view is not None, timeout=10_000)
    assert window.sample_likelihood.panel.histogram_plot.isVisible()
    # Back at A: the image's own figures and axes again.
    window.show_images_tab()
    qtbot.keyClick(panel.t.slider, Qt.Key.Key_Home)
    assert bits.histogram_plot.isVisible() and bits.view is not None
