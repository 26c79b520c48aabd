"""The bundled default model: loads, inverts real digits exactly, and is as good as its card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import MNIST_DIR, needs_mnist

from core.files.checkpoint import load_checkpoint
from core.flow.inference import fold_for_inference
from core.training.data import load_mnist

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "resources" / "default_model.pt"
CARD = ROOT / "resources" / "MODEL_CARD.md"

pytestmark = pytest.mark.skipif(not BUNDLED.is_file(), reason="no bundled model")


def test_file_is_small_and_describes_itself():
    assert BUNDLED.stat().st_size <= 20 * 1024**2
    model, meta = load_checkpoint(BUNDLED)
    assert meta["dataset"] == "mnist"
    assert model.config.image_size == 28 and model.config.in_channels == 1
    assert meta["test_bpd"] <= 1.5
    assert meta["best_test_bpd"] <= meta["test_bpd"]  # `realnvp info` shows them together
    card = CARD.read_text()
    assert f"{meta['test_bpd']:.4f}" in card  # the card quotes the checkpoint's own figure
    assert "realnvp train" in card


@pytest.mark.slow
@needs_mnist
def test_real_digits_round_trip_and_score_like_the_card():
    model, meta = load_checkpoint(BUNDLED)
    digits = load_mnist(MNIST_DIR, train=False).images[:200]
    x = (digits.float() + 0.5) / 256.0
    with torch.inference_mode():
        zs = model.encode(x)
        assert (model.decode(zs) - x).abs().max() < 1e-4
        folded = fold_for_inference(model)
        assert (folded.decode(folded.encode(x)) - x).abs().max() < 1e-4
        bpd = model.bits_per_dim(digits, torch.Generator().manual_seed(0)).mean().item()
    # 200 digits are a small sample of the 10,000 behind the card's figure
    assert abs(bpd - meta["test_bpd"]) < 0.15
    figures = re.findall(r"test bits/dim[^0-9]*([0-9.]+)", CARD.read_text())
    assert figures and abs(float(figures[0]) - meta["test_bpd"]) < 1e-3


@pytest.mark.slow
def test_cli_info_reads_it(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "core", "info", str(BUNDLED), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert json.loads(out)["parameters"] > 0
