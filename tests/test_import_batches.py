"""A folder import in batches: the importer's batches, the gallery's one change per batch,
and the gallery list that inserts new rows instead of rebuilding."""

from __future__ import annotations

import numpy as np

from core.files.images import save_png
from explorer.panels import importer
from explorer.panels.importer import ImportedBatch, ImportedImage, ImportFailure, import_images
from explorer.state.gallery import EncodedImage, Gallery
from explorer.state.jobs import Progress


def fake_encoded(pixels: np.ndarray, bpd: float) -> EncodedImage:
    return EncodedImage(
        model_id=1,
        latents=(pixels.astype(np.float32),),
        reconstruction=pixels.copy(),
        error=np.zeros(pixels.shape, np.float32),
        bits_per_dim=bpd,
    )


def test_several_files_are_encoded_in_batches_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "BATCH", 4)
    for i in range(9):
        save_png(np.full((8, 8), i, np.uint8), tmp_path / f"{i}.png")
    (tmp_path / "5b.png").write_bytes(b"not a png")
    calls: list[int] = []

    def encode_many(pixels: np.ndarray) -> list[EncodedImage]:
        calls.append(len(pixels))
        return [fake_encoded(p, float(p.mean())) for p in pixels]

    def encode(pixels: np.ndarray) -> EncodedImage:
        raise AssertionError("several files never take the one-image path")

    items = list(import_images([tmp_path], encode, 1, 8, previews=False, encode_many=encode_many))
    batches = [it for it in items if isinstance(it, ImportedBatch)]
    failures = [it for it in items if isinstance(it, ImportFailure)]
    # The first file alone, so it shows at once; then 4 files a batch: 10 files, "5b" bad.
    assert calls == [1, 4, 3, 1]
    assert [f.path.endswith("5b.png") for f in failures] == [True]
    images = [image for batch in batches for image in batch.images]
    assert [int(image.pixels[0, 0, 0]) for image in images] == list(range(9))
    assert all(image.encoded.bits_per_dim == image.pixels.mean() for image in images)


def test_one_file_takes_the_one_image_path(tmp_path):
    save_png(np.full((8, 8), 7, np.uint8), tmp_path / "one.png")

    def encode_many(pixels: np.ndarray) -> list[EncodedImage]:
        raise AssertionError("one file is encoded alone")

    items = list(
        import_images(
            [tmp_path / "one.png"],
            lambda p: fake_encoded(p, 1.0),
            1,
            8,
            previews=False,
            encode_many=encode_many,
        )
    )
    assert [type(it) for it in items if not hasattr(it, "done")] == [ImportedImage]


def test_gallery_changes_are_announced_once_per_batch():
    gallery = Gallery()
    announced: list[int] = []
    gallery.changed.connect(lambda: announced.append(len(gallery)))
    pixels = np.zeros((1, 2, 2), np.uint8)
    with gallery.changes():
        with gallery.changes():
            first = gallery.add("a.png", pixels, fake_encoded(pixels, 1.0))
        gallery.add("b.png", pixels, fake_encoded(pixels, 2.0))
        gallery.set_roles(current_id=first.item_id)
        assert announced == []
    assert announced == [2]
    with gallery.changes():
        pass  # nothing changed: nothing announced
    assert announced == [2]
    gallery.add("a.png", pixels, fake_encoded(pixels, 3.0))
    assert [it.bits_per_dim for it in gallery.with_path("a.png")] == [1.0, 3.0]
    gallery.remove([first.item_id])
    assert [it.bits_per_dim for it in gallery.with_path("a.png")] == [3.0]
    assert announced == [2, 3, 2]


def test_gallery_list_inserts_new_rows_in_order_and_rebuilds_otherwise(qtbot):
    from explorer.panels.gallery import ID_ROLE, GalleryPanel

    gallery = Gallery()
    panel = GalleryPanel(gallery)
    qtbot.addWidget(panel)
    pixels = np.zeros((1, 2, 2), np.uint8)
    ids = [gallery.add(f"{i}.png", pixels, fake_encoded(pixels, float(i))).item_id for i in (3, 1)]
    panel.refresh()
    panel.select([ids[0]])
    first_row = panel.list.item(0)
    for bpd in (2.0, 5.0, 0.5):  # between, above and below the rows there
        gallery.add(f"{bpd}.png", pixels, fake_encoded(pixels, bpd))
    panel.refresh()

    def rows() -> list[float]:
        return [
            gallery[panel.list.item(r).data(ID_ROLE)].bits_per_dim
            for r in range(panel.list.count())
        ]

    assert rows() == [5.0, 3.0, 2.0, 1.0, 0.5]  # most bits/dim first
    assert panel.list.item(1) is first_row  # inserted around, not rebuilt
    assert panel.selected_ids() == [ids[0]]
    gallery.set_roles(a_id=ids[1])  # a badge changes: rebuilt, selection kept
    panel.refresh()
    assert rows() == [5.0, 3.0, 2.0, 1.0, 0.5]
    assert "[A]" in panel.list.item(3).text() and panel.selected_ids() == [ids[0]]
    gallery.remove([ids[0]])
    panel.refresh()
    assert rows() == [5.0, 2.0, 1.0, 0.5]


def test_files_known_by_path_and_content_hash_are_not_encoded(tmp_path):
    from explorer.panels.importer import AlreadyImported
    from explorer.state.gallery import pixel_digest

    for i in range(3):
        save_png(np.full((8, 8), i, np.uint8), tmp_path / f"{i}.png")
    one = str(tmp_path / "1.png")
    known = {(one, pixel_digest(np.full((1, 8, 8), 1, np.uint8))): 41}
    calls: list[int] = []

    def encode_many(pixels: np.ndarray) -> list[EncodedImage]:
        calls.append(len(pixels))
        return [fake_encoded(p, 1.0) for p in pixels]

    items = list(
        import_images([tmp_path], None, 1, 8, previews=False, encode_many=encode_many, known=known)
    )
    assert [i for i in items if isinstance(i, AlreadyImported)] == [AlreadyImported(one, 41)]
    assert sum(calls) == 2
    # the same path with other pixels (the file changed) is encoded
    known = {(one, pixel_digest(np.full((1, 8, 8), 9, np.uint8))): 41}
    items = list(
        import_images([one], lambda p: fake_encoded(p, 1.0), 1, 8, previews=False, known=known)
    )
    assert [type(i).__name__ for i in items if not isinstance(i, Progress)] == ["ImportedImage"]
