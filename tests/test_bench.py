"""The benchmark runs and reports its documented keys (times are never asserted)."""

from __future__ import annotations

import pytest
import torch

from core import FlowConfig, RealNVP
from core.bench import (
    latency,
    random_model,
    render_drafts,
    render_figures,
    render_precisions,
    run,
    train_precisions,
    train_step_flops,
    training_speed,
)
from core.files.checkpoint import save_checkpoint
from core.flow.inference import fold_for_inference

TINY = FlowConfig(in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=1)


@pytest.mark.slow
def test_report_keys(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", RealNVP(TINY).eval())
    report = run(quick=True, checkpoint=str(path), presets=[], render_presets=[])
    assert report["matmul_peak_gflops"] > 0 and report["bf16_matmul_peak_gflops"] > 0
    assert report["train_peak_gflops"] == max(
        report["matmul_peak_gflops"], report["bf16_matmul_peak_gflops"]
    )
    assert isinstance(report["machine"]["bf16_units"], list)
    assert report["peer"]["measured"] is False  # no --peer: the section says why
    bundled = report["models"]["bundled"]
    for batch in ("batch_1", "batch_16"):
        render = bundled["render_precision"][batch]
        assert render["float32_ms"]["p50"] > 0 and render["bf16_ms"]["p50"] > 0
        assert 0 <= render["within_one_grey_level"] <= 1
    assert bundled["parameters"] == sum(p.numel() for p in RealNVP(TINY).parameters())
    change = bundled["fine_level_change"]
    assert set(change) == {"cached_ms", "full_ms"} and change["cached_ms"]["n"] > 0
    lm = bundled["likelihood_map"]
    assert lm["map_ms"]["n"] == lm["encode_ms"]["n"] > 0
    assert lm["ratio_p50"] == round(lm["map_ms"]["p50"] / lm["encode_ms"]["p50"], 3)
    for batch in ("batch_1", "batch_64"):
        for key in ("encode_ms", "decode_ms"):
            assert set(bundled[batch][key]) == {"p50", "p95", "n"}
            assert 0 < bundled[batch][key]["p50"] <= bundled[batch][key]["p95"]
    render = report["render"]["checkpoint"]
    assert render["parameters"] == bundled["parameters"] and render["threads"] >= 1
    for batch in ("batch_1", "batch_16"):
        assert 0 < render["decode_ms"][batch]["p50"] <= render["decode_ms"][batch]["p95"]
        assert set(render["fine_level_change"][batch]) == {"cached_ms", "full_ms"}
    assert "cuda_graphs" not in render  # CPU: no graphs
    draft = render["draft"]
    assert set(draft) == {"batch_1", "batch_16", "error", "passes"}
    assert set(draft["error"]) == {"within_1", "within_4", "within_16", "max"}


def test_render_figures_time_the_cached_change_per_batch():
    model = fold_for_inference(random_model(TINY, torch.device("cpu")))
    figures = render_figures(model, 2, torch.device("cpu"), batches=(1, 3))
    assert set(figures["decode_ms"]) == {"batch_1", "batch_3"}
    assert figures["fine_level_change"]["batch_3"]["cached_ms"]["n"] == 2


@pytest.mark.slow
def test_training_figures_count_real_flops():
    model = RealNVP(TINY)
    flops = train_step_flops(model, 2, torch.device("cpu"))
    # at least the forward convolutions: the first s/t input conv alone is 2*8*8*2*4*9 per image
    assert flops > 2 * 2 * 8 * 8 * 2 * 4 * 9
    figures = training_speed(TINY, 4, 1, torch.device("cpu"), peak=100.0)
    assert figures["train_images_per_s"] > 0 and figures["train_gflops"] > 0
    assert figures["train_peak_fraction"] == pytest.approx(figures["train_gflops"] / 100.0, 1e-3)


def test_latency_shapes():
    out = latency(RealNVP(TINY).eval(), 3, 2, torch.device("cpu"))
    assert out["encode_ms"]["n"] == 2


@pytest.mark.slow
def test_training_is_timed_in_both_precisions_against_the_higher_ceiling():
    figures = train_precisions(TINY, 4, 2, torch.device("cpu"), peak=100.0)
    for p in ("float32", "bf16"):
        f = figures[p]
        assert f["train_images_per_s"] > 0 and f["steps_timed"] >= 1
        assert f["train_peak_fraction"] == pytest.approx(f["train_gflops"] / 100.0, rel=1e-3)
    assert figures["bf16_speedup"] == pytest.approx(
        figures["bf16"]["train_images_per_s"] / figures["float32"]["train_images_per_s"], 1e-2
    )


def test_render_picture_test_sees_bf16_differences():
    from conftest import perturbed_model

    from core.flow.inference import fold_for_inference

    model = fold_for_inference(perturbed_model(TINY, scale=0.05))
    out = render_precisions(model, (2,), 2, torch.device("cpu"))["batch_2"]
    assert out["float32_ms"]["n"] >= 1 and out["bf16_speedup"] > 0
    assert out["same_picture"] == (out["within_one_grey_level"] >= 0.999)


def test_render_drafts_time_both_and_apply_the_draft_test():
    from conftest import perturbed_model

    from core.training.precision import draft_passes

    model = fold_for_inference(perturbed_model(TINY, scale=0.05))
    out = render_drafts(model, (1, 2), 2, torch.device("cpu"))
    for batch in ("batch_1", "batch_2"):
        f = out[batch]
        assert f["float32_ms"]["n"] >= 1 and f["draft_ms"]["n"] >= 1
        assert f["ratio"] == pytest.approx(f["draft_ms"]["p50"] / f["float32_ms"]["p50"], rel=0.01)
    error = out["error"]
    assert 0 <= error["within_1"] <= error["within_4"] <= error["within_16"] <= 1
    assert out["passes"] == draft_passes(error)


def test_peer_section_says_why_it_was_not_measured():
    from core.bench import peer_figures

    section = peer_figures(None, torch.device("cpu"), 4, quick=True)
    assert section["measured"] is False and "--peer DIR" in section["reason"]


def test_a_folder_that_is_not_the_peer_is_refused_with_a_message(tmp_path):
    from core.bench import Peer

    with pytest.raises(ValueError, match="not a checkout of chrischute/real-nvp"):
        Peer(tmp_path)
    (tmp_path / "models" / "real_nvp").mkdir(parents=True)
    (tmp_path / "util").mkdir()
    (tmp_path / "models" / "real_nvp" / "__init__.py").write_text("import no_such_module\n")
    with pytest.raises(ValueError, match="does not import here"):
        Peer(tmp_path)


# A stand-in with the peer's interface (not its code): what the comparison calls of it.
STAND_IN_MODEL = """
import torch
from torch import nn


class ResNet(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class RealNVP(nn.Module):
    def __init__(self, num_scales, in_channels, mid_channels, num_blocks):
        super().__init__()
        self.st = ResNet(in_channels)

    def forward(self, x, reverse=False):
        s, t = self.st(x).chunk(2, dim=1)
        s = torch.tanh(s)
        if reverse:
            return (x - t) * torch.exp(-s), None
        return x * torch.exp(s) + t, s.flatten(1).sum(1)


class RealNVPLoss(nn.Module):
    def forward(self, z, sldj):
        return (0.5 * z.view(z.shape[0], -1) ** 2).sum(1).sub(sldj).mean()
"""
STAND_IN_UTIL = """
import torch


def get_param_groups(net, weight_decay, norm_suffix):
    return [{"params": list(net.parameters()), "weight_decay": weight_decay}]


def clip_grad_norm(optimizer, max_norm):
    for group in optimizer.param_groups:
        torch.nn.utils.clip_grad_norm_(group["params"], max_norm)
"""


@pytest.mark.slow
def test_peer_figures_come_from_the_checkout_and_leave_no_modules_behind(tmp_path, monkeypatch):
    import sys
    import types

    from core.bench import Peer, peer_figures

    (tmp_path / "models" / "real_nvp").mkdir(parents=True)
    (tmp_path / "util").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "real_nvp" / "__init__.py").write_text(STAND_IN_MODEL)
    (tmp_path / "util" / "__init__.py").write_text(STAND_IN_UTIL)
    before = types.ModuleType("util")  # a module of the same name that was there first
    monkeypatch.setitem(sys.modules, "util", before)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        section = peer_figures(Peer(tmp_path), torch.device("cpu"), 2, quick=True)
    finally:
        torch.set_num_threads(threads)
    assert sys.modules["util"] is before and "models" not in sys.modules
    assert str(tmp_path) not in sys.path
    assert section["measured"] and section["config"] == "cifar10"
    assert section["precision"] == "float32" and section["threads"] == 1
    # (p50s are rounded to the microsecond, the ratio comes from the unrounded medians)
    assert section["train"]["batch"] == 2
    assert [section[f"sample_{n}"]["images"] for n in (1, 16)] == [1, 16]
    for entry in (section["train"], section["sample_1"], section["sample_16"]):
        ours, peer = entry["ours_ms"]["p50"], entry["peer_ms"]["p50"]
        assert ours > 0 and peer > 0 and entry["ratio"] == pytest.approx(ours / peer, rel=1e-2)
