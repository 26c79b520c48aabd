"""TensorBoard event files beside a run's events (core/training/tensorboard.py), read back
with TensorBoard's own reader."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import FlowConfig
from core.runs.folder import EVENTS_FILE, TENSORBOARD_DIR, claim_run_folder, read_events
from core.training.trainer import TrainConfig, Trainer

TINY = FlowConfig(in_channels=1, image_size=28, num_scales=2, mid_channels=4, num_blocks=1)
SCALAR_TAGS = {"train/loss", "train/learning_rate", "train/images_per_s", "test/bits_per_dim"}


def config(out: Path, data: Path, **kwargs) -> TrainConfig:
    base = dict(
        dataset="mnist", data_dir=str(data), out=str(out), batch_size=16, eval_every=2,
        eval_limit=24, log_every=1, warmup_steps=1, lr_schedule="constant", num_samples=4,
        seed=3, class_stats_per_class=2, ema_bn_images=16,
    )  # fmt: skip
    base.update(kwargs)
    return TrainConfig(**base)


def board(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import (
        IMAGES,
        SCALARS,
        EventAccumulator,
    )

    reader = EventAccumulator(str(out / TENSORBOARD_DIR), size_guidance={SCALARS: 0, IMAGES: 0})
    reader.Reload()
    return reader


@pytest.mark.slow
def test_a_resumed_run_appends_to_its_tensorboard_files_without_a_step_twice(tmp_path, small_mnist):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    Trainer(TINY, config(run, small_mnist, max_steps=2)).run()
    shutil.copy(run / "latest.pt", tmp_path / "at-step-2.pt")
    Trainer(None, config(run, small_mnist, max_steps=4), resume=run / "latest.pt").run()
    # As if the run was killed after step 4 with its last checkpoint from step 2: the
    # resumed run logs steps 3 and 4 again, and TensorBoard shows them once, its own.
    shutil.copy(tmp_path / "at-step-2.pt", run / "latest.pt")
    Trainer(None, config(run, small_mnist, max_steps=6), resume=run / "latest.pt").run()

    reader = board(run)
    assert set(reader.Tags()["scalars"]) == SCALAR_TAGS
    events = read_events(run / EVENTS_FILE)
    last_start = max(i for i, e in enumerate(events) if e["event"] == "start")
    steps = [e for e in events[last_start:] if e["event"] == "step"]
    losses = {s.step: s.value for s in reader.Scalars("train/loss")}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert len(reader.Scalars("train/loss")) == 6  # each step once
    for e in steps:  # steps 3 to 6: the last segment's values
        assert losses[e["step"]] == pytest.approx(e["loss"], rel=1e-6)
        rate = {s.step: s.value for s in reader.Scalars("train/learning_rate")}[e["step"]]
        assert rate == pytest.approx(e["lr"], rel=1e-6)
    assert [s.step for s in reader.Scalars("train/images_per_s")] == [1, 2, 3, 4, 5, 6]
    evals = [e for e in events if e["event"] == "eval"]
    tested = {s.step: s.value for s in reader.Scalars("test/bits_per_dim")}
    assert sorted(tested) == [2, 4, 6]
    assert tested[6] == pytest.approx(evals[-1]["test_bpd"], rel=1e-6)
    # The sample grids, as images at their steps; the last is the PNG the trainer saved.
    assert reader.Tags()["images"] == ["samples"]
    images = reader.Images("samples")
    assert [i.step for i in images] == [2, 4, 6]
    shown = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)))
    saved = np.asarray(Image.open(run / "samples" / "samples_0000006.png").convert("RGB"))
    assert shown.shape[:2] == (images[-1].height, images[-1].width) == saved.shape[:2]
    assert np.array_equal(shown[..., :3], saved)


@pytest.mark.slow
def test_without_tensorboard_a_run_writes_no_tensorboard_files(tmp_path, small_mnist, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run = tmp_path / "run"
    Trainer(TINY, config(run, small_mnist, max_steps=2)).run()
    assert (run / "latest.pt").is_file() and not (run / TENSORBOARD_DIR).exists()
    kinds = [e["event"] for e in read_events(run / EVENTS_FILE)]
    assert kinds.count("step") == 2 and kinds.count("start") == 1


def test_a_fresh_start_moves_the_earlier_tensorboard_files_aside(tmp_path):
    run = tmp_path / "run"
    (run / TENSORBOARD_DIR).mkdir(parents=True)
    (run / TENSORBOARD_DIR / "events.out.tfevents.1").write_bytes(b"earlier")
    (run / "latest.pt").write_bytes(b"earlier")
    lock = claim_run_folder(run, overwrite=True)
    lock.release()
    assert not (run / TENSORBOARD_DIR).exists()
    moved = lock.previous / TENSORBOARD_DIR / "events.out.tfevents.1"
    assert moved.read_bytes() == b"earlier"
