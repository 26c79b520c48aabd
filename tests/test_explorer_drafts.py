"""Draft frames: while something is dragged, frames may be drawn by the draft copy (bf16 s/t
networks but for the first couplings a decode runs) where the render plan measured it faster
and within the draft test; the exact float32 frame replaces each draft once no newer move
follows, and a resting frame, exports and the level cache are always float32.

This machine's speed is forced here as in test_explorer_precision.py; the draft test itself
is real, on the bundled model and a cifar10 preset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturbed_model

from core.files.checkpoint import save_checkpoint
from core.files.images import to_uint8
from core.files.resources import bundled_model_path
from core.flow.coupling import AffineCoupling
from core.flow.inference import Bf16Network, draft_copy, fold_for_inference
from core.flow.model import PRESETS
from core.training.precision import draft_error, draft_passes
from explorer.engine.plan import (
    PLAN_BATCHES,
    PlanMeasurement,
    PrecisionMeasurement,
    RenderPlan,
    default_plan,
)
from explorer.engine.render import Frame, RenderEngine, RenderRequest
from explorer.panels.samples import frame_text, shown_frame
from explorer.state.state import ExplorerState

FAST_BF16 = {"float32": 4.0, "bf16": 1.0}
SLOW_BF16 = {"float32": 1.0, "bf16": 9.0}
GOOD_DRAFT = {"within_1": 0.97, "within_4": 0.995, "within_16": 0.9995, "max": 31.0}
FLIPPED_DRAFT = {"within_1": 0.92, "within_4": 0.92, "within_16": 0.92, "max": 255.0}


def fake(probe, draft=GOOD_DRAFT, draft_ms=None, calls=None) -> PrecisionMeasurement:
    """bf16 frames never the same picture (as on every model measured); drafts ``draft``."""
    calls = [] if calls is None else calls
    draft_ms = draft_ms or {1: 12.0, 16: 50.0}

    def decode(batch, threads, precision):
        calls.append((precision, batch))
        if precision == "draft":
            return draft_ms[batch]
        return 10.0 if batch == 1 else 100.0

    def error(batch):
        calls.append(("draft test", batch))
        return dict(draft)

    return PrecisionMeasurement(lambda: probe, lambda b: (False, 0.92), decode, draft=error)


def measured(precision: PrecisionMeasurement) -> RenderPlan:
    steps = PlanMeasurement(default_plan(1), lambda b, t: 10.0 * b, (1,), precision=precision)
    return list(steps)[-1]


# -- the draft test and the plan ---------------------------------------------------------------


def test_draft_error_counts_grey_levels_and_the_test_allows_few_far_pixels():
    exact = np.zeros((1, 1, 10, 100), np.uint8)
    close = exact.copy()
    close.flat[:100] = 4  # 10% of the pixels 4 levels off (10.3% beyond 1)
    close.flat[100:103] = 60  # three 60 off
    error = draft_error(exact, close)
    assert error == {"within_1": 0.897, "within_4": 0.997, "within_16": 0.997, "max": 60.0}
    assert draft_passes(error)
    flipped = close.copy()
    flipped.flat[200] = 255  # one pixel turned from black to white
    assert not draft_passes(draft_error(exact, flipped))
    blurred = exact.copy()
    blurred.flat[:6] = 17  # 0.6% of the pixels beyond 16 levels
    assert not draft_passes(draft_error(exact, blurred))
    with pytest.raises(ValueError, match="shapes"):
        draft_error(exact, exact[0])


def test_drafts_where_faster_and_within_the_draft_test():
    calls: list = []
    plan = measured(fake(FAST_BF16, calls=calls))
    assert calls[0] == ("draft test", max(PLAN_BATCHES))
    assert plan.precisions == dict.fromkeys(PLAN_BATCHES, "float32")  # frames stay exact
    assert plan.drafts == {1: False, 16: True}  # one image: 12 against 10 ms
    assert plan.draft_ms == {
        1: {"float32": 10.0, "draft": 12.0},
        16: {"float32": 100.0, "draft": 50.0},
    }
    assert [plan.draft_for(n) for n in (1, 15, 16, 64)] == [False, False, True, True]
    assert plan.draft_error == GOOD_DRAFT
    assert "Drafts while dragging: bf16 for 16 images (the draft test passed" in plan.describe()


def test_a_draft_beyond_the_test_is_refused_without_timing_it():
    calls: list = []
    plan = measured(fake(FAST_BF16, draft=FLIPPED_DRAFT, calls=calls))
    assert calls == [("draft test", max(PLAN_BATCHES))]
    assert not any(plan.draft_for(n) for n in (1, 16, 64))
    assert "Drafts while dragging: none (refused: 92.00% within 16" in plan.describe()


def test_without_fast_bf16_nothing_changes():
    calls: list = []
    plan = measured(fake(SLOW_BF16, calls=calls))
    assert calls == [] and plan.drafts == {}
    assert not any(plan.draft_for(n) for n in (1, 16))
    assert "Drafts while dragging: none (bf16 convolutions 9.0x slower here)" in plan.describe()


def test_the_draft_copy_keeps_the_first_couplings_of_a_decode_float32():
    folded = fold_for_inference(perturbed_model())
    draft = draft_copy(folded)
    fine = [m for m in draft.scales[0].modules() if isinstance(m, AffineCoupling)]
    assert fine and all(isinstance(c.net, Bf16Network) for c in fine)
    final = [m for m in draft.final.modules() if isinstance(m, AffineCoupling)]
    # the final scale's last couplings run first in a decode: float32
    assert [isinstance(c.net, Bf16Network) for c in final] == [True] + [False] * 3
    assert not any(isinstance(m, Bf16Network) for m in folded.modules())  # a copy
    # the same function as the folded model, to bf16 rounding
    zs = folded.sample_latents(2, 0.8, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        exact, fast = folded.decode(zs), draft.decode(zs)
    assert fast.dtype == torch.float32 and (fast - exact).abs().max() < 0.05


# -- the engine ----------------------------------------------------------------------------------

DRAFTS = RenderPlan(threads=1, drafts={1: True, 16: True}, draft_note="forced")


@pytest.fixture
def engine(qapp, one_torch_thread):
    engine = RenderEngine(device="cpu", threaded=False, plan=DRAFTS)
    yield engine
    engine.shutdown()


def latents_for(info, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *s), dtype=np.float32) for s in info.latent_shapes]


def decoded(model, latents) -> np.ndarray:
    with torch.inference_mode():
        return to_uint8(model.decode([torch.from_numpy(z) for z in latents]).numpy())


def test_a_draft_is_replaced_by_the_exact_frame_and_never_cached(engine, tmp_path):
    info = engine.open_checkpoint(save_checkpoint(tmp_path / "m.pt", perturbed_model(scale=0.2)))
    frames: list[Frame] = []
    engine.frame_rendered.connect(frames.append)
    latents = latents_for(info, 4, 0)
    engine.submit(RenderRequest(1, info.model_id, tuple(latents)))  # a resting frame
    assert [f.precision for f in frames] == ["float32"]

    moved = [z.copy() for z in latents]
    moved[0] += 0.5  # a drag of the finest level: the coarse levels come from the cache
    engine.submit(RenderRequest(2, info.model_id, tuple(moved), draft=True))
    assert [(f.request_id, f.precision) for f in frames[1:]] == [(2, "draft"), (2, "float32")]
    draft, exact = frames[1:]
    assert draft.levels_decoded == 1 < len(latents)  # it read the float32 cache
    np.testing.assert_array_equal(exact.images, engine.decode(moved))
    assert not np.array_equal(draft.images, exact.images)  # really drawn in bf16
    assert engine.scheduler.caches["samples"].precision == "float32"
    assert engine.exact_frames_due == 0 and engine.drafts_drawn == 1

    # the draft's pixels are the draft copy's finest level on the exact coarser ones
    exact_model, draft_model = engine.models.exact, engine.models.draft
    zs = [torch.from_numpy(z) for z in moved]
    with torch.inference_mode():
        h = exact_model.inverse_top(zs[-1])
        for level in range(len(zs) - 2, 0, -1):
            h = exact_model.inverse_level(level, zs[level], h)
        want = draft_model.to_image(draft_model.inverse_level(0, zs[0], h))
    np.testing.assert_array_equal(draft.images, to_uint8(want.numpy()))


def test_a_resting_frame_is_float32_where_drafts_are_allowed(engine, tiny_checkpoint):
    info = engine.open_checkpoint(tiny_checkpoint)
    frames: list[Frame] = []
    engine.frame_rendered.connect(frames.append)
    latents = latents_for(info, 16, 1)
    engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
    assert [f.precision for f in frames] == ["float32"]
    np.testing.assert_array_equal(frames[0].images, engine.decode(latents))
    assert engine.models.draft is None  # never made for exact work


def test_draft_requests_are_exact_where_the_plan_has_no_drafts(
    qapp, one_torch_thread, tiny_checkpoint
):
    engine = RenderEngine(device="cpu", threaded=False, num_threads=1)
    try:
        info = engine.open_checkpoint(tiny_checkpoint)
        frames: list[Frame] = []
        engine.frame_rendered.connect(frames.append)
        engine.submit(RenderRequest(1, info.model_id, tuple(latents_for(info, 2, 2)), draft=True))
        assert [f.precision for f in frames] == ["float32"]
        assert engine.drafts_drawn == 0 and engine.exact_frames_due == 0
    finally:
        engine.shutdown()


def test_threaded_the_exact_frame_arrives_after_the_last_move(qtbot, one_torch_thread, tmp_path):
    engine = RenderEngine(device="cpu", threaded=True, plan=DRAFTS)
    try:
        info = engine.open_checkpoint(
            save_checkpoint(tmp_path / "m.pt", perturbed_model(scale=0.2))
        )
        frames: list[Frame] = []
        engine.frame_rendered.connect(frames.append)
        latents = latents_for(info, 4, 3)
        for i in range(1, 9):  # a drag: moves faster than the exact frame would follow
            moved = [z + 0.05 * i for z in latents]
            engine.submit(RenderRequest(i, info.model_id, tuple(moved), draft=True))
            qtbot.wait(2)
        qtbot.waitUntil(
            lambda: bool(frames) and frames[-1].request_id == 8 and not frames[-1].draft
        )
        qtbot.wait(100)  # nothing comes after it
        assert frames[-1].request_id == 8 and frames[-1].precision == "float32"
        assert any(f.draft for f in frames)
        np.testing.assert_array_equal(frames[-1].images, engine.decode(moved))
        exact = [f.request_id for f in frames if not f.draft]
        assert exact[-1] == 8 and engine.exact_frames_due == 0
    finally:
        engine.shutdown()


def test_a_newer_request_replaces_the_waiting_exact_frame(qapp, one_torch_thread, tiny_checkpoint):
    engine = RenderEngine(device="cpu", threaded=False, plan=DRAFTS)
    try:
        info = engine.open_checkpoint(tiny_checkpoint)
        frames: list[Frame] = []
        engine.frame_rendered.connect(frames.append)
        latents = latents_for(info, 2, 5)
        with engine.held():  # the draft renders, its exact frame waits until the hold ends
            engine._render(
                RenderRequest(1, info.model_id, tuple(latents), draft=True), frames.append
            )
            assert engine.exact_frames_due == 1
            engine.submit(RenderRequest(2, info.model_id, tuple(z + 1 for z in latents)))
            assert engine.exact_frames_due == 0
        assert [(f.request_id, f.precision) for f in frames] == [(1, "draft"), (2, "float32")]
    finally:
        engine.shutdown()


# -- the window: which edits draft, what the status and the exports show ---------------------


def test_only_the_continued_moves_of_a_drag_are_drafts():
    state = ExplorerState(((1, 2, 2),), n_images=1)
    changes: list = []
    state.changed.connect(changes.append)
    state.set_temperature(0.5)
    state.set_temperature(0.6)
    state.end_edit()
    state.set_temperature(0.7)
    state.set_temperature(0.8, merge=False)
    assert [c.continued for c in changes] == [False, True, False, False]


def test_a_slider_drag_shows_drafts_then_the_exact_frame(make_window, tmp_path):
    window = make_window(save_checkpoint(tmp_path / "m.pt", perturbed_model(scale=0.2)))
    engine = window.engine
    engine.plan = DRAFTS
    seen: list[tuple[str, str, str]] = []
    engine.frame_rendered.connect(
        lambda f: seen.append(
            (f.precision, window.frame_label.text(), window.frame_label.toolTip().split("\n")[0])
        )
    )
    slider = window.levels_panel.rows[0].offset.slider
    slider.setSliderDown(True)
    slider.setValue(20)  # the first move: exact
    slider.setValue(40)  # then drafts, each replaced
    assert [s[0] for s in seen] == ["float32", "draft", "float32"]
    assert seen[1][1].startswith("draft ") and seen[1][2] == shown_frame(_Draft())
    assert "Shown: a draft" in seen[1][2] and seen[2][2] == "Shown: the exact frame (float32)"
    assert window.last_frame is not None and not window.last_frame.draft
    np.testing.assert_array_equal(window.last_frame.images, engine.decode(window.state.latents()))
    slider.setSliderDown(False)  # let go: the next edit (a key) is exact
    window.state.end_edit()
    slider.setValue(50)
    assert [s[0] for s in seen[3:]] == ["float32"]


class _Draft:
    precision = "draft"


def test_frame_text_says_draft():
    frame = Frame(1, 1, np.zeros((1, 1, 2, 2), np.uint8), 17.04, 2, 0, precision="draft")
    assert frame_text(frame, 2) == "draft 17.0 ms"
    assert frame_text(Frame(1, 1, frame.images, 35.0, 1, 0), 2) == "frame 35.0 ms, 1/2 levels"


# -- the real draft test ------------------------------------------------------------------------


@pytest.mark.skipif(not bundled_model_path().is_file(), reason="no bundled model")
@pytest.mark.slow
def test_bundled_model_drafts_pass_the_draft_test(qapp, one_torch_thread):
    engine = RenderEngine(device="cpu", threaded=False, num_threads=1)
    try:
        engine.open_checkpoint(bundled_model_path())
        error = engine._draft_error(engine.model_id, 16)
        # Measured: the 1.2259 bits/dim model passed the draft test (99.9% within 16 grey
        # levels, at most about 30 off). The 1.2134 one (issue 31's fourth run) has 99.19%
        # within 16 and one pixel 96 off, which the test refuses (it asks 99.5% and at most
        # 64), so its drags show float32 frames; so do the 1.2036 one (fifth run: 99.23%
        # within 16, at most 61 off) and the 1.1983 one (sixth: 99.28%, at most 60). What
        # holds for all four: nearly every pixel close, none flipped to the other extreme
        # (as the cifar10 preset's below are).
        assert error["within_16"] >= 0.99 and error["max"] <= 128, error
        assert error["within_1"] < 0.999  # not the same picture: bf16 frames are refused
    finally:
        engine.shutdown()


@pytest.mark.slow
def test_cifar10_preset_drafts_are_refused(qapp, one_torch_thread, tmp_path):
    engine = RenderEngine(device="cpu", threaded=False, num_threads=1)
    try:
        model = perturbed_model(PRESETS["cifar10"], scale=0.01)
        engine.open_checkpoint(save_checkpoint(tmp_path / "c.pt", model))
        error = engine._draft_error(engine.model_id, 2)
        assert not draft_passes(error), error  # pixels flip to the other extreme
        assert error["max"] > 200
    finally:
        engine.shutdown()


def test_a_drag_redraws_the_level_views_at_most_every_interval(make_window, tiny_checkpoint, qtbot):
    """During a drag the levels' latent views and histograms are redrawn at most every
    DRAG_REDRAW_MS (their redraws held the interpreter lock against the render thread),
    and the views always end showing the latents at rest; a single edit redraws at once."""
    from explorer.panels.levels import DRAG_REDRAW_MS

    window = make_window(tiny_checkpoint)
    window.show_explorer_tab(window.levels_panel)
    rows = window.levels_panel.rows
    redraws: list[int] = []
    for row in rows:
        real = row.refresh_views
        row.refresh_views = lambda real=real, i=row.index: (redraws.append(i), real())[1]

    def histogram(row) -> np.ndarray:
        return row.bars.getData()[1]

    def expected(row) -> np.ndarray:
        z = window.state.latent(row.index)
        counts, _ = np.histogram(z, bins=48, range=(-4.0, 4.0))
        return counts / (z.size * 8.0 / 48)

    slider = window.samples_panel.temperature.slider
    slider.setSliderDown(True)
    slider.setValue(slider.value() - 5)  # the first move redraws every level at once
    assert sorted(redraws) == sorted(r.index for r in rows)
    redraws.clear()
    for _ in range(10):  # the drag goes on: no redraw at each move
        slider.setValue(slider.value() - 3)
    assert redraws == []
    qtbot.wait(DRAG_REDRAW_MS + 100)  # the rest shows within the interval
    assert sorted(redraws) == sorted(r.index for r in rows)
    for row in rows:
        np.testing.assert_allclose(histogram(row), expected(row))
    slider.setSliderDown(False)
    window.state.end_edit()
    redraws.clear()
    slider.setValue(slider.value() + 4)  # a single edit, not a drag: at once
    assert sorted(redraws) == sorted(r.index for r in rows)
    for row in rows:
        np.testing.assert_allclose(histogram(row), expected(row))
