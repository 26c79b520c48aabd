"""The render plan and progressive rendering: the selected image first, the grid in chunks,
a newer request preempts the chunks, the level cache stays exact; the plan is measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_frame_shows
from PySide6.QtCore import Qt

from core.files.checkpoint import load_checkpoint
from core.files.images import to_uint8
from core.flow.inference import fold_for_inference
from explorer.engine.plan import (
    PLAN_BATCHES,
    PlanMeasurement,
    RenderPlan,
    choose_threads,
    default_plan,
    thread_candidates,
)
from explorer.engine.render import Frame, RenderEngine, RenderRequest
from explorer.panels.samples import frame_text

# Figures that make any grid of two or more images progressive, in chunks of two.
SLOW = RenderPlan(threads=1, decode_ms={1: {1: 60.0, 16: 480.0}}, measured=True)


def random_latents(shapes, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *s), dtype=np.float32) for s in shapes]


def reference_pixels(model, latents) -> np.ndarray:
    with torch.no_grad():
        images = fold_for_inference(model).decode([torch.from_numpy(z.copy()) for z in latents])
    return to_uint8(images.numpy())


@pytest.fixture
def slow_engine(qapp, one_torch_thread):
    engine = RenderEngine(device="cpu", threaded=False, plan=SLOW)
    yield engine
    engine.shutdown()


# -- the plan ---------------------------------------------------------------------------------


def test_plan_predicts_between_measured_batches_and_decides_progressive():
    assert SLOW.predict_ms(1) == 60.0 and SLOW.predict_ms(16) == 480.0
    assert SLOW.predict_ms(6) == pytest.approx(60.0 + 5 * 28.0)
    assert SLOW.predict_ms(32) == pytest.approx(60.0 + 31 * 28.0)
    assert SLOW.predict_ms(16, fraction=0.5) == 240.0
    assert SLOW.progressive(16) and SLOW.progressive(2)
    assert not SLOW.progressive(1)  # a single image has nothing to show first
    fast = RenderPlan(threads=1, decode_ms={1: {1: 2.0, 16: 30.0}})
    assert not fast.progressive(16)  # within the frame budget: whole frames
    assert fast.progressive(64)  # a big grid of the same model is over it
    assert not default_plan(1).progressive(16)  # nothing measured: never guessed
    # Chunks take up to four budgets (200 ms): 60 ms for one image, 28 ms for each more.
    assert SLOW.chunk_size(15) == 6
    assert SLOW.chunk_size(3) == 3


def test_more_threads_only_when_clearly_faster():
    assert choose_threads({1: {1: 10.0, 16: 100.0}, 2: {1: 8.0, 16: 60.0}}) == 2
    assert choose_threads({1: {1: 10.0, 16: 100.0}, 2: {1: 9.5, 16: 98.0}}) == 1
    assert choose_threads({1: {1: 10.0, 16: 100.0}, 2: {1: 1.0}}) == 1  # incomplete: ignored
    # Faster in the median but with a far slower worst decode (an oversubscribed team).
    assert choose_threads({1: {1: 10.0, 16: 100.0}, 2: {1: 5.0, 16: 50.0}}, {1: 130, 2: 900}) == 1
    assert thread_candidates(1) == (1,) and thread_candidates(8) == (1, 8)


def test_measurement_times_every_thread_count_and_batch_and_picks_the_faster():
    calls = []

    def decode(batch: int, threads: int) -> float:
        calls.append((batch, threads))
        return batch * (10.0 if threads == 1 else 4.0)

    measurement = PlanMeasurement(default_plan(1), decode, threads=(1, 4))
    plans = list(measurement)
    final = plans[-1]
    assert final.measured and final.threads == 4
    assert final.decode_ms == {1: {1: 10.0, 16: 160.0}, 4: {1: 4.0, 16: 64.0}}
    assert {c for c in calls} == {(b, t) for b in PLAN_BATCHES for t in (1, 4)}
    # One decode per step, so a frame never waits for more than one; the current thread
    # count comes first, so a provisional plan can go progressive early.
    assert len(plans) == len(calls)  # the first step's two decodes: warm-up and figure
    assert calls[0][1] == 1
    assert plans[0].decode_ms == {1: {1: 10.0}}  # a first figure (warm) at once
    assert any(p.decode_ms and not p.measured for p in plans)
    text = final.describe()
    assert "Render threads: 4 (measured)" in text and "16 images 64.0 ms" in text


def test_forced_threads_are_measured_but_kept():
    plan = default_plan(3, forced=True)
    final = list(PlanMeasurement(plan, lambda b, t: 100.0 * b, threads=(1, 3)))[-1]
    assert final.threads == 3 and set(final.decode_ms) == {3}
    assert "set by --threads" in final.describe()
    assert "Progressive" in final.describe()


# -- progressive rendering ----------------------------------------------------------------------


def test_selected_image_comes_first_then_chunks_then_the_exact_grid(slow_engine, tiny_checkpoint):
    engine = slow_engine
    info = engine.open_checkpoint(tiny_checkpoint)
    model, _ = load_checkpoint(tiny_checkpoint)
    frames: list[Frame] = []
    engine.frame_rendered.connect(frames.append)
    latents = random_latents(info.latent_shapes, 9, seed=0)
    engine.submit(RenderRequest(1, info.model_id, tuple(latents), focus=4))
    expected = reference_pixels(model, latents)

    first, *chunks = frames
    assert first.stale == (0, 1, 2, 3, 5, 6, 7, 8) and not first.complete
    np.testing.assert_array_equal(first.images[4], expected[4])
    assert not first.images[[0, 1, 2, 3, 5, 6, 7, 8]].any()  # nothing older to show: blank
    # Eight more images: chunks of up to six by SLOW's figures, evened out to two of four.
    assert len(chunks) == 2
    assert chunks[0].stale == (5, 6, 7, 8)
    np.testing.assert_array_equal(chunks[0].images[:5], expected[:5])
    assert [f.complete for f in chunks] == [False, True] and chunks[-1].stale == ()
    assert all(f.request_id == 1 and f.first_ms == first.elapsed_ms for f in frames)
    np.testing.assert_array_equal(chunks[-1].images, expected)
    assert "first image" in frame_text(chunks[-1], 2)
    assert "grid 1/9" in frame_text(first, 2)

    # The cache now holds the whole grid: a change to the finest level alone decodes only
    # that level, and the pixels are still those of a full decode.
    frames.clear()
    latents[0] = latents[0] * np.float32(0.5)
    engine.submit(RenderRequest(2, info.model_id, tuple(latents), focus=0))
    assert all(f.levels_decoded == 1 for f in frames)
    # The older pixels stand in (dimmed) for the images not yet redone.
    np.testing.assert_array_equal(frames[0].images[1:], expected[1:])
    np.testing.assert_array_equal(frames[-1].images, reference_pixels(model, latents))


def test_a_newer_request_preempts_the_rest_of_the_grid(slow_engine, tiny_checkpoint):
    engine = slow_engine
    info = engine.open_checkpoint(tiny_checkpoint)
    model, _ = load_checkpoint(tiny_checkpoint)
    old = random_latents(info.latent_shapes, 7, seed=1)
    engine.submit(RenderRequest(1, info.model_id, tuple(old)))  # fills the level cache
    new = [z.copy() for z in old]
    new[0] = new[0] + np.float32(0.25)
    newer = [z.copy() for z in new]
    newer[0] = newer[0] - np.float32(0.5)

    parts: list[Frame] = []

    def emit(frame: Frame) -> None:
        parts.append(frame)
        if len(parts) == 1:  # the user moves the slider again as the first image shows
            with engine.held():
                engine.submit(RenderRequest(3, info.model_id, tuple(newer)))

    with engine.held():  # keep request 3 waiting while request 2 renders
        engine._render(RenderRequest(2, info.model_id, tuple(new), focus=2), emit)
        assert len(parts) == 1 and not parts[0].complete
        assert engine.preempted == 1
        frames: list[Frame] = []
        engine.frame_rendered.connect(frames.append)
    # Request 3 renders from a cache that still holds request 1's consistent frame.
    assert frames[-1].request_id == 3 and frames[-1].complete
    assert frames[-1].levels_decoded == 1
    np.testing.assert_array_equal(frames[-1].images, reference_pixels(model, newer))


def test_whole_frames_when_the_plan_says_so(qapp, one_torch_thread, tiny_checkpoint):
    engine = RenderEngine(device="cpu", threaded=False, plan=default_plan(1))
    info = engine.open_checkpoint(tiny_checkpoint)
    frames: list[Frame] = []
    engine.frame_rendered.connect(frames.append)
    engine.submit(RenderRequest(1, info.model_id, tuple(random_latents(info.latent_shapes, 9, 0))))
    assert len(frames) == 1 and frames[0].complete and frames[0].first_ms is None
    engine.shutdown()


def test_measured_plan_on_a_real_model(qapp, one_torch_thread, tiny_checkpoint):
    engine = RenderEngine(device="cpu", threaded=False)
    assert not engine.measure_plans  # synchronous engines measure when asked
    engine.open_checkpoint(tiny_checkpoint)
    plans = []
    engine.plan_changed.connect(plans.append)
    plan = engine.measure_plan_now()
    assert plan.measured and plans[-1] == plan
    assert set(plan.decode_ms) == set(thread_candidates())
    assert all(set(f) == set(PLAN_BATCHES) for f in plan.decode_ms.values())
    assert plan.threads in thread_candidates()
    assert "Render threads" in engine.render_status
    assert "torch.compile: off" in engine.render_status
    engine.shutdown()


def test_threaded_engine_measures_between_frames(qapp, qtbot, tiny_checkpoint):
    engine = RenderEngine(device="cpu", threaded=True)
    try:
        with qtbot.waitSignal(engine.plan_changed, timeout=60_000):
            info = engine.open_checkpoint(tiny_checkpoint)
        frames: list[Frame] = []
        engine.frame_rendered.connect(frames.append)
        latents = random_latents(info.latent_shapes, 4, seed=2)
        engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
        qtbot.waitUntil(lambda: bool(frames) and frames[-1].complete, timeout=30_000)
        qtbot.waitUntil(lambda: not engine.measuring, timeout=60_000)
        assert engine.plan.measured
        # The status bar's device label shows the threads the plan chose.
        assert engine.device_label.startswith(f"cpu ({engine.plan.threads} thread")
        model, _ = load_checkpoint(tiny_checkpoint)
        assert_frame_shows(frames[-1], reference_pixels(model, latents))
    finally:
        engine.shutdown()


def test_a_slow_models_first_frame_is_already_progressive(qapp, qtbot, tiny_checkpoint):
    engine = RenderEngine(device="cpu", threaded=True)
    # The model decodes like a real-size one: 100 ms per image, by this engine's clock.
    engine._timed_decode = lambda model_id, batch, threads, model=None: 100.0 * batch
    try:
        frames: list[Frame] = []
        engine.frame_rendered.connect(frames.append)
        info = engine.open_checkpoint(tiny_checkpoint)
        latents = random_latents(info.latent_shapes, 4, seed=3)
        engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
        qtbot.waitUntil(lambda: bool(frames) and frames[-1].complete, timeout=30_000)
        assert not frames[0].complete and frames[0].stale == (1, 2, 3)
    finally:
        engine.shutdown()


def test_opening_another_model_ends_its_measurement(qapp, one_torch_thread, tiny_checkpoint):
    engine = RenderEngine(device="cpu", threaded=False, measure_plan=True)
    engine.open_checkpoint(tiny_checkpoint)
    assert engine.measuring
    engine._measure_step()  # part-way
    engine.open_checkpoint(tiny_checkpoint)
    assert not engine.plan.decode_ms  # the new model starts from the default plan
    assert engine.measure_plan_now().measured
    engine.shutdown()


# -- the window ----------------------------------------------------------------------------------


def test_window_shows_the_selected_image_first_and_dims_the_rest(
    make_window, tiny_checkpoint, qtbot, tmp_path
):
    window = make_window(tiny_checkpoint)
    window.engine._fixed_plan = SLOW
    window.open_checkpoint(tiny_checkpoint)
    window.samples_panel.count.setValue(9)
    view = window.samples_panel.view
    qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=view.cell_rects()[5].center())
    assert view.selected == 5
    shown: list[Frame] = []
    window.engine.frame_rendered.connect(shown.append)
    with window.engine.held():
        window.levels_panel.rows[0].offset.slider.setValue(40)
    request = window.last_request_id
    assert [f.request_id for f in shown] == [request] * len(shown) and len(shown) >= 2
    assert shown[0].stale == (0, 1, 2, 3, 4, 6, 7, 8)
    qtbot.waitUntil(lambda: view.painted_complete_id == request, timeout=10_000)
    assert view.painted_frame_id == request
    assert window.last_frame is shown[-1]
    assert "first image" in window.frame_label.text()
    assert "Progressive" in window.frame_label.toolTip()

    # A partial frame paints its stale images dimmed, the fresh one as it is.
    def brightness(images, stale, index: int) -> int:
        view.set_images(images, view.frame_id + 1, stale)
        grab = view.grab().toImage()  # paints now
        rect = view.cell_rects()[index]
        points = [
            (x, y)
            for x in range(rect.left(), rect.right(), 3)
            for y in range(rect.top(), rect.bottom(), 3)
        ]
        return sum(grab.pixelColor(x, y).lightness() for x, y in points)

    images = shown[-1].images
    stale = (0, 1, 2, 3, 4, 6, 7, 8)
    assert brightness(images, stale, 4) < brightness(images, (), 4)
    assert brightness(images, stale, 5) == brightness(images, (), 5)
    assert view.painted_complete_id == view.frame_id  # the last one had nothing stale
    view.set_images(images, view.frame_id + 1, stale)
    window.grab().save(str(tmp_path / "partial.png"))
