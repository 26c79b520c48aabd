"""The training recipe: the cosine schedule, averaged weights (EMA) and their batch norm,
``--init-from``, ``--time-limit``; exact resume of all of them, in seconds on tiny data."""

from __future__ import annotations

import copy
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MNIST_DIR, needs_mnist
from test_train import TINY, ListSink, config

from core.files.checkpoint import load_checkpoint, read_checkpoint
from core.flow.model import RealNVP, dequantize, preset
from core.training.averaging import WeightAverage, recompute_batch_norm
from core.training.schedule import COSINE_FLOOR, StepPlan, lr_factor, parse_duration
from core.training.trainer import Trainer, TrainingError

ROOT = Path(__file__).resolve().parents[1]


# -- the schedule ---------------------------------------------------------------------------


def test_cosine_warms_up_then_decays_to_its_floor_at_the_planned_step():
    assert lr_factor(0, "cosine", 10, 110) == pytest.approx(0.1)
    assert lr_factor(9, "cosine", 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, "cosine", 10, 110) == pytest.approx(COSINE_FLOOR + (1 - COSINE_FLOOR) / 2)
    assert lr_factor(110, "cosine", 10, 110) == pytest.approx(COSINE_FLOOR)
    assert lr_factor(500, "cosine", 10, 110) == pytest.approx(COSINE_FLOOR)
    rates = [lr_factor(s, "cosine", 10, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert lr_factor(500, "constant", 10, 110) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, "linear", 0, 10)


def test_plan_fits_the_time_left_and_the_rate_never_rises_again():
    plan = StepPlan(total=10_000, planned=10_000, warmup=100)
    assert plan.replan(50, steps_per_s=10.0, seconds_left=100.0, margin=1.0)
    assert plan.planned == 1050 and plan.progress(100) == 0.0  # warm-up: no progress yet
    assert plan.progress(575) == pytest.approx(0.5)
    rates = [lr_factor(s, "cosine", 100, plan) for s in range(100, 301)]
    # Past warm-up a slower machine shortens the plan and a faster one lengthens it: the
    # decay speeds up or slows down from where it stands, never back up.
    assert plan.replan(300, steps_per_s=1.0, seconds_left=100.0, margin=1.0)
    assert plan.planned == 400 and plan.anchor_step == 300
    assert plan.progress(300) == pytest.approx(200 / 950)
    assert plan.progress(400) == 1.0
    rates += [lr_factor(s, "cosine", 100, plan) for s in range(301, 351)]
    assert plan.replan(350, steps_per_s=20.0, seconds_left=100.0, margin=1.0)
    assert plan.planned == 2350
    rates += [lr_factor(s, "cosine", 100, plan) for s in range(351, 2400)]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert rates[-1] == pytest.approx(COSINE_FLOOR)
    assert not plan.replan(400, steps_per_s=20.0, seconds_left=99.0, margin=1.0)  # noise
    assert plan.replan(2000, steps_per_s=1.0, seconds_left=-5.0, margin=1.0)
    assert plan.planned == 2001  # never behind the step it is at
    capped = StepPlan(total=500, planned=500)
    capped.replan(0, steps_per_s=1000.0, seconds_left=100.0)
    assert capped.planned == 500  # never beyond the length asked for
    plain = StepPlan(total=110, planned=110, warmup=10)
    assert all(
        lr_factor(s, "cosine", 10, plain) == pytest.approx(lr_factor(s, "cosine", 10, 110))
        for s in range(120)
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90m", 5400),
        ("2h", 7200),
        ("1h30m", 5400),
        ("45s", 45),
        ("3600", 3600),
        ("0.5h", 1800),
        ("01:30:00", 5400),
        ("30:00", 1800),
        ("1-00:00:00", 86400),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "90x", "m90", "0", "-5m", "1:2:3:4", "h"])
def test_bad_durations_say_what_is_expected(text):
    with pytest.raises(ValueError, match="not a duration: use a number with a unit"):
        parse_duration(text)


# -- averaged weights -----------------------------------------------------------------------


def test_average_of_constant_weights_is_those_weights():
    torch.manual_seed(0)
    model = RealNVP(TINY)
    average = WeightAverage(model, 0.999)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(25):
        average.update(model)
    assert average.updates == 25
    for s, p in zip(average.shadow, before):
        assert torch.equal(s, p)


def test_average_follows_the_decay_formula():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    average = WeightAverage(layer, 0.5)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            layer.weight.fill_(value)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        average.update(layer)
        assert average.shadow[0][0, 0].item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        WeightAverage(layer, 1.0)


def test_batch_norm_is_measured_anew_for_the_weights_it_runs_with():
    torch.manual_seed(1)
    model = RealNVP(TINY).train()
    g = torch.Generator().manual_seed(2)
    images = [torch.randint(0, 256, (8, 1, 28, 28), generator=g, dtype=torch.uint8) for _ in "abc"]
    batches = [dequantize(x, g) for x in images]
    model(batches[0])  # the running averages move a little from their start
    seen = recompute_batch_norm(model, batches)
    assert seen == 24 and not model.training

    # The first flow batch norm sees the preprocessed images through one coupling: its
    # statistics are the mean of the three batches' statistics.
    def first(m):
        return next(b for b in m.modules() if type(b).__name__ == "BatchNormFlow")

    probe = copy.deepcopy(model).train()
    means = []
    handle = first(probe).register_forward_hook(
        lambda m, inp, out: means.append(inp[0].mean((0, 2, 3)))
    )
    with torch.no_grad():
        for x in batches:
            probe(x)
    handle.remove()
    assert torch.allclose(first(model).running_mean, torch.stack(means).mean(0), atol=1e-6)


# -- the trainer ----------------------------------------------------------------------------


class StopAt(ListSink):
    """Writes the run's STOP file when the step event of ``step`` goes out."""

    def __init__(self, out: Path, step: int) -> None:
        super().__init__()
        self.out, self.step = out, step

    def emit(self, kind, /, **fields) -> None:
        super().emit(kind, **fields)
        if kind == "step" and fields["step"] == self.step:
            (self.out / "STOP").touch()


@needs_mnist
@pytest.mark.slow
def test_cosine_and_average_resume_exactly(tmp_path):
    """A run stopped half-way and resumed ends with the same weights, average, batch-norm
    statistics and learning rate as the run that was never stopped."""
    recipe = dict(max_steps=8, lr_schedule="cosine", ema=0.9, warmup_steps=2, precision="float32")
    Trainer(TINY, config(tmp_path / "full", **recipe)).run()
    sink = StopAt(tmp_path / "half", 4)
    first = Trainer(TINY, config(tmp_path / "half", **recipe), sink).run()
    assert first["reason"] == "stopped" and first["step"] == 4
    Trainer(None, config(tmp_path / "half", **recipe), resume=tmp_path / "half" / "latest.pt").run()
    full = read_checkpoint(tmp_path / "full" / "latest.pt")
    resumed = read_checkpoint(tmp_path / "half" / "latest.pt")
    assert resumed["training"]["step"] == full["training"]["step"] == 8
    for section in ("model", "raw_model"):
        a = full[section] if section == "model" else full["training"][section]
        b = resumed[section] if section == "model" else resumed["training"][section]
        for key, value in a.items():
            assert torch.equal(value, b[key]), (section, key)
    fe, re_ = full["training"]["ema"], resumed["training"]["ema"]
    assert fe["updates"] == re_["updates"] == 8
    assert all(torch.equal(fe["shadow"][k], re_["shadow"][k]) for k in fe["shadow"])
    lr = [c["training"]["optimizer"]["param_groups"][0]["lr"] for c in (full, resumed)]
    assert lr[0] == lr[1] == pytest.approx(1e-3 * lr_factor(8, "cosine", 2, 8))


@needs_mnist
@pytest.mark.slow
def test_checkpoints_hold_the_average_and_export_writes_it_with_its_own_statistics(tmp_path):
    out = tmp_path / "run"
    Trainer(TINY, config(out, max_steps=6, ema=0.9)).run()
    data = read_checkpoint(out / "latest.pt")
    shadow = data["training"]["ema"]["shadow"]
    raw = data["training"]["raw_model"]
    assert data["meta"]["weights"].startswith("averaged")
    assert all(torch.equal(data["model"][k], v) for k, v in shadow.items())
    assert any(not torch.equal(raw[k], v) for k, v in shadow.items())  # not the raw weights
    # Its batch norm was measured for the averaged weights, not carried over from training.
    bn = [k for k in raw if k.endswith("running_mean")]
    assert bn and all(not torch.equal(raw[k], data["model"][k]) for k in bn)

    exported = tmp_path / "exported.pt"
    done = subprocess.run(
        [sys.executable, "-m", "core", "export", str(out / "latest.pt"), str(exported)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    written = read_checkpoint(exported)
    assert written["training"] is None
    assert all(torch.equal(written["model"][k], v) for k, v in data["model"].items())
    info = subprocess.run(
        [sys.executable, "-m", "core", "info", str(exported)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 0, info.stderr
    assert "averaged" in info.stdout


@needs_mnist
def test_without_an_average_the_raw_weights_are_saved(tmp_path):
    out = tmp_path / "run"
    Trainer(TINY, config(out, max_steps=2, ema=0.0)).run()
    data = read_checkpoint(out / "latest.pt")
    assert data["meta"]["weights"].startswith("raw")
    assert "raw_model" not in data["training"] and "ema" not in data["training"]


@needs_mnist
@pytest.mark.slow
def test_init_from_starts_a_new_run_from_the_averaged_weights(tmp_path):
    first = tmp_path / "first"
    Trainer(TINY, config(first, max_steps=4, ema=0.9, eval_every=2)).run()
    source = read_checkpoint(first / "latest.pt")
    sink = ListSink()
    trainer = Trainer(None, config(tmp_path / "second", init_from=str(first / "latest.pt")), sink)
    # Before its first step the new run holds the file's (averaged) weights, not the raw.
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(params[k], source["model"][k]) for k in params)
    result = trainer.run()
    start = sink.events[0]
    assert start["step"] == 0 and not start["resumed"]
    assert start["init_from"]["path"] == str(first / "latest.pt")
    assert start["init_from"]["step"] == 4
    second = read_checkpoint(tmp_path / "second" / "latest.pt")
    assert second["training"]["step"] == result["step"] == 6
    assert second["training"]["optimizer"]["state"][0]["step"].item() == 6  # a fresh Adam
    lineage = second["meta"]["lineage"]
    assert [run["out"] for run in lineage] == [str(first), str(tmp_path / "second")]
    assert lineage[1]["images_start"] == lineage[0]["images_end"] == 4 * 16
    assert lineage[1]["evals"][-1][0] == 4 * 16 + 6 * 16
    assert second["meta"]["init_from"]["path"] == str(first / "latest.pt")


def test_init_from_bundled_takes_its_model_and_refuses_another_size(tmp_path):
    trainer = Trainer(None, config(tmp_path / "run", init_from="bundled"))
    bundled, _ = load_checkpoint("bundled")
    assert trainer.model.config == bundled.config
    state = bundled.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in trainer.model.state_dict().items())
    with pytest.raises(TrainingError, match="leave out --preset"):
        Trainer(TINY, config(tmp_path / "other", init_from="bundled"))


@needs_mnist
@pytest.mark.slow
def test_time_limit_plans_the_decay_and_ends_cleanly_before_it(tmp_path):
    out = tmp_path / "run"
    limit = 30.0
    cmd = [
        sys.executable, "-m", "core", "train", "--dataset", "mnist",
        "--data-dir", str(MNIST_DIR), "--out", str(out), "--num-scales", "2",
        "--mid-channels", "4", "--num-blocks", "1", "--batch-size", "16",
        "--epochs", "100", "--eval-limit", "64", "--eval-every", "100000",
        "--log-every", "5", "--warmup-steps", "5", "--class-limit", "4",
        "--time-limit", f"{limit:g}s", "--progress", "json", "--threads", "1",
        "--precision", "float32",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    start, last = events[0], events[-1]
    assert start["event"] == "start" and start["time_limit_s"] == limit
    assert last["event"] == "done" and last["reason"] == "time_limit"
    assert last["wall_time_s"] < limit
    steps = [e for e in events if e["event"] == "step"]
    # The plan came down from 100 epochs to what fits the time, and the rate decays over it
    # (past warm-up never rising again).
    planned = read_checkpoint(out / "latest.pt")["training"]["planned_steps"]
    assert last["step"] <= planned < start["total_steps"]
    assert steps[-1]["total_steps"] == planned
    rates = [e["lr"] for e in steps if e["step"] >= 5]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    data = read_checkpoint(out / "latest.pt")
    lr = data["training"]["optimizer"]["param_groups"][0]["lr"]
    plan = StepPlan(total=start["total_steps"], warmup=5, **data["training"]["plan"])
    assert lr == pytest.approx(1e-3 * lr_factor(last["step"], "cosine", 5, plan))
    assert math.isfinite(data["meta"]["test_bpd"])


def test_mnist_preset_is_the_bundled_recipe():
    assert preset("mnist").image_size == 28 and preset("mnist").in_channels == 1
