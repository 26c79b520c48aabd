"""The command line's rough edges from issue 25: each one line and status 2, or the right
thing done (encode many files and folders, info's summary, our own sentences)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.files.images import ImageLoadError, load_image
from core.training.data import load_mnist
from core.training.datasets import DatasetError

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return path


def _damaged_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_damaged_jpeg_is_our_sentence(tmp_path):
    path = _damaged_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(ImageLoadError) as err:
        load_image(path, 3, 32)
    assert str(err.value) == (
        f"{path}: the image is damaged or truncated: the file ends before the image does"
    )


@pytest.mark.slow
def test_encode_takes_folders_and_many_files_and_reports_the_bad_ones(tmp_path):
    good = [_png(tmp_path / "imgs" / f"g{i}.png", i) for i in range(2)]
    _png(tmp_path / "imgs" / "sub" / "g0.png", 5)  # the same name in a subfolder
    bad = _damaged_jpeg(tmp_path / "imgs" / "cut.jpg")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    out = tmp_path / "enc"
    result = _cli("encode", "bundled", str(good[0]), str(text), str(good[1]), "--out", str(out))
    assert result.returncode == 2
    assert len(result.stdout.splitlines()) == 2  # the good ones, around the bad one
    assert result.stderr.splitlines() == [
        f"realnvp encode: error: {text}: not an image file (format not recognised)",
        "realnvp encode: 1 of 3 inputs could not be encoded",
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "g0_latents.npz",
        "g0_recon.png",
        "g1_latents.npz",
        "g1_recon.png",
    ]

    folder_out = tmp_path / "enc-folder"
    result = _cli("encode", "bundled", str(tmp_path / "imgs"), "--out", str(folder_out), "--json")
    assert result.returncode == 2
    encoded = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert len(encoded) == 3 and str(bad) not in encoded
    assert f"{bad}: the image is damaged or truncated" in result.stderr
    assert (folder_out / "g0-2_recon.png").is_file()  # no file overwrote another


@pytest.mark.slow
def test_encode_failures_make_no_folder_and_a_file_as_out_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "never"
    result = _cli("encode", "bundled", str(empty), "--out", str(out))
    assert result.returncode == 2 and not out.exists()
    assert result.stderr == f"realnvp encode: error: {empty}: a folder without image files\n"
    result = _cli("encode", "bundled", str(_damaged_jpeg(tmp_path / "b.jpg")), "--out", str(out))
    assert result.returncode == 2 and not out.exists()
    target = tmp_path / "a.png"
    _png(target)
    result = _cli("encode", "bundled", str(target), "--out", str(target))
    assert result.returncode == 2
    assert result.stderr == (
        f"realnvp encode: error: --out {target} is a file; --out names a folder to write into\n"
    )


@pytest.mark.slow
def test_train_into_a_file_is_one_line(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"png")
    result = _cli("train", "--out", str(target), "--max-steps", "1")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"realnvp train: error: {target} is a file, not a folder; choose a folder for the run\n"
    )
    assert target.read_bytes() == b"png"


def test_info_summarises_class_statistics(capsys):
    from core.cli import main

    assert main(["info", "bundled", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out) < 5000 and "\\x" not in out
    info = json.loads(out)
    assert info["class_stats"].startswith("10 classes, 1,000 images each")
    assert main(["info", "bundled"]) == 0
    assert "class_stats: 10 classes, 1,000 images each" in capsys.readouterr().out


def test_a_failed_download_leaves_no_empty_data_folder(tmp_path):
    dest = tmp_path / "new" / "data"
    with pytest.raises(DatasetError, match="could not download"):
        load_mnist(dest, train=True, download=True, mirrors=("http://127.0.0.1:9/",))
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_training_on_a_folder_names_the_files_it_skips(tmp_path):
    data = tmp_path / "photos"
    for i in range(16):
        _png(data / f"{i:02d}.png", i)
    (data / "notes.png").write_text("not an image")
    result = _cli(
        "train", "--dataset", "folder", "--data-dir", str(data), "--channels", "1",
        "--image-size", "8", "--num-scales", "2", "--mid-channels", "4", "--num-blocks", "1",
        "--batch-size", "4", "--max-steps", "1", "--threads", "1", "--precision", "float32",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"warning: {data}: 1 unreadable file skipped: notes.png" in result.stderr
