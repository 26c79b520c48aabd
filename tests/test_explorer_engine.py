"""RenderEngine: newest request wins, the level cache is exact, frames come back by signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_frame_shows

from core.files.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.files.images import to_uint8
from core.flow.inference import fold_for_inference
from core.flow.model import FlowConfig
from explorer.engine.render import Frame, RenderEngine, RenderRequest

THREE_LEVELS = FlowConfig(in_channels=1, image_size=8, num_scales=3, mid_channels=4, num_blocks=1)


@pytest.fixture
def engine(qapp, one_torch_thread):
    engine = RenderEngine(device="cpu", threaded=False)
    yield engine
    engine.shutdown()


def random_latents(shapes, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *s), dtype=np.float32) for s in shapes]


def collect(engine: RenderEngine) -> list[Frame]:
    frames: list[Frame] = []
    engine.frame_rendered.connect(frames.append)
    return frames


def reference_pixels(model, latents) -> np.ndarray:
    """A full decode by the engine's inference copy of ``model`` (same arithmetic)."""
    with torch.no_grad():
        images = fold_for_inference(model).decode([torch.from_numpy(z.copy()) for z in latents])
    return to_uint8(images.numpy())


@pytest.mark.parametrize("config", [None, THREE_LEVELS], ids=["2-levels", "3-levels"])
@pytest.mark.slow
def test_cache_gives_the_same_pixels_as_a_full_decode(
    engine, tmp_path, tiny_checkpoint, make_perturbed_model, config
):
    path = tiny_checkpoint
    if config is not None:
        path = save_checkpoint(tmp_path / "three.pt", make_perturbed_model(config))
    info = engine.open_checkpoint(path)
    model, _ = load_checkpoint(path)
    levels = len(info.latent_shapes)
    frames = collect(engine)
    latents = random_latents(info.latent_shapes, 5, seed=0)
    engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
    assert frames[-1].levels_decoded == levels
    np.testing.assert_array_equal(frames[-1].images, reference_pixels(model, latents))

    # Change each level in turn, coarse to fine: only it and the finer levels are decoded.
    for level in range(levels - 1, -1, -1):
        latents[level] = latents[level] * np.float32(0.5) + np.float32(0.3)
        engine.submit(RenderRequest(10 + level, info.model_id, tuple(latents)))
        frame = frames[-1]
        assert frame.request_id == 10 + level
        assert frame.levels_decoded == level + 1
        np.testing.assert_array_equal(frame.images, reference_pixels(model, latents))
    assert not np.array_equal(frames[0].images, frames[-1].images)


def test_without_cache_every_level_is_decoded(engine, tiny_checkpoint):
    info = engine.open_checkpoint(tiny_checkpoint)
    engine.cache_enabled = False
    frames = collect(engine)
    latents = random_latents(info.latent_shapes, 2, seed=1)
    for request_id in (1, 2):
        engine.submit(RenderRequest(request_id, info.model_id, tuple(latents)))
    assert [f.levels_decoded for f in frames] == [2, 2]
    np.testing.assert_array_equal(frames[0].images, frames[1].images)


def test_superseded_requests_are_dropped(engine, tiny_checkpoint):
    info = engine.open_checkpoint(tiny_checkpoint)
    frames = collect(engine)
    with engine.held():
        for request_id in range(1, 6):
            latents = random_latents(info.latent_shapes, 3, seed=request_id)
            engine.submit(RenderRequest(request_id, info.model_id, tuple(latents)))
        assert frames == []  # nothing rendered while held
    assert [f.request_id for f in frames] == [5]
    assert engine.dropped == 4 and frames[0].dropped == 4
    model, _ = load_checkpoint(tiny_checkpoint)
    expected = reference_pixels(model, random_latents(info.latent_shapes, 3, seed=5))
    np.testing.assert_array_equal(frames[0].images, expected)


def test_requests_for_a_replaced_model_are_ignored(engine, tiny_checkpoint):
    old = engine.open_checkpoint(tiny_checkpoint)
    new = engine.open_checkpoint(tiny_checkpoint)
    assert new.model_id != old.model_id
    frames = collect(engine)
    engine.submit(RenderRequest(1, old.model_id, tuple(random_latents(old.latent_shapes, 1, 0))))
    assert frames == []


def test_requests_are_immutable_copies():
    z = np.zeros((1, 2, 4, 4), dtype=np.float32)
    request = RenderRequest(1, 1, (z,))
    z[:] = 5.0
    assert request.latents[0].max() == 0.0
    with pytest.raises(ValueError):
        request.latents[0][0, 0, 0, 0] = 1.0


def test_model_info_comes_from_the_checkpoint(engine, tiny_checkpoint):
    info = engine.open_checkpoint(tiny_checkpoint)
    assert info.source == str(tiny_checkpoint)
    assert (info.dataset, info.test_bpd, info.step) == ("tiny-test", 5.25, 7)
    assert (info.image_size, info.channels, info.untrained) == (8, 1, False)
    assert info.latent_shapes == ((2, 4, 4), (2, 4, 4))
    model, _ = load_checkpoint(tiny_checkpoint)
    assert info.num_parameters == sum(p.numel() for p in model.parameters())
    assert info.device.startswith("cpu")


def test_a_bad_checkpoint_keeps_the_current_model(engine, tiny_checkpoint, tmp_path):
    info = engine.open_checkpoint(tiny_checkpoint)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        engine.open_checkpoint(bad)
    assert engine.model_info is info
    frames = collect(engine)
    engine.submit(RenderRequest(1, info.model_id, tuple(random_latents(info.latent_shapes, 1, 0))))
    assert len(frames) == 1


def test_wrong_latents_report_a_failure_not_a_crash(engine, tiny_checkpoint):
    info = engine.open_checkpoint(tiny_checkpoint)
    errors: list[str] = []
    engine.render_failed.connect(errors.append)
    engine.submit(RenderRequest(1, info.model_id, (np.zeros((1, 3, 3, 3), np.float32),)))
    assert errors and "latent levels" in errors[0]


def test_random_model_is_untrained_and_renders(engine):
    info = engine.open_random()
    assert info.untrained and info.source is None
    frames = collect(engine)
    engine.submit(RenderRequest(1, info.model_id, tuple(random_latents(info.latent_shapes, 2, 0))))
    images = frames[0].images
    assert images.shape == (2, 1, 28, 28) and images.dtype == np.uint8
    assert images.std() > 0


def test_threaded_engine_delivers_frames_on_the_gui_thread(
    qtbot, tiny_checkpoint, one_torch_thread
):
    from PySide6.QtCore import QThread

    engine = RenderEngine(device="cpu", threaded=True)
    try:
        info = engine.open_checkpoint(tiny_checkpoint)
        threads: list[object] = []
        frames: list[Frame] = []
        engine.frame_rendered.connect(lambda frame: threads.append(QThread.currentThread()))
        engine.frame_rendered.connect(frames.append)
        latents = random_latents(info.latent_shapes, 4, seed=2)
        engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
        # On a loaded machine the measured plan may make even this grid progressive:
        # then parts come first, and the whole grid last.
        qtbot.waitUntil(lambda: bool(frames) and frames[-1].complete, timeout=30_000)
        frame = frames[-1]
        assert frame.request_id == 1
        assert set(threads) == {QThread.currentThread()}  # the test runs on the GUI thread
        model, _ = load_checkpoint(tiny_checkpoint)
        assert_frame_shows(frame, reference_pixels(model, latents))
    finally:
        engine.shutdown()


def test_rendering_uses_the_folded_model_and_agrees_with_the_original(engine, tiny_checkpoint):
    info = engine.open_checkpoint(tiny_checkpoint)
    model, _ = load_checkpoint(tiny_checkpoint)
    latents = random_latents(info.latent_shapes, 6, seed=3)
    frames = collect(engine)
    engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
    with torch.no_grad():
        original = model.decode([torch.from_numpy(z.copy()) for z in latents]).numpy()
    # Same function to float tolerance: at most one 8-bit level apart, nearly everywhere equal.
    difference = np.abs(frames[0].images.astype(int) - to_uint8(original).astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99
    np.testing.assert_array_equal(engine.decode(latents), frames[0].images)


def test_encode_gives_exact_latents_and_cores_bits_per_dim(engine, tiny_checkpoint):
    info = engine.open_checkpoint(tiny_checkpoint)
    model, _ = load_checkpoint(tiny_checkpoint)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 8, 8), dtype=np.uint8)
    encoded = engine.encode(pixels)
    assert encoded.model_id == info.model_id
    assert [z.shape for z in encoded.latents] == list(info.latent_shapes)
    x8 = torch.from_numpy(pixels)[None]
    with torch.no_grad():
        expected = model.bits_per_dim(x8, torch.Generator().manual_seed(0)).item()
        folded = fold_for_inference(model).bits_per_dim(x8, torch.Generator().manual_seed(0))
        centre_latents = model.encode((x8.float() + 0.5) / 256)
    assert encoded.bits_per_dim == expected  # the original model: exactly core's figure
    assert folded.item() == pytest.approx(expected, rel=1e-5)  # and the folded one agrees
    for z, ref in zip(encoded.latents, centre_latents):
        np.testing.assert_allclose(z, ref[0].numpy(), atol=1e-5)
    assert encoded.max_abs_error < 1e-4
    np.testing.assert_array_equal(encoded.reconstruction, pixels)
    assert encoded.error.shape == pixels.shape and not encoded.error.flags.writeable
    # Deterministic: the same pixels, the same figures, whatever was encoded before.
    engine.encode(np.zeros_like(pixels))
    again = engine.encode(pixels)
    assert again.bits_per_dim == encoded.bits_per_dim
    for a, b in zip(again.latents, encoded.latents):
        np.testing.assert_array_equal(a, b)


def test_encode_refuses_the_wrong_shape(engine, tiny_checkpoint):
    engine.open_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match="expected uint8 pixels of shape"):
        engine.encode(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="expected uint8"):
        engine.encode(np.zeros((1, 8, 8), np.float32))


def test_each_target_keeps_its_newest_request_and_its_own_cache(engine, tiny_checkpoint):
    info = engine.open_checkpoint(tiny_checkpoint)
    frames = collect(engine)
    with engine.held():
        for request_id, target in ((1, "samples"), (2, "strip"), (3, "samples"), (4, "strip")):
            latents = random_latents(info.latent_shapes, 2, seed=request_id)
            engine.submit(RenderRequest(request_id, info.model_id, tuple(latents), target))
    assert [(f.request_id, f.target) for f in frames] == [(3, "samples"), (4, "strip")]
    assert engine.dropped == 2
    # A strip frame does not evict the samples' cache: the same samples again hit it fully.
    samples = random_latents(info.latent_shapes, 2, seed=3)
    samples[0] = samples[0] + np.float32(1.0)
    engine.submit(RenderRequest(5, info.model_id, tuple(samples)))
    assert frames[-1].levels_decoded == 1


# -- background torch.compile -------------------------------------------------------------


def test_compile_is_off_unless_asked(qapp, one_torch_thread):
    engine = RenderEngine(device="cpu", threaded=False)
    try:
        engine.open_random()
        assert engine.compile_status == "off" and engine.models.compiled is None
    finally:
        engine.shutdown()


def test_a_failed_compile_is_silent_and_frames_stay_right(
    monkeypatch, qapp, one_torch_thread, tmp_path, make_perturbed_model
):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nlong story")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(torch.compiler, "set_stance", lambda *a, **k: None, raising=False)
    path = save_checkpoint(tmp_path / "three.pt", make_perturbed_model(THREE_LEVELS))
    engine = RenderEngine(device="cpu", threaded=False, compile=True)
    try:
        info = engine.open_checkpoint(path)
        assert not engine.wait_for_compile(timeout=60)
        assert engine.compile_status == "failed: RuntimeError: no C++ compiler"
        frames = collect(engine)
        latents = random_latents(info.latent_shapes, 2, seed=0)
        engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
        model, _ = load_checkpoint(path)
        np.testing.assert_array_equal(frames[-1].images, reference_pixels(model, latents))
    finally:
        engine.shutdown()


@pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"), reason="needs torch >= 2.6")
@pytest.mark.slow
def test_compiled_steps_render_the_same_frames_and_never_compile_on_the_render_thread(
    qapp, one_torch_thread, tmp_path, make_perturbed_model
):
    path = save_checkpoint(tmp_path / "three.pt", make_perturbed_model(THREE_LEVELS))
    model, _ = load_checkpoint(path)
    engine = RenderEngine(device="cpu", threaded=False, compile=True)
    engine.compile_batches = (2,)
    try:
        info = engine.open_checkpoint(path)
        if not engine.wait_for_compile(timeout=600):
            pytest.skip(f"torch.compile does not work here: {engine.compile_status}")
        assert engine.compile_status.startswith("ready")
        compiled = engine.models.compiled
        calls = {"n": 0}
        for key, fn in list(compiled.steps.items()):

            def counted(*args, _fn=fn):
                calls["n"] += 1
                return _fn(*args)

            compiled.steps[key] = counted
        frames = collect(engine)
        latents = random_latents(info.latent_shapes, 2, seed=1)
        engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
        assert calls["n"] == len(info.latent_shapes) + 1  # every level and to_image
        reference = reference_pixels(model, latents)
        assert np.abs(frames[-1].images.astype(int) - reference).max() <= 1
        # A finer-level change reuses the cache through the compiled steps too.
        latents[0] = random_latents(info.latent_shapes, 2, seed=2)[0]
        engine.submit(RenderRequest(2, info.model_id, tuple(latents)))
        assert frames[-1].levels_decoded == 1
        assert np.abs(frames[-1].images.astype(int) - reference_pixels(model, latents)).max() <= 1
        # A batch size it was not built for: no compile here, eager from now on, same pixels.
        latents = random_latents(info.latent_shapes, 3, seed=3)
        engine.submit(RenderRequest(3, info.model_id, tuple(latents)))
        np.testing.assert_array_equal(frames[-1].images, reference_pixels(model, latents))
        assert engine.compile_status.startswith("ready")  # unused, not broken
    finally:
        engine.shutdown()


def test_only_the_render_thread_computes_with_more_than_one_thread(
    qtbot, tiny_checkpoint, one_torch_thread
):
    """A second OpenMP thread team (the GUI thread loading a model, an importer encoding)
    oversubscribes the cores and made render-thread decodes about 1.5x slower; so the GUI
    thread and every other caller compute on one thread, and frames on the plan's."""
    import threading

    from explorer.engine.plan import default_plan

    torch.set_num_threads(2)  # as the GUI thread starts: torch's default team
    engine = RenderEngine(device="cpu", threaded=True, plan=default_plan(2, forced=True))
    try:
        info = engine.open_checkpoint(tiny_checkpoint)  # on this (GUI) thread
        assert torch.get_num_threads() == 1
        seen: dict[str, int] = {}

        def record(_module, _args) -> None:
            seen.setdefault(threading.current_thread().name, torch.get_num_threads())

        for model in (engine.models.exact, engine.models.original):
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.register_forward_pre_hook(record)
        frames: list[Frame] = []
        engine.frame_rendered.connect(frames.append)
        latents = random_latents(info.latent_shapes, 2, seed=3)
        engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
        qtbot.waitUntil(lambda: bool(frames) and frames[-1].complete, timeout=30_000)
        render_thread = next(iter(seen))
        assert seen[render_thread] == 2

        def exporter() -> None:
            torch.set_num_threads(2)  # whatever the thread had, the engine gives it one
            engine.decode([z[:1] for z in latents], info.model_id)

        worker = threading.Thread(target=exporter, name="exporter")
        worker.start()
        worker.join()
        assert seen["exporter"] == 1
        assert torch.get_num_threads() == 1
        # A one-image encode (a Draw answer) is computed by the render thread's team.
        seen.clear()
        answer = threading.Thread(
            target=lambda: engine.encode(np.zeros((1, 8, 8), np.uint8)), name="answers"
        )
        answer.start()
        answer.join()
        assert seen == {render_thread: 2}
    finally:
        engine.shutdown()


def assert_each_as_alone(engine: RenderEngine, batch: list, pixels: np.ndarray) -> None:
    """Each image of a batched encode has what a one-image encode gives it: latents and
    map to float rounding, the same reconstruction, bits/dim the map's total."""
    assert len(batch) == len(pixels)
    for one, image in zip(batch, pixels):
        alone = engine.encode(image)
        for a, b in zip(one.latents, alone.latents):
            np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_array_equal(one.reconstruction, alone.reconstruction)
        assert one.model_id == alone.model_id
        assert one.bits_per_dim == one.likelihood.bits_per_dim
        assert abs(one.bits_per_dim - alone.bits_per_dim) < 1e-4
        for key, heat in alone.likelihood.heat.items():
            assert np.abs(one.likelihood.heat[key].astype(int) - heat).max() <= 1


def test_a_batched_encode_from_another_thread_computes_on_the_render_threads_team(
    qtbot, tiny_checkpoint, one_torch_thread, monkeypatch
):
    """A folder import's batches compute with every core other processes leave free, but
    on the render thread, so the process keeps one OpenMP team: a second team on the
    importer's thread made each image cost about 1.7x. The importer's thread computes
    nothing; its images get the figures a one-image encode gives, and frames afterwards
    use the plan's threads."""
    import threading

    from core.training import threads as thread_policy
    from explorer.engine.plan import default_plan

    # A quiet 2-core machine, whatever else runs beside this test (another test worker).
    monkeypatch.setattr(thread_policy, "usable_cores", lambda: 2)
    monkeypatch.setattr(thread_policy, "others_running", lambda: 0)

    engine = RenderEngine(device="cpu", threaded=True, plan=default_plan(2, forced=True))
    try:
        info = engine.open_checkpoint(tiny_checkpoint)
        seen: list[tuple[int, int]] = []  # (thread, torch threads) at every convolution

        def record(_module, _args) -> None:
            seen.append((threading.get_ident(), torch.get_num_threads()))

        for model in (engine.models.exact, engine.models.original):
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.register_forward_pre_hook(record)
        rng = np.random.default_rng(4)
        pixels = rng.integers(0, 256, (3, 1, 8, 8), dtype=np.uint8)
        results: dict[str, object] = {}

        def importer() -> None:
            results["thread"] = threading.get_ident()
            results["batch"] = engine.encode_images(pixels, info.model_id)

        worker = threading.Thread(target=importer, name="importer")
        worker.start()
        worker.join(30)
        assert not worker.is_alive()
        assert seen, "the batch computed nothing"
        assert {t for t, _ in seen} == {engine._render_ident} != {results["thread"]}
        assert {n for _, n in seen} == {2}
        assert_each_as_alone(engine, results["batch"], pixels)
        seen.clear()
        frames = collect(engine)
        latents = random_latents(info.latent_shapes, 2, seed=3)
        engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
        qtbot.waitUntil(lambda: bool(frames) and frames[-1].complete, timeout=30_000)
        assert {n for t, n in seen if t == engine._render_ident} == {2}
    finally:
        engine.shutdown()


def test_render_thread_jobs_wait_for_frames_and_end_with_the_engine(
    qtbot, tiny_checkpoint, one_torch_thread
):
    """A job handed to the render thread runs after the frames waiting; a job still
    waiting when the engine shuts down raises in its caller instead of waiting for ever."""
    import threading

    engine = RenderEngine(device="cpu", threaded=True)
    try:
        info = engine.open_checkpoint(tiny_checkpoint)
        qtbot.waitUntil(lambda: not engine.measuring, timeout=60_000)
        order: list[str] = []
        real_render = engine._render

        def render(*args) -> None:
            order.append("frame")
            real_render(*args)

        engine._render = render
        latents = tuple(random_latents(info.latent_shapes, 2, seed=1))
        with engine.held():
            engine.submit(RenderRequest(1, info.model_id, latents))
            job = threading.Thread(
                target=lambda: order.append(engine._on_render_thread(lambda: "job"))
            )
            job.start()
            qtbot.waitUntil(lambda: bool(engine.scheduler.jobs), timeout=10_000)
        job.join(30)
        assert order == ["frame", "job"]

        errors: list[Exception] = []

        def waiting() -> None:
            try:
                engine._on_render_thread(lambda: None)
            except RuntimeError as exc:
                errors.append(exc)

        with engine.held():
            late = threading.Thread(target=waiting)
            late.start()
            qtbot.waitUntil(lambda: bool(engine.scheduler.jobs), timeout=10_000)
            engine.shutdown()
        late.join(30)
        assert not late.is_alive()
        assert [str(e) for e in errors] == ["the render engine has stopped"]
    finally:
        engine.shutdown()


def test_a_plan_measurement_decode_yields_to_a_waiting_frame(
    qtbot, tiny_checkpoint, one_torch_thread
):
    """A grid change that arrives during the plan's measurement is rendered at once: the
    measurement's decode is cut short (as the model's hooks cut it between layers), the
    frame renders, and the decode runs again, so the measurement still ends."""
    engine = RenderEngine(device="cpu", threaded=True)
    try:
        info = engine.open_checkpoint(tiny_checkpoint)
        frames = collect(engine)
        latents = tuple(random_latents(info.latent_shapes, 4, seed=5))
        real = engine._decode
        cut: list[bool] = []

        def decode(model, z, *rest):
            if engine.scheduler.measure_preemptible and not cut:
                cut.append(True)
                engine.submit(RenderRequest(7, info.model_id, latents))  # the user's change
                engine.scheduler.check_preempted()  # what the hooks do between two layers
            return real(model, z, *rest)

        engine._decode = decode
        qtbot.waitUntil(lambda: bool(cut), timeout=60_000)
        qtbot.waitUntil(
            lambda: any(f.request_id == 7 and f.complete for f in frames), timeout=60_000
        )
        assert engine.measure_yields == 1
        qtbot.waitUntil(lambda: not engine.measuring, timeout=120_000)
        assert engine.plan.measured  # the measurement went on after the frame
    finally:
        engine.shutdown()


def test_encode_images_gives_each_image_what_encode_gives_it(engine, tiny_checkpoint):
    """The batched encode of a folder import: the same latents, reconstruction and map as
    one image at a time, whatever shares the batch; bits/dim is the map's total (what
    ``realnvp encode`` prints), within float rounding of RealNVP.bits_per_dim."""
    info = engine.open_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    batch = engine.encode_images(pixels, info.model_id)
    assert_each_as_alone(engine, batch, pixels)
    # An image's figures do not depend on its neighbours.
    again = engine.encode_images(pixels[2:3], info.model_id)[0]
    assert abs(again.bits_per_dim - batch[2].bits_per_dim) < 1e-5
    with pytest.raises(ValueError, match="shape"):
        engine.encode_images(pixels[:, :, :4], info.model_id)
    with pytest.raises(ValueError, match="changed"):
        engine.encode_images(pixels, info.model_id + 1)
