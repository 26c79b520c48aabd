"""CUDA graphs for rendering and the GPU fallbacks, tested on the CPU.

No GPU here: the capture itself is replaced by a stand-in that runs the captured function
(``FakeGraph``), so the engine's replay path, the once-only check against eager, the
fallbacks (failed capture, out of memory: smaller batches, then the CPU), freeing graphs on
a model switch and closing during a build all run on the CPU. The agreement of real graphs
with eager decoding is checked where CUDA is present (``tools/gpu_check.sh`` runs it).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import core.flow.graphs
from core.files.images import to_uint8
from core.flow.graphs import GraphedDecoder
from core.flow.inference import fold_for_inference
from explorer.engine.plan import RenderPlan, default_plan
from explorer.engine.render import Frame, RenderEngine, RenderRequest

CUDA = torch.cuda.is_available()


class FakeGraph:
    """Stands in for a captured CUDA graph: "replays" by calling the function."""

    replays = 0
    broken = False  # replays give wrong numbers (a capture that went wrong)
    fail_batch: int | None = None  # capture raises for this batch size
    oom_batch: int | None = None  # capture runs out of memory for this batch size and up

    def __init__(self, fn, example, pool, warmup=2) -> None:
        batch = example[0].shape[0]
        if FakeGraph.oom_batch is not None and batch >= FakeGraph.oom_batch:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if FakeGraph.fail_batch == batch:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.fn = fn

    def __call__(self, *args):
        FakeGraph.replays += 1
        out = self.fn(*args)
        if FakeGraph.broken:
            return out + 1.0 if isinstance(out, torch.Tensor) else [z + 1.0 for z in out]
        return out


@pytest.fixture
def fake_cuda(monkeypatch):
    """Graph capture that works on the CPU (see :class:`FakeGraph`)."""
    for name, value in (("replays", 0), ("broken", False), ("fail_batch", None)):
        monkeypatch.setattr(FakeGraph, name, value)
    monkeypatch.setattr(FakeGraph, "oom_batch", None)
    monkeypatch.setattr(core.flow.graphs, "_Graph", FakeGraph)
    monkeypatch.setattr(core.flow.graphs, "graphs_supported", lambda model: None)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    return FakeGraph


def random_latents(shapes, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *s), dtype=np.float32) for s in shapes]


def reference_pixels(model, latents) -> np.ndarray:
    with torch.no_grad():
        images = fold_for_inference(model).decode([torch.from_numpy(z.copy()) for z in latents])
    return to_uint8(images.numpy())


def gpu_engine(model, plan: RenderPlan | None = None, **kwargs) -> RenderEngine:
    """A synchronous engine that believes it renders on a GPU (its tensors stay on the
    CPU), with ``model`` installed."""
    engine = RenderEngine(device="cpu", threaded=False, plan=plan or default_plan(1), **kwargs)
    engine.device = torch.device("cuda")
    engine._install(model, source=None, untrained=True, dataset=None, test_bpd=None, step=None)
    return engine


def build_graphs(engine: RenderEngine) -> None:
    while engine.scheduler.graph_job is not None:
        engine._measure_step()


# -- the decoder on its own -----------------------------------------------------------------


def test_every_step_and_encode_is_captured_and_checked(fake_cuda, make_perturbed_model):
    model = fold_for_inference(make_perturbed_model())
    decoder = GraphedDecoder(model, batches=(1, 3))
    assert decoder.build().startswith("on: ")
    levels = model.num_levels
    assert decoder.graph_count == 2 * (levels + 1) + 1  # per batch: levels + to_image; encode
    zs = [torch.randn(3, *s) for s in model.latent_shapes]
    with torch.inference_mode():
        torch.testing.assert_close(decoder.decode(zs), model.decode(zs))
        x = torch.rand(1, 1, 8, 8) * 0.9 + 0.05
        for got, want in zip(decoder.encode(x), model.encode(x)):
            torch.testing.assert_close(got, want)
    assert decoder.encode(torch.rand(2, 1, 8, 8)) is None  # no encode graph for batch 2


def test_a_graph_that_disagrees_with_eager_is_not_used(fake_cuda, make_perturbed_model):
    fake_cuda.broken = True
    decoder = GraphedDecoder(fold_for_inference(make_perturbed_model()), batches=(1,))
    status = decoder.build()
    assert status.startswith("failed, eager") and "differs from eager" in status
    assert decoder.graph_count == 0


def test_out_of_memory_during_capture_keeps_the_smaller_batches(fake_cuda, make_perturbed_model):
    fake_cuda.oom_batch = 16
    decoder = GraphedDecoder(fold_for_inference(make_perturbed_model()), batches=(1, 16))
    status = decoder.build()
    assert status.startswith("on: ") and "batch 1," in status and "out of GPU memory" in status
    assert {key[2] for key in decoder._graphs} == {1}
    assert not decoder.want(32)  # larger than what ran out of memory: eager


# -- the engine ------------------------------------------------------------------------------


def test_engine_replays_graphs_once_built_with_the_same_pixels(
    qapp, one_torch_thread, fake_cuda, make_perturbed_model
):
    model = make_perturbed_model()
    engine = gpu_engine(model)
    assert engine.graphs_status == "building"
    frames: list[Frame] = []
    engine.frame_rendered.connect(frames.append)
    latents = random_latents(model.latent_shapes, 16, seed=0)
    engine.submit(RenderRequest(1, engine.model_id, tuple(latents)))  # eager meanwhile
    build_graphs(engine)
    assert engine.graphs_status.startswith("on: ")
    before = fake_cuda.replays
    latents[0] = latents[0] * np.float32(0.5)  # the level cache's entry point: level 0
    engine.submit(RenderRequest(2, engine.model_id, tuple(latents)))
    assert fake_cuda.replays - before == 2  # level 0 and to_image
    np.testing.assert_array_equal(frames[-1].images, reference_pixels(model, latents))
    # A batch size without graphs renders eagerly and asks for its own.
    engine.submit(
        RenderRequest(3, engine.model_id, tuple(random_latents(model.latent_shapes, 5, 1)))
    )
    assert engine.scheduler.graph_job is not None and 5 in engine.models.graphs.batches
    assert "CUDA graphs: building" in engine.render_status
    engine.shutdown()


def test_a_failed_capture_renders_eagerly_and_says_so(
    qapp, one_torch_thread, fake_cuda, make_perturbed_model
):
    fake_cuda.fail_batch = 1
    fake_cuda.oom_batch = 16
    model = make_perturbed_model()
    engine = gpu_engine(model)
    build_graphs(engine)
    assert engine.graphs_status.startswith("failed, eager: decode level")
    assert "stream is capturing" in engine.render_status
    frames: list[Frame] = []
    engine.frame_rendered.connect(frames.append)
    latents = random_latents(model.latent_shapes, 16, seed=2)
    engine.submit(RenderRequest(1, engine.model_id, tuple(latents)))
    np.testing.assert_array_equal(frames[-1].images, reference_pixels(model, latents))
    engine.shutdown()


def test_opening_another_model_frees_the_old_graphs(
    qapp, one_torch_thread, fake_cuda, make_perturbed_model
):
    engine = gpu_engine(make_perturbed_model())
    build_graphs(engine)
    old = engine.models.graphs
    assert old.graph_count > 0
    engine._install(
        make_perturbed_model(seed=1),
        source=None,
        untrained=True,
        dataset=None,
        test_bpd=None,
        step=None,
    )
    assert old.graph_count == 0 and engine.models.graphs is not old
    engine.shutdown()


def test_out_of_memory_while_rendering_falls_back_step_by_step(
    qapp, one_torch_thread, fake_cuda, make_perturbed_model, monkeypatch
):
    model = make_perturbed_model()
    engine = gpu_engine(model)
    build_graphs(engine)
    eager_step = engine.models.step

    def step(model_, level, *args):
        # The "GPU" holds at most 2 images at a time; the CPU has room for everything.
        if engine.device.type == "cuda" and args[0].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return eager_step(model_, level, *args)

    monkeypatch.setattr(engine.models, "step", step)
    notices: list[str] = []
    engine.render_notice.connect(notices.append)
    frames: list[Frame] = []
    engine.frame_rendered.connect(frames.append)
    latents = random_latents(model.latent_shapes, 8, seed=3)
    engine.submit(RenderRequest(1, engine.model_id, tuple(latents)))
    assert notices == [
        "Out of GPU memory: rendering without CUDA graphs",
        "Out of GPU memory: rendering 4 images at a time",
        "Out of GPU memory: rendering 2 images at a time",
    ]
    np.testing.assert_array_equal(frames[-1].images, reference_pixels(model, latents))
    assert "the GPU ran out of memory" in engine.graphs_status

    # Not even one image fits: the CPU takes over for good.
    def no_room(model_, level, *args):
        if engine.device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return eager_step(model_, level, *args)

    monkeypatch.setattr(engine.models, "step", no_room)
    notices.clear()
    latents[0] = latents[0] + np.float32(0.5)
    engine.submit(RenderRequest(2, engine.model_id, tuple(latents)))
    assert notices[-1] == "Out of GPU memory: rendering on the CPU from now on"
    assert engine.device.type == "cpu" and engine.model_info.device.startswith("cpu")
    assert frames[-1].request_id == 2
    np.testing.assert_array_equal(frames[-1].images, reference_pixels(model, latents))
    engine.shutdown()


def test_out_of_memory_with_nothing_left_is_a_message_not_a_crash(
    qapp, one_torch_thread, tiny_checkpoint, monkeypatch
):
    engine = RenderEngine(device="cpu", threaded=False, plan=default_plan(1))
    info = engine.open_checkpoint(tiny_checkpoint)

    def step(model_, level, *args):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    monkeypatch.setattr(engine.models, "step", step)
    failures: list[str] = []
    engine.render_failed.connect(failures.append)
    engine.submit(RenderRequest(1, info.model_id, tuple(random_latents(info.latent_shapes, 1, 0))))
    assert len(failures) == 1 and "out of memory" in failures[0]
    engine.shutdown()


def test_device_auto_renders_on_the_faster_device(
    qapp, one_torch_thread, make_perturbed_model, monkeypatch
):
    model = make_perturbed_model()
    engine = gpu_engine(model, graphs=False)
    engine.models.cpu = fold_for_inference(model)  # what --device auto keeps beside the GPU
    gpu = engine.models.exact

    def timed(model_id, batch, threads, contender=None):
        return batch * (3.0 if contender is gpu else 1.0)  # this "GPU" is slower

    monkeypatch.setattr(engine, "_timed_decode", timed)
    plans = []
    engine.plan_changed.connect(plans.append)
    engine.scheduler.device_job = engine._device_race(engine.model_id)
    while engine.scheduler.device_job is not None:
        engine._measure_step()
    assert engine.device_choice.startswith("--device auto chose cpu: cuda 1 image 3.0 ms")
    assert engine.device.type == "cpu" and engine.models.exact is not gpu
    assert "--device auto chose cpu" in engine.render_status
    engine.shutdown()


def test_closing_during_a_background_capture_ends_cleanly(
    qapp, fake_cuda, make_perturbed_model, monkeypatch
):
    slow_init = FakeGraph.__init__

    def slow(self, *args, **kwargs):
        time.sleep(0.05)
        slow_init(self, *args, **kwargs)

    monkeypatch.setattr(FakeGraph, "__init__", slow)
    engine = RenderEngine(device="cpu", threaded=True, plan=default_plan(1))
    engine.device = torch.device("cuda")
    engine._install(
        make_perturbed_model(),
        source=None,
        untrained=True,
        dataset=None,
        test_bpd=None,
        step=None,
    )
    time.sleep(0.1)  # the render thread is capturing now
    assert engine.measuring
    start = time.perf_counter()
    engine.shutdown()
    assert engine._thread is None and time.perf_counter() - start < 30  # it did not hang


# -- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_engine_frames_match_the_cpu(qapp, tiny_checkpoint):
    from core.files.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    engine = RenderEngine(device="cuda", threaded=False, plan=default_plan(1))
    info = engine.open_checkpoint(tiny_checkpoint)
    build_graphs(engine)
    assert engine.graphs_status.startswith("on: "), engine.graphs_status
    frames: list[Frame] = []
    engine.frame_rendered.connect(frames.append)
    latents = random_latents(info.latent_shapes, 16, seed=4)
    engine.submit(RenderRequest(1, info.model_id, tuple(latents)))
    diff = np.abs(frames[-1].images.astype(int) - reference_pixels(model, latents).astype(int))
    assert diff.max() <= 1  # float32 on another device: at most one grey level of rounding
    engine.shutdown()
