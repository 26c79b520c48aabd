"""Stopping a run on every platform: the stop file ``OUT/STOP`` saves and finishes a run
like SIGTERM, a stale one is ignored, and under ``torchrun`` (two gloo processes on the
CPU) a stop ends every process and ``torchrun`` itself with status 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.files.checkpoint import read_checkpoint
from core.flow.model import FlowConfig
from core.runs.events import EventSink
from core.runs.stopping import STOP_FILE
from core.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = FlowConfig(in_channels=1, image_size=28, num_scales=2, mid_channels=4, num_blocks=1)
TINY_FLAGS = ["--num-scales", "2", "--mid-channels", "4", "--num-blocks", "1"]


class StopAtStep(EventSink):
    """Creates the stop file once the run reports ``step``, as the panel or a user would."""

    def __init__(self, out: Path, step: int) -> None:
        super().__init__("none")
        self.out, self.step, self.events = out, step, []

    def emit(self, kind, /, **fields) -> None:
        self.events.append({"event": kind, **fields})
        if kind == "step" and fields["step"] == self.step:
            (self.out / STOP_FILE).touch()


def test_the_stop_file_saves_and_finishes_and_a_stale_one_is_ignored(tmp_path, small_mnist):
    out = tmp_path / "run"
    out.mkdir()
    (out / STOP_FILE).touch()  # left by an earlier run
    config = TrainConfig(
        data_dir=str(small_mnist),
        out=str(out),
        batch_size=8,
        max_steps=1000,
        eval_every=1000,
        eval_limit=8,
        log_every=1,
        num_samples=4,
    )
    sink = StopAtStep(out, 3)
    result = Trainer(TINY, config, sink).run()
    assert result["reason"] == "stopped" and result["step"] == 3
    assert sink.events[-1]["event"] == "done" and sink.events[-1]["reason"] == "stopped"
    assert read_checkpoint(out / "latest.pt")["meta"]["step"] == 3
    assert not (out / STOP_FILE).exists()  # removed once it has done its job


@pytest.mark.slow
def test_torchrun_stops_cleanly_with_status_0(tmp_path, small_mnist):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "core", "train", "--data-dir", str(small_mnist), "--out", str(out), *TINY_FLAGS]
    cmd += ["--batch-size", "8", "--max-steps", "100000", "--log-every", "1"]
    cmd += ["--eval-limit", "8", "--device", "cpu", "--threads", "1", "--progress", "json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    events = []
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))
            if events and events[-1]["event"] == "step" and events[-1]["step"] == 2:
                (out / STOP_FILE).touch()
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert status == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert events[0]["event"] == "start" and events[0]["world_size"] == 2
    done = events[-1]
    assert done["event"] == "done" and done["reason"] == "stopped" and done["step"] >= 2
    meta = read_checkpoint(out / "latest.pt")["meta"]
    assert meta["step"] == done["step"] and meta["images_seen"] == done["step"] * 8 * 2
    assert not (out / STOP_FILE).exists()
