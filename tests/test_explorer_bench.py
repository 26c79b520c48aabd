"""The GUI latency benchmark runs the real window and reports percentiles (never asserted
against wall-clock limits)."""

from __future__ import annotations

import json

import pytest

from explorer_bench.gui import measure_gui_latency


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.slow
def test_measure_gui_latency_reports_percentiles(
    qapp, tiny_checkpoint, one_torch_thread, use_cache
):
    figures = measure_gui_latency(tiny_checkpoint, n_images=4, use_cache=use_cache, repeats=3)
    assert set(figures) == {
        "p50_ms",
        "p95_ms",
        "whole_grid_p50_ms",
        "whole_grid_p95_ms",
        "drag_p50_ms",
        "drag_p95_ms",
    }
    assert 0 < figures["p50_ms"] <= figures["p95_ms"]
    assert figures["p50_ms"] <= figures["whole_grid_p50_ms"]


@pytest.mark.slow
def test_suite_with_a_progressive_plan_and_the_baseline(qapp, tiny_checkpoint, one_torch_thread):
    from explorer_bench.gui import run_suite

    report = run_suite(tiny_checkpoint, repeats=2, image_counts=(1, 3), baseline=True)
    assert set(report["images_3"]) == {"cache", "whole_frames", "no_cache"}
    assert report["decode_1"]["p50_ms"] > 0
    plan = report["plan"]
    assert plan["threads"] >= 1 and plan["decode_ms"]  # measured in the first window
    assert "first_pixels_16_p95_over_decode_1_p50" not in report  # no 16-image grid here
    figures = report["images_3"]["cache"]
    assert figures["p95_ms"] > 0 and figures["whole_grid_p95_ms"] > 0


@pytest.mark.slow
def test_preset_models_are_benchmarked_with_random_weights(qapp, one_torch_thread, capsys):
    from explorer_bench.gui import main

    argv = ["--preset", "mnist-small", "--images", "2", "--repeats", "1", "--graphs", "off"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["graphs"] is False
    assert report["model"] == "mnist-small preset, random weights"
    assert set(report["images_2"]) == {"cache", "no_cache"}
    with pytest.raises(SystemExit):
        main(["--preset", "mnist-small", "--checkpoint", "x.pt"])
    assert "not both" in capsys.readouterr().err


def test_measure_gui_latency_refuses_a_bad_checkpoint(qapp, tmp_path, one_torch_thread):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad"):
        measure_gui_latency(bad, repeats=1)


@pytest.mark.slow
def test_images_bench_reports_every_figure(qapp, tiny_checkpoint, one_torch_thread):
    from explorer_bench.images import run_images_bench

    report = run_images_bench(tiny_checkpoint, repeats=2, warmup=1)
    for key in ("drop_to_reconstruction", "file_decode", "encode"):
        assert set(report[key]) == {"digit_28x28_png", "photo_1000x800_jpeg"}
        for figures in report[key].values():
            assert 0 < figures["p50_ms"] <= figures["p95_ms"] and figures["n"] == 2
    assert report["interpolation_frame"]["p50_ms"] > 0
    assert report["threads"] == 1 and report["image"] == "1x8x8"
    assert set(report["targets"]) == {
        "encode_p95_ms",
        "encode_met",
        "interpolation_frame_p95_ms",
        "interpolation_met",
    }


@pytest.mark.slow
def test_map_bench_times_the_map_and_a_drag(qapp, tmp_path, one_torch_thread):
    from core.files.checkpoint import save_checkpoint
    from explorer_bench.gui import measure_map
    from tests.conftest import perturbed_model
    from tests.test_class_stats import write_folder

    folder = write_folder(tmp_path / "digits", {"a": 40, "b": 40})
    ckpt = save_checkpoint(tmp_path / "f.pt", perturbed_model(), {"dataset": "folder"})
    figures = measure_map(ckpt, folder, n_map=50, repeats=3, warmup=1)
    assert figures["map_images"] >= 2 and figures["map_s"] > 0
    assert 0 < figures["p50_ms"] <= figures["p95_ms"]


@pytest.mark.slow
def test_draft_bench_drags_with_and_without_drafts(
    qapp, tiny_checkpoint, one_torch_thread, tmp_path
):
    from explorer.engine.plan import RenderPlan
    from explorer_bench.drafts import measure_draft_drag

    forced = RenderPlan(threads=1, drafts={1: True}, draft_note="forced")
    report: dict = {}
    figures = measure_draft_drag(
        tiny_checkpoint,
        drags=2,
        moves=3,
        n_images=4,
        plan=forced,
        report=report,
        screenshot=str(tmp_path / "draft.png"),
    )
    assert (tmp_path / "draft.png").stat().st_size > 0  # the window showing a draft
    assert report["plan"] is forced and set(figures) == {"offset", "temperature"}
    for f in figures.values():
        assert f["moves"] == 6 and f["drafts"] == 6  # every timed move with drafts on
        assert f["ratio"] == pytest.approx(f["draft_p50_ms"] / f["float32_p50_ms"], rel=0.01)
        assert f["draft_frame_p50_ms"] > 0 and f["exact_after_last_move_p50_ms"] > 0
        assert f["exact_after_last_move_p50_ms"] <= f["exact_after_last_move_max_ms"]
    none = measure_draft_drag(tiny_checkpoint, drags=1, moves=1, plan=RenderPlan(threads=1))
    assert none == {"skipped": "no drafts for 16 images: not measured yet"}


def test_draft_bench_prints_the_plan_the_decode_and_the_drag(
    qapp, tiny_checkpoint, one_torch_thread, capsys
):
    from explorer_bench.drafts import main

    args = [str(tiny_checkpoint), "--drags", "1", "--moves", "2", "--repeats", "1"]
    assert main([*args, "--sliders", "temperature"]) == 0
    out = capsys.readouterr().out
    assert "plan: " in out and "render (decode alone, interleaved): drafts: 1 image" in out
    # this machine's measurement decides whether the tiny model gets drafts
    assert "temperature drag, draft against float32" in out or "drag: no drafts" in out


@pytest.mark.slow
def test_the_report_has_core_figures_and_the_explorers_beside_them(
    tiny_checkpoint, one_torch_thread, capsys
):
    """``python -m explorer_bench``: ``realnvp bench``'s report with ``gui`` and ``draw``
    from the explorer's benchmarks, each in a child process."""
    from explorer_bench.__main__ import main

    argv = ["--json", "--quick", "--checkpoint", str(tiny_checkpoint), "--threads", "1"]
    assert main([*argv, "--presets", "--render-presets"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "checkpoint" in report["render"] and "bundled" in report["models"]
    gui = report["gui"]["checkpoint"]
    assert "error" not in gui, gui
    assert gui["images_1"]["cache"]["p50_ms"] > 0 and gui["parity"]["threads"] >= 1
    assert report["draw"]["stroke_to_answer"]["n"] > 0
