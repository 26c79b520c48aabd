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

from core.files.checkpoint import read_checkpoint
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


# -- issue 35: nothing lost, nothing leaked --------------------------------------------------


def _run_checkpoint(path: Path, step: int = 120) -> Path:
    """A checkpoint as a run leaves it: weights and a training state."""
    from conftest import perturbed_model

    from core.files.checkpoint import save_checkpoint

    training = {"step": step, "optimizer": {}, "history": {"steps": [], "evals": [{"step": 100}]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, perturbed_model(), {"dataset": "mnist", "step": step}, training)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.strip()


def test_export_never_replaces_a_file_without_force(tmp_path, tiny_checkpoint, capsys):
    from core.cli import main

    grid = tmp_path / "grid.png"
    _png(grid)
    before = grid.read_bytes()
    assert main(["export", "bundled", str(grid)]) == 2
    assert _error_line(capsys) == (
        f"realnvp export: error: {grid} already exists; choose another file, or pass --force "
        "to replace it"
    )
    assert grid.read_bytes() == before
    assert main(["export", str(tiny_checkpoint), str(grid), "--force"]) == 0
    assert read_checkpoint(grid)["training"] is None


def test_export_refuses_a_runs_checkpoint_and_names_what_force_loses(tmp_path, capsys):
    from core.cli import main

    latest = _run_checkpoint(tmp_path / "runs" / "x" / "latest.pt")
    before = latest.read_bytes()
    for args in (["bundled", str(latest)], [str(latest), str(latest)]):  # also a.pt a.pt
        assert main(["export", *args]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"realnvp export: error: {latest} holds a run's training state")
        assert "at step 120" in line and "pass --force to replace it anyway" in line, line
        assert latest.read_bytes() == before
    assert main(["export", str(latest), str(latest), "--force"]) == 0
    err = capsys.readouterr().err
    assert f"{latest}'s training state (the optimizer and random states at step 120" in err
    assert read_checkpoint(latest)["training"] is None


def test_outputs_that_are_folders_or_below_files_are_one_sentence(
    tmp_path, tiny_checkpoint, capsys
):
    from core.cli import main

    digit = _png(tmp_path / "digit.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (["sample", str(tiny_checkpoint), "--out", f"{digit}/x.png"], f"{digit} is a file"),
        (["sample", str(tiny_checkpoint), "--out", str(folder)], f"--out {folder} is a folder"),
        (["export", str(tiny_checkpoint), str(folder)], f"OUT {folder} is a folder"),
        (["export", str(tiny_checkpoint), f"{digit}/m.pt"], f"{digit} is a file, not a folder"),
        (
            ["remote", "nohost.invalid", "fetch", "run", "--to", str(digit)],
            f"--to {digit} is a file",
        ),
    ]
    for args, words in cases:
        assert main(args) == 2, args
        line = _error_line(capsys)
        assert line.startswith(f"realnvp {args[0]}: error: ") and words in line, line
        assert "Errno" not in line and ".tmp" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit.png", "folder", "tiny.pt"]
    assert list(folder.iterdir()) == []


def test_sample_writes_the_format_its_suffix_names(tmp_path, tiny_checkpoint, capsys):
    from core.cli import main

    for name, magic in (("g.jpg", b"\xff\xd8\xff"), ("g.png", b"\x89PNG"), ("g.webp", b"RIFF")):
        assert (
            main(["sample", str(tiny_checkpoint), "--n", "4", "--out", str(tmp_path / name)]) == 0
        )
        assert (tmp_path / name).read_bytes().startswith(magic), name
    assert Image.open(tmp_path / "g.jpg").format == "JPEG"
    capsys.readouterr()
    assert main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "g.xyz")]) == 2
    assert "cannot write an image as a .xyz file; name a .bmp, .jpeg" in _error_line(capsys)
    assert not (tmp_path / "g.xyz").exists()


def test_resuming_a_checkpoint_without_training_state_is_one_sentence(
    tmp_path, tiny_checkpoint, capsys, monkeypatch
):
    from core.cli import main

    monkeypatch.chdir(tmp_path)
    for resume in ("bundled", str(tiny_checkpoint)):
        assert main(["train", "--resume", resume]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"realnvp train: error: {resume}: has no training state"), line
        assert "resume a run's latest.pt, or start a new run" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def _train(*args: str) -> list[str]:
    """``realnvp train`` words for a tiny model on ``small_mnist``: seconds, not minutes."""
    model = ["--num-scales", "2", "--mid-channels", "4", "--num-blocks", "1"]
    return ["train", *model, "--batch-size", "8", "--precision", "float32", *args]


def test_train_shows_the_class_statistics_and_a_finished_run_is_not_redone(
    tmp_path, small_mnist, capsys, one_torch_thread
):
    from core.cli import main

    out = tmp_path / "run"
    assert main(_train("--data-dir", str(small_mnist), "--out", str(out), "--max-steps", "2")) == 0
    # The lines as a terminal shows them: each one's last drawing, after its last \r.
    err = [line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.split("\n")]
    assert err[0].startswith("training ") and err[0].endswith(f" for 2 steps -> {out}")
    # The last step's line, the class statistics' own line below it, then the result.
    assert err[1].startswith(f"[{'#' * 30}] 2/2, epoch "), err
    assert err[2].startswith(f"class statistics [{'#' * 30}] 64/64 "), err
    assert err[3].startswith("done: finished at step 2"), err
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["task"] == "class statistics"
    assert progress[-1]["done"] == progress[-1]["total"] == 64

    # Resumed as it is: finished, and how to go on; nothing saved, measured or appended.
    latest = out / "latest.pt"
    record, saved = (out / "events.jsonl").read_bytes(), latest.read_bytes()
    assert main(_train("--resume", str(latest))) == 2
    assert _error_line(capsys) == (
        f"realnvp train: error: {latest}: the run is finished (step 2 of 2); to train it "
        f"further, start a new run from its weights with --init-from {latest}, or resume it "
        "with a longer --max-steps (above 2) or more --epochs"
    )
    assert main(_train("--resume", str(latest), "--max-steps", "1")) == 2
    assert "the run is at step 2, past the 1 steps asked for" in _error_line(capsys)
    assert (out / "events.jsonl").read_bytes() == record and latest.read_bytes() == saved

    # Given a new length, the header says where it resumes.
    assert main(_train("--resume", str(latest), "--max-steps", "3")) == 0
    err = capsys.readouterr().err
    assert err.startswith("resuming at step 2 of 3: "), err
    assert err.splitlines()[0].endswith(f"-> {out}")


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys")
def test_an_unwritable_output_names_the_file_not_a_temporary_one(tiny_checkpoint, capsys):
    """/sys takes no new files, even from root (where a read-only folder would not do)."""
    from core.cli import main

    assert main(["export", str(tiny_checkpoint), "/sys/m.pt"]) == 2
    assert _error_line(capsys) == "realnvp export: error: /sys/m.pt: permission denied"
    assert main(["sample", str(tiny_checkpoint), "--n", "1", "--out", "/sys/x.png"]) == 2
    assert _error_line(capsys) == "realnvp sample: error: /sys/x.png: permission denied"
