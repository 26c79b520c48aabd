"""The trainer: events, exact resume, NaN guard, stop signals, and two gloo processes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import MNIST_DIR, needs_mnist

from core import FlowConfig
from core.files.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from core.runs.events import EventSink
from core.stats.typicality import TypicalityReference
from core.training import trainer as train_module
from core.training.trainer import TrainConfig, Trainer, TrainingError

pytestmark = needs_mnist

ROOT = Path(__file__).resolve().parents[1]
TINY = FlowConfig(in_channels=1, image_size=28, num_scales=2, mid_channels=4, num_blocks=1)


def config(out: Path, **kwargs) -> TrainConfig:
    base = dict(
        dataset="mnist",
        data_dir=str(MNIST_DIR),
        out=str(out),
        batch_size=16,
        max_steps=6,
        eval_every=1000,
        eval_limit=64,
        log_every=2,
        warmup_steps=3,
        num_samples=4,
        seed=3,
        class_stats_per_class=4,  # the class statistics at the end: a few images suffice
        ema_bn_images=64,  # the averaged weights' batch norm: a few images suffice
    )
    base.update(kwargs)
    return TrainConfig(**base)


class ListSink(EventSink):
    def __init__(self) -> None:
        super().__init__("none")
        self.events: list[dict] = []

    def emit(self, kind, /, **fields) -> None:
        self.events.append({"event": kind, **fields})

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events]


@pytest.mark.slow
def test_run_emits_events_and_writes_files(tmp_path):
    sink = ListSink()
    result = Trainer(TINY, config(tmp_path / "run", eval_every=4), sink).run()
    kinds = sink.kinds()
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert sink.events[0]["threads"] == torch.get_num_threads()  # a reopened run shows it
    assert kinds.count("step") == 3 and kinds.count("eval") == 2
    steps = [e for e in sink.events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [2, 4, 6]
    assert all(e["loss"] > 0 and e["images_per_s"] > 0 for e in steps)
    samples = [Path(e["path"]) for e in sink.events if e["event"] == "samples"]
    assert all(p.is_file() for p in samples) and len(samples) == 2
    assert result["reason"] == "finished" and result["step"] == 6
    model, meta = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert meta["step"] == 6 and meta["test_bpd"] == pytest.approx(result["test_bpd"])
    assert (tmp_path / "run" / "best.pt").is_file()
    assert model.config == TINY
    # the last evaluation leaves the typicality reference of its 64 test images
    reference = TypicalityReference.from_meta(meta)
    assert reference is not None and reference.images == 64 and reference.dataset == "mnist"
    assert float(np.mean(reference.bits_per_dim)) == pytest.approx(meta["test_bpd"], abs=1e-4)


PRECISIONS = pytest.mark.parametrize("precision", ["float32", "bf16"])


@PRECISIONS
@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, precision):
    # A run lengthened on resume: with a flat rate the first four steps are the same steps
    # (tests/test_recipe.py resumes a cosine schedule within its planned length).
    flat = dict(precision=precision, lr_schedule="constant")
    Trainer(TINY, config(tmp_path / "full", max_steps=8, **flat)).run()
    Trainer(TINY, config(tmp_path / "half", max_steps=4, **flat)).run()
    Trainer(
        None,
        config(tmp_path / "half", max_steps=8, **flat),
        resume=tmp_path / "half" / "latest.pt",
    ).run()
    full = read_checkpoint(tmp_path / "full" / "latest.pt")
    resumed = read_checkpoint(tmp_path / "half" / "latest.pt")
    assert resumed["training"]["step"] == 8
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    full_opt = full["training"]["optimizer"]["state"]
    res_opt = resumed["training"]["optimizer"]["state"]
    assert all(torch.equal(full_opt[k]["exp_avg"], res_opt[k]["exp_avg"]) for k in full_opt)


def test_bf16_run_evaluates_in_float32_and_says_its_precision(tmp_path, monkeypatch):
    from core.flow.model import mean_bits_per_dim
    from core.training.data import load_mnist

    def autocast_seen(self, test):
        # every training step runs in CPU bf16 autocast; evaluation never does
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_evaluate(self, test)

    seen: list[bool] = []
    real_evaluate = Trainer.evaluate_per_image
    monkeypatch.setattr(Trainer, "evaluate_per_image", autocast_seen)
    sink = ListSink()
    trainer = Trainer(TINY, config(tmp_path / "run", precision="bf16"), sink)
    result = trainer.run()
    start = sink.events[0]
    assert start["precision"] == "bf16" and "asked for" in start["precision_reason"]
    assert seen == [False] and trainer.channels_last
    model, meta = load_checkpoint(tmp_path / "run" / "latest.pt")
    images = load_mnist(MNIST_DIR, train=False).images[:64]
    assert meta["test_bpd"] == result["test_bpd"] == mean_bits_per_dim(model, images)


@pytest.mark.parametrize("bf16_faster", [True, False], ids=["bf16-units", "no-bf16-units"])
def test_auto_takes_the_measured_precision(tmp_path, monkeypatch, bf16_faster):
    """CI has no bf16 units: the measurement's outcome is forced both ways."""
    fast, slow = {"float32": 10.0, "bf16": 2.0}, {"float32": 2.0, "bf16": 30.0}
    probe = fast if bf16_faster else slow
    measured = []
    monkeypatch.setattr(train_module, "conv_probe_ms", lambda *a: probe)

    def measure(model, batch, device, recipe):
        measured.append(batch)
        return dict(fast)

    monkeypatch.setattr(train_module, "measure_step_ms", measure)
    sink = ListSink()
    trainer = Trainer(TINY, config(tmp_path / "run", max_steps=2), sink)
    trainer.run()
    start = sink.events[0]
    want = "bf16" if bf16_faster else "float32"
    assert start["precision"] == want and start["precision_reason"].startswith(f"{want} (auto")
    assert measured == ([16] if bf16_faster else [])  # the step is timed only after the probe
    assert trainer.channels_last  # float32 steps on the CPU run channels_last too


def test_auto_measures_on_a_copy(tmp_path):
    from core.flow.model import RealNVP
    from core.training.step import measure_step_ms

    model = RealNVP(FlowConfig(1, 8, 2, 4, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ms = measure_step_ms(model, 2, torch.device("cpu"), config(tmp_path))
    assert set(ms) == {"float32", "bf16"} and min(ms.values()) > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_resume_needs_training_state(tmp_path):
    from core.files.checkpoint import save_checkpoint
    from core.flow.model import RealNVP

    path = save_checkpoint(tmp_path / "bare.pt", RealNVP(TINY))
    with pytest.raises(CheckpointError, match="no training state"):  # a user error: status 2
        Trainer(None, config(tmp_path / "x"), resume=path)


@PRECISIONS
@pytest.mark.slow
def test_nan_batches_are_skipped_then_stop_the_run(tmp_path, monkeypatch, precision):
    real_batch = Trainer._batch
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        x = real_batch(self, *args)
        if calls["n"] == 3 or calls["n"] > 4:
            return torch.full_like(x, float("nan"))
        return x

    monkeypatch.setattr(Trainer, "_batch", poisoned)
    sink = ListSink()
    trainer = Trainer(
        TINY,
        config(tmp_path / "run", max_steps=50, eval_every=4, max_nonfinite=5, precision=precision),
        sink,
    )
    with pytest.raises(TrainingError, match="5 non-finite losses in a row"):
        trainer.run()
    assert sink.kinds()[-1] == "error"
    # the step-4 checkpoint was written after one skipped batch and is intact
    model, meta = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert meta["step"] == 4
    assert all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )
    steps = [e for e in sink.events if e["event"] == "step"]
    assert steps[1]["nonfinite"] == 1


@pytest.mark.parametrize(
    ("fused", "precision"),
    [(True, "float32"), (False, "float32"), (True, "bf16")],
    ids=["fused-adam", "plain-adam", "fused-adam-bf16"],
)
@pytest.mark.slow
def test_skipped_step_changes_nothing(tmp_path, monkeypatch, fused, precision):
    if not fused:  # an older torch without the fused kernel: the host looks at the flag
        monkeypatch.setattr(train_module, "make_adam", _plain_adam)
    monkeypatch.setattr(
        Trainer,
        "_batch",
        lambda self, images, perm, pos, noise: torch.full((16, 1, 28, 28), float("nan")),
    )
    trainer = Trainer(TINY, config(tmp_path / "run", max_steps=1, precision=precision))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(before[key], value), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("graph", [True, False], ids=["cuda-graph", "eager"])
def test_cuda_run_skips_a_nan_batch_on_the_device(tmp_path, monkeypatch, graph):
    real_batch = Trainer._batch
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        x = real_batch(self, *args)
        assert x.is_cuda
        return torch.full_like(x, float("nan")) if calls["n"] == 6 else x  # a replayed step

    monkeypatch.setattr(Trainer, "_batch", poisoned)
    sink = ListSink()
    cfg = config(tmp_path / "run", device="cuda", max_steps=10, cuda_graph=graph)
    trainer = Trainer(TINY, cfg, sink)
    result = trainer.run()
    assert result["reason"] == "finished" and math.isfinite(result["test_bpd"])
    steps = [e for e in sink.events if e["event"] == "step"]
    assert steps[-1]["nonfinite"] == 1 and all(math.isfinite(e["loss"]) for e in steps)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(b).all() for b in trainer.model.buffers())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_follows_the_eager_step():
    from core.flow.model import RealNVP
    from core.training.step import TrainStep, make_adam, step_autocast

    def autocast():
        return step_autocast(torch.device("cuda"))

    steps = []
    for graph in (False, True):
        torch.manual_seed(0)
        model = RealNVP(TINY).cuda().train()
        optimizer, fused = make_adam(model.parameters(), 1e-3)
        steps.append(
            TrainStep(model, model, optimizer, fused, 5e-5, 100.0, autocast, cuda_graph=graph)
        )
    eager, graphed = steps
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(8, 1, 28, 28, generator=g).cuda() for _ in range(8)]
    batches[5] = torch.full_like(batches[5], float("nan"))
    for i, x in enumerate(batches):
        if i == 6:  # a learning-rate change after capture reaches the graph
            for s in steps:
                s.optimizer.param_groups[0]["lr"] = 0.0
            before = [p.detach().clone() for p in graphed.model.parameters()]
        for s in steps:
            s(x)
        if i == 6:
            assert all(torch.equal(a, b) for a, b in zip(before, graphed.model.parameters()))
    assert graphed.graph is not None and eager.graph is None
    assert eager.read(False) == graphed.read(False)
    for a, b in zip(eager.model.state_dict().values(), graphed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-3)


def _plain_adam(params, lr):
    return torch.optim.Adam(list(params), lr=lr), False


@pytest.mark.slow
def test_resume_of_an_unfused_run_keeps_the_fused_kernel(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(train_module, "make_adam", _plain_adam)
        Trainer(TINY, config(tmp_path / "run", max_steps=3)).run()
    saved = read_checkpoint(tmp_path / "run" / "latest.pt")["training"]["optimizer"]
    assert not saved["param_groups"][0]["fused"]
    Trainer(
        None, config(tmp_path / "run", max_steps=6), resume=tmp_path / "run" / "latest.pt"
    ).run()
    resumed = read_checkpoint(tmp_path / "run" / "latest.pt")["training"]
    assert resumed["step"] == 6
    assert resumed["optimizer"]["param_groups"][0]["fused"]
    steps = {float(s["step"]) for s in resumed["optimizer"]["state"].values()}
    assert steps == {6.0}


def test_train_step_keeps_the_host_out_of_the_loop(monkeypatch):
    """Good and bad steps are counted on the device; only read() synchronises."""
    from core.flow.model import RealNVP
    from core.training.step import TrainStep, make_adam

    torch.manual_seed(0)
    model = RealNVP(TINY).train()
    optimizer, fused = make_adam(model.parameters(), 1e-3)
    step = TrainStep(model, model, optimizer, fused, 5e-5, 100.0, contextlib.nullcontext)
    x = torch.rand(8, 1, 28, 28)
    step(x)
    step(torch.full_like(x, float("nan")))
    step(torch.full_like(x, float("nan")))
    counts = step.read(reset_window=False)
    assert (counts["good"], counts["nonfinite"], counts["bad_run"]) == (1, 2, 2)
    assert math.isfinite(counts["loss"]) and counts["loss"] > 0
    step(x)
    counts = step.read(reset_window=True)
    assert (counts["good"], counts["nonfinite"], counts["bad_run"]) == (2, 2, 0)
    assert step.read(reset_window=False)["good"] == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_compile_failure_falls_back_to_eager(capsys):
    from core.flow.model import RealNVP
    from core.training.step import TrainStep, make_adam

    class Uncompilable(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("backend compiler failed\nlong traceback")

    model = RealNVP(TINY).train()
    optimizer, fused = make_adam(model.parameters(), 1e-3)
    step = TrainStep(
        model, Uncompilable(), optimizer, fused, 5e-5, 100.0, contextlib.nullcontext, model
    )
    assert step.compiled
    before = [p.detach().clone() for p in model.parameters()]
    step(torch.rand(4, 1, 28, 28))
    step(torch.rand(4, 1, 28, 28))
    assert not step.compiled and step.read(reset_window=False)["good"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    err = capsys.readouterr().err
    assert err.count("warning: torch.compile failed") == 1 and "backend compiler failed" in err


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "core", *args]


@pytest.mark.slow
def test_json_progress_parses_and_stop_signal_saves(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cli(
            "train",
            "--data-dir",
            str(MNIST_DIR),
            "--out",
            str(out),
            "--num-scales",
            "2",
            "--mid-channels",
            "4",
            "--num-blocks",
            "1",
            "--batch-size",
            "8",
            "--max-steps",
            "100000",
            "--log-every",
            "1",
            "--eval-limit",
            "16",
            "--progress",
            "json",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events = []
    try:
        for line in proc.stdout:
            events.append(json.loads(line))  # every stdout line is one JSON object
            if events[-1]["event"] == "step" and events[-1]["step"] >= 3:
                proc.send_signal(signal.SIGTERM)
                break
        for line in proc.stdout:
            events.append(json.loads(line))
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "checkpoint" in kinds
    assert events[-1]["reason"] == "stopped"
    _, meta = load_checkpoint(out / "latest.pt")
    assert meta["step"] == events[-1]["step"] >= 3
    assert all(set(e) >= {"event", "time"} for e in events)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", "folder", "--data-dir", "{tmp}/none"], "no such folder"),
        (["train", "--batch-size", "0"], "must be a positive integer"),
        (["train", "--device", "cuda:7"], "cuda"),
        (["info", "{tmp}/missing.pt"], "no such file"),
        (["info", "{tmp}/junk.pt"], "not a checkpoint: it is a text file"),
        (["sample", "{tmp}/junk.pt"], "not a checkpoint: it is a text file"),
        (["encode", "{ckpt}", "{tmp}/junk.pt"], "not an image"),
        (["eval", "{ckpt}", "--data-dir", "{tmp}"], "not found"),
    ],
    ids=[
        "empty-folder",
        "bad-flag",
        "bad-device",
        "missing",
        "junk",
        "junk-sample",
        "bad-image",
        "no-data",
    ],
)
@pytest.mark.slow
def test_cli_user_errors_are_one_line(tmp_path, args, message, tiny_ckpt):
    (tmp_path / "junk.pt").write_text("junk")
    args = [a.format(tmp=tmp_path, ckpt=tiny_ckpt) for a in args]
    result = subprocess.run(_cli(*args), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def tiny_ckpt(tmp_path_factory):
    from core.files.checkpoint import save_checkpoint
    from core.flow.model import RealNVP

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.manual_seed(0)
    save_checkpoint(path, RealNVP(TINY).eval(), {"dataset": "mnist"})
    return path


@pytest.mark.slow
def test_cli_sample_encode_info_eval(tmp_path, tiny_ckpt, small_mnist):
    from PIL import Image

    grid = tmp_path / "grid.png"

    def run(*a):
        return subprocess.run(
            _cli(*a),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout

    run("sample", str(tiny_ckpt), "--n", "4", "--out", str(grid), "--seed", "1")
    assert Image.open(grid).size == (62, 62)
    Image.fromarray((torch.rand(40, 50) * 255).byte().numpy()).save(tmp_path / "in.png")
    out = json.loads(
        run(
            "encode",
            str(tiny_ckpt),
            str(tmp_path / "in.png"),
            "--out",
            str(tmp_path / "enc"),
            "--json",
        )
    )
    assert out["max_abs_error"] < 1e-4 and out["bits_per_dim"] > 0
    assert (tmp_path / "enc" / "in_recon.png").is_file()
    assert (tmp_path / "enc" / "in_latents.npz").is_file()
    run("export", str(tiny_ckpt), str(tmp_path / "small.pt"))
    assert read_checkpoint(tmp_path / "small.pt")["training"] is None
    # export --data-dir measures the whole test split (24 images in small_mnist, so the
    # test does not spend a minute on MNIST's 10,000), as eval without --limit does
    run("export", str(tiny_ckpt), str(tmp_path / "measured.pt"), "--data-dir", str(small_mnist))
    measured = read_checkpoint(tmp_path / "measured.pt")["meta"]
    full = json.loads(
        run("eval", str(tmp_path / "small.pt"), "--data-dir", str(small_mnist), "--json")
    )
    # The same figure to float32 rounding: two processes may split a reduction among their
    # threads differently (this one measured 8.205983 with 1 or 2 threads, 8.205976 with 3,
    # and about 1 run in 15 of this test saw the second figure from one of them).
    assert measured["test_bpd"] == pytest.approx(full["test_bpd"], rel=1e-6)
    assert full["images"] == 24
    # export keeps the meta it does not recompute and adds the typicality reference
    assert measured["dataset"] == "mnist"
    reference = TypicalityReference.from_meta(measured)
    assert reference.images == 24
    assert float(np.mean(reference.bits_per_dim)) == pytest.approx(full["test_bpd"], abs=1e-5)
    assert (
        "24 mnist test images"
        in json.loads(run("info", str(tmp_path / "measured.pt"), "--json"))["typicality"]
    )
    # eval --save stores it in place and keeps the training state
    before = read_checkpoint(tiny_ckpt)
    run("eval", str(tiny_ckpt), "--data-dir", str(MNIST_DIR), "--limit", "40", "--save")
    after = read_checkpoint(tiny_ckpt)
    assert TypicalityReference.from_meta(after["meta"]).images == 40
    assert after["meta"]["dataset"] == before["meta"]["dataset"]
    assert (after["training"] is None) == (before["training"] is None)
    info = json.loads(run("info", str(tiny_ckpt), "--json"))
    assert info["latent_shapes"] == [[2, 14, 14], [2, 14, 14]]
    ev = json.loads(
        run("eval", str(tiny_ckpt), "--data-dir", str(MNIST_DIR), "--limit", "32", "--json")
    )
    assert ev["images"] == 32 and ev["test_bpd"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, dump: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    trainer = Trainer(TINY, config(Path(out), max_steps=3, device="cpu"))
    trainer.run()
    torch.save(trainer.model.state_dict(), f"{dump}/rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_weights(tmp_path):
    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    _, meta = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert meta["step"] == 3 and meta["images_seen"] == 3 * 16 * 2
    fresh = Trainer(TINY, config(tmp_path / "unused", max_steps=1)).model.state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)  # training moved the weights


@pytest.mark.slow
def test_torchrun_channels_last_steps_match_one_process(tmp_path):
    """float32 steps on the CPU run channels_last: under ``torchrun`` with two gloo processes
    fed the same batches (so the averaged gradient is each rank's own) the losses and weights
    match one process's in channels_last exactly, the losses match the default layout's to
    float tolerance (the later ones after Adam steps on those gradients; Adam's weights
    themselves differ by up to its step size where a gradient is float noise), and DDP never
    complains about the gradients' strides."""
    from ddp_step import train_steps

    from core.training.step import use_channels_last

    assert use_channels_last(torch.device("cpu"), "float32")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(ROOT / "tests" / "ddp_step.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "stride" not in proc.stderr.lower(), proc.stderr  # DDP's bucket-view warning
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    torch.set_num_threads(1)
    alone, alone_state = train_steps(channels_last=True)
    nchw, _ = train_steps(channels_last=False)
    for rank in ranks:
        assert rank["losses"] == alone
        assert rank["losses"] == pytest.approx(nchw, rel=1e-5)
        for key, value in alone_state.items():
            assert torch.equal(rank["state"][key], value), key
    assert alone[-1] != alone[0]  # the steps trained
