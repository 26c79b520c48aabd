"""Data loaders on real MNIST, on generated folders and archives, and on bad files."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import shutil
import struct
import tarfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import MNIST_DIR, needs_mnist
from PIL import Image

from core.files.images import ImageLoadError, load_image, make_grid, to_uint8
from core.training.data import (
    DatasetError,
    load_cifar10,
    load_dataset,
    load_folder,
    load_mnist,
    parse_idx_images,
)


@needs_mnist
def test_real_mnist_train_and_test():
    train = load_mnist(MNIST_DIR, train=True)
    test = load_mnist(MNIST_DIR, train=False)
    assert train.images.shape == (60000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert str(train.images.dtype) == "torch.uint8"
    # the first training digit is the well-known "5": its ink sits in the centre
    first = train.images[0, 0].numpy()
    assert first[:4].sum() == 0 and first[10:18, 10:18].sum() > 0


@needs_mnist
def test_mnist_uncompressed_files(tmp_path):
    raw = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw)
    assert load_mnist(tmp_path, train=False).images.shape == (10000, 1, 28, 28)


def test_mnist_missing_and_truncated(tmp_path):
    with pytest.raises(DatasetError, match=r"not found.*--download"):
        load_mnist(tmp_path, train=True)
    header = np.array([2051, 10, 28, 28], dtype=">u4").tobytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + b"\0" * 100)
    with pytest.raises(DatasetError, match="truncated"):
        load_mnist(tmp_path, train=True)
    with pytest.raises(DatasetError, match="magic"):
        parse_idx_images(np.array([2049, 1, 1, 1], dtype=">u4").tobytes() + b"\0")
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match="damaged gzip"):
        load_mnist(tmp_path, train=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a temporary folder."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@needs_mnist
def test_mnist_download_verifies_checksum(http_folder, tmp_path):
    root, url = http_folder
    shutil.copy(MNIST_DIR / "t10k-images-idx3-ubyte.gz", root)
    dest = tmp_path / "dl"
    ds = load_mnist(dest, train=False, download=True, mirrors=(url,))
    assert ds.images.shape == (10000, 1, 28, 28)
    assert (dest / "t10k-images-idx3-ubyte.gz").is_file()
    # a mirror serving the wrong bytes is rejected and leaves nothing behind
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load_mnist(dest, train=True, download=True, mirrors=(url,))
    assert not list(dest.glob("train-images*"))


def _cifar_archive(path: Path, per_batch: int = 4) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(0)
    test_data = None
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            if name == "test_batch":
                test_data = data
            blob = pickle.dumps({b"data": data, b"labels": [0] * per_batch}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return test_data, hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_download_and_read(http_folder, tmp_path):
    root, url = http_folder
    test_data, md5 = _cifar_archive(root / "cifar-10-python.tar.gz")
    dest = tmp_path / "cifar"
    train = load_cifar10(dest, train=True, download=True, mirrors=(url,), md5=md5)
    test = load_cifar10(dest, train=False)
    assert train.images.shape == (20, 3, 32, 32)
    assert np.array_equal(test.images.numpy(), test_data.reshape(-1, 3, 32, 32))


def test_cifar10_bad_checksum(http_folder, tmp_path):
    root, url = http_folder
    _cifar_archive(root / "cifar-10-python.tar.gz")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load_cifar10(tmp_path / "c", train=True, download=True, mirrors=(url,), md5="0" * 32)


def test_cifar10_refuses_code_in_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match=r"refusing to load builtins\.print"):
        load_cifar10(tmp_path, train=False)


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(
            folder / f"rgb_{i}.png"
        )
    sub = folder / "nested"
    sub.mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(sub / "gray.jpg")
    Image.new("P", (16, 16)).save(sub / "palette.gif")
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(sub / "transparent.png")
    Image.new("CMYK", (16, 16)).save(sub / "cmyk.jpg")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(sub / "deep.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(good, "JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[:200])
    (folder / "notes.txt").write_text("ignored: not an image suffix")


def test_folder_dataset_skips_bad_files(tmp_path):
    _write_images(tmp_path / "imgs")
    train = load_folder(tmp_path / "imgs", True, channels=3, image_size=8, test_fraction=0.0)
    assert train.images.shape == (17, 3, 8, 8)
    assert train.skipped == 3
    gray = load_folder(tmp_path / "imgs", True, channels=1, image_size=8, test_fraction=0.0)
    assert gray.images.shape[1] == 1


def test_folder_split_is_stable_and_disjoint(tmp_path):
    _write_images(tmp_path / "imgs")
    a = load_folder(tmp_path / "imgs", True, 3, 8, test_fraction=0.3)
    b = load_folder(tmp_path / "imgs", False, 3, 8, test_fraction=0.3)
    assert len(a) + b.skipped + len(b) + a.skipped == 20
    again = load_folder(tmp_path / "imgs", True, 3, 8, test_fraction=0.3)
    assert np.array_equal(a.images.numpy(), again.images.numpy())


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files found"):
        load_dataset("folder", tmp_path / "empty", True, channels=1, image_size=8)
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset("folder", tmp_path / "missing", True)
    with pytest.raises(DatasetError, match="unknown data set"):
        load_dataset("imagenet", tmp_path, True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("nope")
    with pytest.raises(DatasetError, match="none of the 1 image files could be read"):
        load_folder(tmp_path / "bad", True, 1, 8)


def test_folder_loading_can_be_cancelled(tmp_path):
    _write_images(tmp_path / "imgs")
    with pytest.raises(DatasetError, match="cancelled"):
        load_folder(tmp_path / "imgs", True, 1, 8, progress=lambda done, total: done < 3)


def test_load_image_modes_and_geometry(tmp_path):
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # the centre square is white, the sides black
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 3, 10)
    assert out.shape == (3, 10, 10) and out.min() == 255
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png", 1, 8).min() == 255  # alpha flattened on white
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png", 1, 8).min() == 255


def test_load_image_exif_orientation(tmp_path):
    img = np.zeros((4, 8), dtype=np.uint8)
    img[:, :4] = 255  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: white ends up on the right
    Image.fromarray(img, "L").save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "rot.jpg", 1, 4)[0]
    assert out[:, 3].mean() > 200 and out[:, 0].mean() < 50


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "bomb", "missing"])
def test_load_image_bad_input(tmp_path, kind):
    path = tmp_path / "bad.png"
    if kind == "empty":
        path.write_bytes(b"")
        message = "empty"
    elif kind == "text":
        path.write_text("hello")
        message = "not an image"
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
            buf, "PNG"
        )
        path.write_bytes(buf.getvalue()[:300])
        message = "damaged or truncated"
    elif kind == "bomb":
        path.write_bytes(_png_header(50000, 50000))
        message = "too large"
    else:
        path = tmp_path / "nothing.png"
        message = "no such file"
    with pytest.raises(ImageLoadError, match=message):
        load_image(path, 3, 8)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("L", (8, 8), v) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "anim.gif", 1, 8).max() < 50


def test_grid_and_uint8():
    images = np.arange(4 * 1 * 2 * 2, dtype=np.uint8).reshape(4, 1, 2, 2)
    grid = make_grid(images, nrow=2, pad=1)
    assert grid.shape == (7, 7, 1)
    assert np.array_equal(grid[1:3, 1:3, 0], images[0, 0])
    assert np.array_equal(grid[4:6, 4:6, 0], images[3, 0])
    assert np.array_equal(to_uint8(np.array([0.0, 0.5, 1.0, (7 + 0.3) / 256])), [0, 128, 255, 7])


def test_a_folder_names_the_files_it_skips(tmp_path):
    from core.training.data import load_folder
    from core.training.datasets import describe_skipped

    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    for i in range(7):
        (tmp_path / f"bad{i}.png").write_text("not an image")
    both = [load_folder(tmp_path, train, 1, 8) for train in (True, False)]
    names = sorted({n for ds in both for n in ds.skipped_names})
    assert names == [f"bad{i}.png" for i in range(7)]
    assert all(ds.skipped == len(ds.skipped_names) for ds in both)
    assert describe_skipped(names) == (
        "7 unreadable files skipped: bad0.png, bad1.png, bad2.png, bad3.png, bad4.png and 2 more"
    )
    assert describe_skipped(["a.jpg"]) == "1 unreadable file skipped: a.jpg"
    for i in range(12):
        (tmp_path / f"{i}.png").unlink()
    with pytest.raises(DatasetError, match=r"none of the 7 image files could be read \(7 unread"):
        load_folder(tmp_path, True, 1, 8)
