"""Disk space: the warning before the first step, and a failed save ending the run with one
sentence while the previous checkpoint stays intact. No disk is filled: a full disk is a
save that raises ENOSPC; a removed folder and a read-only one are real."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.files.checkpoint import estimate_checkpoint_bytes, load_checkpoint, read_checkpoint
from core.flow.model import FlowConfig
from core.runs import disk
from core.runs.events import EventSink
from core.runs.folder import LOCK_FILE
from core.training import trainer as trainer_module
from core.training.trainer import SaveFailedError, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = FlowConfig(in_channels=1, image_size=28, num_scales=2, mid_channels=4, num_blocks=1)


class ListSink(EventSink):
    """Keeps the events; ``at_step(step)`` runs after each step event."""

    def __init__(self, at_step=None) -> None:
        super().__init__("none")
        self.events: list[dict] = []
        self.at_step = at_step

    def emit(self, kind, /, **fields) -> None:
        self.events.append({"event": kind, **fields})
        if kind == "step" and self.at_step is not None:
            self.at_step(fields["step"])

    def messages(self, kind: str) -> list[str]:
        return [e["message"] for e in self.events if e["event"] == kind]


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    base = dict(
        dataset="mnist",
        data_dir=str(data),
        out=str(out),
        batch_size=8,
        max_steps=6,
        eval_every=2,
        eval_limit=8,
        log_every=1,
        warmup_steps=2,
        num_samples=4,
        precision="float32",
        class_stats_per_class=2,
    )
    base.update(changes)
    return TrainConfig(**base)


def _full_from_step(monkeypatch, first_bad_step: int) -> None:
    """Every checkpoint save from ``first_bad_step`` on fails as on a full disk."""
    real = trainer_module.save_checkpoint

    def save(path, model, meta=None, training=None):
        if meta["step"] >= first_bad_step:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, model, meta, training)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save)


def test_a_full_disk_ends_the_run_with_one_sentence_and_keeps_the_last_checkpoint(
    tmp_path, small_mnist, monkeypatch
):
    out = tmp_path / "run"
    _full_from_step(monkeypatch, 4)
    sink = ListSink()
    with pytest.raises(SaveFailedError) as err:
        Trainer(TINY, _config(small_mnist, out), sink).run()
    sentence = str(err.value)
    assert sentence.startswith(f"could not save latest.pt in {out}: the disk is full (")
    assert " free); the last good checkpoint is " in sentence
    assert sentence.endswith(f"{out / 'latest.pt'}, from step 2")
    assert "\n" not in sentence and "Errno" not in sentence
    assert sink.messages("error") == [sentence]
    assert read_checkpoint(out / "latest.pt")["meta"]["step"] == 2
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_the_command_line_prints_the_sentence_and_exits_4(tmp_path, small_mnist):
    out = tmp_path / "run"
    code = (
        "import errno, sys\n"
        "import core.training.trainer as t\n"
        "def full(*a, **k):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "t.save_checkpoint = full\n"
        "from core.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["train", "--data-dir", str(small_mnist), "--out", str(out), "--num-scales", "2"]
    argv += ["--mid-channels", "4", "--num-blocks", "1", "--batch-size", "8", "--max-steps", "2"]
    argv += ["--eval-limit", "8", "--precision", "float32", "--progress", "json"]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"realnvp train: error: could not save latest.pt in {out}: the disk")
    assert lines[0].endswith("no checkpoint of this run was saved before")
    assert '"event": "error"' in result.stdout.strip().splitlines()[-1]


def test_a_folder_removed_under_the_run_is_said_and_not_made_again(tmp_path, small_mnist):
    out = tmp_path / "run"

    def remove(step: int) -> None:
        if step == 3:
            shutil.rmtree(out)

    sink = ListSink(at_step=remove)
    with pytest.raises(SaveFailedError) as err:
        Trainer(TINY, _config(small_mnist, out), sink).run()
    sentence = str(err.value)
    assert "the output folder was removed during the run" in sentence
    assert f"the last checkpoint saved, {out / 'latest.pt'} from step 2, is gone" in sentence
    assert not out.exists()


def _read_only(folder: Path, on: bool) -> bool:
    """Make ``folder`` read-only (or writable again): its mode, or for root, who writes
    anyway, the immutable attribute. False where neither works here."""
    if os.name != "posix":
        return False
    if os.geteuid() != 0:
        os.chmod(folder, 0o555 if on else 0o755)
        return True
    flag = "+i" if on else "-i"
    done = subprocess.run(["chattr", flag, str(folder)], capture_output=True, check=False)
    return done.returncode == 0


def test_a_read_only_folder_is_said(tmp_path, small_mnist):
    out = tmp_path / "probe"
    out.mkdir()
    if not _read_only(out, True):
        pytest.skip("no way to make a folder read-only here")
    _read_only(out, False)
    out = tmp_path / "run"

    def lock_down(step: int) -> None:
        if step == 3:
            _read_only(out, True)

    try:
        with pytest.raises(SaveFailedError) as err:
            Trainer(TINY, _config(small_mnist, out), ListSink(at_step=lock_down)).run()
    finally:
        _read_only(out, False)
    assert "the folder is not writable (permission denied)" in str(err.value)
    assert str(err.value).endswith(f"{out / 'latest.pt'}, from step 2")
    assert read_checkpoint(out / "latest.pt")["meta"]["step"] == 2


@pytest.mark.slow
def test_a_disk_without_room_for_three_checkpoints_is_warned_about(
    tmp_path, small_mnist, monkeypatch
):
    monkeypatch.setattr(disk, "free_bytes", lambda path: 123_000)
    sink = ListSink()
    Trainer(TINY, _config(small_mnist, tmp_path / "run", max_steps=2), sink).run()
    (warning,) = sink.messages("warning")
    assert warning.startswith(f"only 123 kB free for {tmp_path / 'run'}, less than three")
    kinds = [e["event"] for e in sink.events]
    assert kinds.index("warning") < kinds.index("step")  # before the first step

    monkeypatch.setattr(disk, "free_bytes", lambda path: 10**12)
    sink = ListSink()
    Trainer(TINY, _config(small_mnist, tmp_path / "roomy", max_steps=2), sink).run()
    assert sink.messages("warning") == []


@pytest.mark.parametrize("ema", [0.0, 0.999])
def test_the_estimate_is_near_a_real_checkpoints_size(tmp_path, small_mnist, ema):
    out = tmp_path / "run"
    Trainer(TINY, _config(small_mnist, out, max_steps=2, ema=ema)).run()
    model, _ = load_checkpoint(out / "latest.pt")
    estimate = estimate_checkpoint_bytes(model, training=True, averaged=ema > 0)
    assert 0.8 < estimate / (out / "latest.pt").stat().st_size < 1.25


def test_sizes_read_as_people_write_them():
    assert [disk.format_bytes(n) for n in (512, 123_000, 45_600_000, 1_234_000_000)] == [
        "512 bytes",
        "123 kB",
        "45.6 MB",
        "1.23 GB",
    ]
