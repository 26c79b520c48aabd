"""What the command line tells the user is true: the help lists every command, the advice
to pass --download can be followed, eval finds the checkpoint's own data, a closed pipe
ends quietly, the bar shows the final evaluation, bench prints readable lines, and an
exported checkpoint's figures agree with each other.

The data is a small MNIST-format folder written here, so these tests need no MNIST files
and never evaluate 10,000 images."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import core.training.data
from core.cli import COMMANDS, build_parser, main
from core.files.checkpoint import read_checkpoint, save_checkpoint
from core.flow.model import FlowConfig
from core.runs.events import EventSink

ROOT = Path(__file__).resolve().parents[1]
MNIST_SIZED = FlowConfig(in_channels=1, image_size=28, num_scales=2, mid_channels=4, num_blocks=1)


@pytest.fixture
def mnist_ckpt(tmp_path, make_perturbed_model) -> Path:
    model = make_perturbed_model(MNIST_SIZED, scale=0.01)
    return save_checkpoint(tmp_path / "m.pt", model, {"dataset": "mnist"})


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    description = build_parser().description
    for command in COMMANDS:
        assert command in description, command
        assert f"    {command} " in help_text, command


def test_the_advice_to_pass_download_can_be_followed(
    tmp_path, mnist_ckpt, small_mnist, monkeypatch, capsys
):
    """No network in tests: the download serves the small files (unchecked)."""

    def fetch(urls, dest: Path, check):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(gzip.compress((small_mnist / dest.name.removesuffix(".gz")).read_bytes()))
        return dest

    monkeypatch.setattr(core.training.data, "_download", fetch)
    empty = tmp_path / "data"
    assert main(["eval", str(mnist_ckpt), "--data-dir", str(empty), "--limit", "8"]) == 2
    assert "pass --download" in capsys.readouterr().err
    args = ["eval", str(mnist_ckpt), "--data-dir", str(empty), "--limit", "8", "--download"]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 8
    assert (empty / "t10k-images-idx3-ubyte.gz").is_file()

    shutil.rmtree(empty)
    out = tmp_path / "exported.pt"
    assert main(["export", str(mnist_ckpt), str(out), "--data-dir", str(empty), "--download"]) == 0
    assert read_checkpoint(out)["meta"]["test_bpd"] > 0
    assert main(["export", str(mnist_ckpt), str(out), "--download"]) == 2
    assert "--download needs --data-dir" in capsys.readouterr().err


def test_eval_uses_the_data_folder_the_checkpoint_records(
    tmp_path, small_mnist, make_perturbed_model, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # no ./data here
    model = make_perturbed_model(MNIST_SIZED, scale=0.01)
    recorded = save_checkpoint(
        tmp_path / "a.pt", model, {"dataset": "mnist", "data_dir": str(small_mnist)}
    )
    assert main(["eval", str(recorded), "--limit", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data_dir"] == str(small_mnist)
    # older checkpoints: in the training state only
    old = save_checkpoint(
        tmp_path / "b.pt",
        model,
        {"dataset": "mnist"},
        training={"train_config": {"data_dir": str(small_mnist)}},
    )
    assert main(["eval", str(old), "--limit", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data_dir"] == str(small_mnist)
    # a recorded folder that is not on this machine: ./data, and the message says so
    gone = save_checkpoint(
        tmp_path / "c.pt", model, {"dataset": "mnist", "data_dir": str(tmp_path / "gone")}
    )
    assert main(["eval", str(gone), "--limit", "8"]) == 2
    assert "not found in data" in capsys.readouterr().err


def test_export_keeps_best_test_bpd_at_or_below_test_bpd(tmp_path, mnist_ckpt, small_mnist, capsys):
    data = read_checkpoint(mnist_ckpt)
    for recorded_best in (0.5, 99.0):  # the run's best came from other weights / was worse
        data["meta"].update(test_bpd=98.0, best_test_bpd=recorded_best)
        src = tmp_path / f"src{recorded_best}.pt"
        torch.save(data, src)
        out = tmp_path / f"out{recorded_best}.pt"
        args = ["export", str(src), str(out), "--data-dir", str(small_mnist)]
        assert main(args) == 0
        meta = read_checkpoint(out)["meta"]
        assert meta["best_test_bpd"] == min(recorded_best, meta["test_bpd"])
        assert meta["best_test_bpd"] <= meta["test_bpd"]
    capsys.readouterr()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "core", *args]


@pytest.mark.slow
def test_a_closed_stdout_ends_quietly(tiny_checkpoint):
    proc = subprocess.Popen(
        _cli("info", str(tiny_checkpoint), "--json"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before the first byte
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == ""


@pytest.mark.slow
def test_training_into_a_closed_pipe_saves_and_ends_quietly(tmp_path, small_mnist):
    """``realnvp train --progress json | head -3``: the run stops with a checkpoint."""
    out = tmp_path / "run"
    model = ["--num-scales", "2", "--mid-channels", "4", "--num-blocks", "1", "--threads", "1"]
    steps = ["--batch-size", "8", "--max-steps", "100000", "--log-every", "1", "--eval-limit", "8"]
    proc = subprocess.Popen(
        _cli(
            "train",
            "--data-dir",
            str(small_mnist),
            "--out",
            str(out),
            *model,
            *steps,
            "--progress",
            "json",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # start, step 1, step 2
        proc.stdout.close()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    assert [json.loads(line)["event"] for line in lines] == ["start", "step", "step"]
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "Broken" not in stderr, stderr
    meta = read_checkpoint(out / "latest.pt")["meta"]
    assert meta["step"] >= 2 and meta["data_dir"] == str(small_mnist.absolute())


def test_the_bar_ends_with_the_final_evaluation():
    stream = io.StringIO()
    sink = EventSink("bar", stream=stream)
    sink.emit("start", total_steps=4, parameters=10, device="cpu", out="runs/x")
    for step in (2, 4):
        sink.emit("step", step=step, epoch=0, loss=3.0, images_per_s=100.0)
    sink.emit("eval", step=4, epoch=0, test_bpd=2.34567)
    sink.emit("done", step=4, reason="finished", test_bpd=2.34567, best_test_bpd=2.34567)
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("done: finished at step 4, test 2.3457 bits/dim"), last

    sink.emit("eval", step=6, epoch=0, test_bpd=2.2)
    sink.emit("done", step=9, reason="stopped", test_bpd=2.2, best_test_bpd=2.1)
    last = stream.getvalue().splitlines()[-1]
    assert "test 2.2000 bits/dim (evaluated at step 6), best 2.1000" in last, last


def test_bench_prints_the_gui_figures_as_lines(capsys):
    from explorer_bench.__main__ import print_report as _print

    machine = {"torch": "2", "device": "cpu", "threads": 1, "python": "3"}
    figures = {"p50_ms": 7.25, "p95_ms": 9.5, "whole_grid_p50_ms": 20.0, "whole_grid_p95_ms": 25.0}
    gui = {
        "decode_1": {"p50_ms": 3.0, "p95_ms": 4.0},
        "plan": {"threads": 1},
        "images_1": {"cache": figures},
        "images_16": {"cache": figures, "no_cache": figures},
    }
    report = {
        "machine": machine,
        "matmul_peak_gflops": 1.0,
        "bf16_matmul_peak_gflops": 2.0,
        "bf16_matmul_size": 1024,
        "models": {},
    }
    _print({**report, "gui": {"bundled": gui, "cifar10": {"error": "no display"}}})
    text = capsys.readouterr().out
    assert "{" not in text and "p50_ms" not in text, text
    assert "first pixels p50 7.2 ms p95 9.5 ms | whole grid p50 20.0 ms" in text, text
    assert "gui cifar10: no display" in text, text


def test_fetch_draws_one_bar_a_file_in_megabytes():
    from core.training.bars import Bars

    stream = io.StringIO()
    bars = Bars(in_bytes=True, stream=stream)
    for name, total in (("latest.pt", 3_000_000), ("events.jsonl", 2_000)):
        for done in (0, total // 2, total):
            bars(name, done, total)
    # As a terminal shows it: each line's last drawing.
    lines = [line.rsplit("\r", 1)[-1] for line in stream.getvalue().split("\n")]
    assert lines[0].startswith(f"latest.pt [{'#' * 30}] 3.00MB/3.00MB ["), lines
    assert lines[1].startswith(f"events.jsonl [{'#' * 30}] 2.00kB/2.00kB ["), lines
    assert lines[2:] == [""], lines


def test_a_slurm_request_written_as_options_parses_back_to_itself():
    """The page's command line for a Slurm run (``SlurmRequest.cli_words``) is read back
    by ``realnvp remote HOST train --slurm`` into the same request."""
    from core.cli import slurm_request
    from core.runs.slurm import SlurmRequest

    for request in (
        SlurmRequest(),
        SlurmRequest(
            partition="gpu", gpus=2, nodes=3, time="1-02:00:00", account="lab a",
            qos="high", extra=("--mem=8G", "--constraint=a100"),
        ),
    ):  # fmt: skip
        words = ["remote", "login", "train", *request.cli_words(), "--dataset", "mnist"]
        args = build_parser().parse_args(words)
        assert args.slurm and slurm_request(args) == request
