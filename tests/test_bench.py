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
    report = run(quick=True, checkpoint=str(path), presets=[], gui=False, render_presets=[])
    assert report["matmul_peak_gflops"] > 0 and report["bf16_matmul_peak_gflops"] > 0
    assert report["train_peak_gflops"] == max(
        report["matmul_peak_gflops"], report["bf16_matmul_peak_gflops"]
    )
    assert isinstance(report["machine"]["bf16_units"], list)
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
