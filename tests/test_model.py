"""The whole Real NVP: exact likelihood, exact inverse, shapes, sampling, input checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from core import PRESETS, FlowConfig, RealNVP, dequantize, preset
from core.flow.model import gaussian_log_prob
from tests.test_bijections import perturb

TINY = FlowConfig(in_channels=1, image_size=4, num_scales=2, mid_channels=4, num_blocks=1)


def tiny_model(config: FlowConfig = TINY, dtype=torch.float64) -> RealNVP:
    torch.manual_seed(0)
    model = RealNVP(config).to(dtype)
    perturb(model, scale=0.1)
    return model.eval()


@pytest.mark.parametrize(
    "config",
    [TINY, FlowConfig(in_channels=3, image_size=4, num_scales=2, mid_channels=4, num_blocks=1)],
    ids=["gray", "rgb"],
)
def test_log_prob_is_prior_plus_jacobian_logdet(config):
    model = tiny_model(config)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, config.in_channels, 4, 4, generator=g, dtype=torch.float64)
    log_p = model.log_prob(x)
    for i in range(2):
        xi = x[i : i + 1]

        def f(flat, xi=xi):
            return torch.cat([z.flatten() for z in model.encode(flat.view_as(xi))])

        jac = torch.autograd.functional.jacobian(f, xi.flatten())
        _, logabsdet = torch.linalg.slogdet(jac)
        zs = model.encode(xi)
        expected = gaussian_log_prob(zs) + logabsdet
        assert torch.allclose(log_p[i], expected[0], atol=1e-8), (log_p[i], expected)


def test_round_trip_float64_and_float32():
    x64 = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    model = tiny_model()
    assert (model.decode(model.encode(x64)) - x64).abs().max() < 1e-10
    model32 = tiny_model(dtype=torch.float32)
    x32 = x64.float()
    assert (model32.decode(model32.encode(x32)) - x32).abs().max() < 1e-4


def test_mnist_preset_round_trip_and_shapes():
    model = RealNVP(preset("mnist-small"))
    # Random statistics in 16 batch-norm layers make a badly conditioned flow; weights
    # alone are enough to leave the identity here.
    perturb(model, scale=0.01, buffers=False)
    model.eval()
    assert [tuple(s) for s in model.latent_shapes] == [(2, 14, 14), (4, 7, 7), (4, 7, 7)]
    assert sum(math.prod(s) for s in model.latent_shapes) == 28 * 28
    x = torch.rand(2, 1, 28, 28)
    zs = model.encode(x)
    assert [z.shape[1:] for z in zs] == list(model.latent_shapes)
    assert (model.decode(zs) - x).abs().max() < 1e-4


def test_cifar_preset_is_the_papers_model():
    cfg = PRESETS["cifar10"]
    assert (cfg.in_channels, cfg.image_size, cfg.num_scales, cfg.num_blocks, cfg.mid_channels) == (
        3,
        32,
        2,
        8,
        64,
    )
    model = RealNVP(cfg)
    assert [tuple(s) for s in model.latent_shapes] == [(6, 16, 16), (6, 16, 16)]


def test_widths_double_at_each_scale():
    model = RealNVP(FlowConfig(1, 8, 3, 4, 1))
    first = model.scales[0].flow.layers[0].net.in_conv.v.shape[0]
    second = model.scales[1].flow.layers[0].net.in_conv.v.shape[0]
    final = model.final.layers[0].net.in_conv.v.shape[0]
    assert (first, second, final) == (4, 8, 16)


def test_architecture_per_scale():
    model = RealNVP(FlowConfig(1, 8, 2, 4, 1))
    kinds = [type(layer).__name__ for layer in model.scales[0].flow.layers]
    masks = [
        (layer.mask_type.value, layer.parity)
        for layer in model.scales[0].flow.layers
        if type(layer).__name__ == "AffineCoupling"
    ]
    assert kinds.count("Squeeze") == 1 and kinds.index("Squeeze") == 6
    assert masks == [
        ("checkerboard", 0),
        ("checkerboard", 1),
        ("checkerboard", 0),
        ("channel", 0),
        ("channel", 1),
        ("channel", 0),
    ]
    final = [(m.mask_type.value, m.parity) for m in model.final.layers if hasattr(m, "mask_type")]
    assert final == [("checkerboard", 0), ("checkerboard", 1)] * 2
    assert all(type(m).__name__ == "BatchNormFlow" for m in model.final.layers[1::2])


def test_fresh_model_is_the_logit_of_the_input():
    """Zero-initialized couplings: the fresh model is just the preprocessing (in eval)."""
    model = RealNVP(TINY).eval()
    x = torch.rand(2, 1, 4, 4)
    zs, logdet = model(x)
    pre, pre_logdet = model.preprocess(x)
    flat = torch.cat([z.flatten(1) for z in zs], 1)
    # equal up to the batch-norm layers' eps = 1e-4 in 1 / sqrt(1 + eps)
    assert torch.allclose(flat.sort(1).values, pre.flatten(1).sort(1).values, atol=2e-3)
    assert torch.allclose(logdet, pre_logdet, atol=0.1)


def test_sample_is_reproducible_and_temperature_zero_is_zero():
    model = tiny_model(dtype=torch.float32)
    a = model.sample(4, temperature=0.8, generator=torch.Generator().manual_seed(5))
    b = model.sample(4, temperature=0.8, generator=torch.Generator().manual_seed(5))
    c = model.sample(4, temperature=0.8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, 1, 4, 4) and a.min() >= 0 and a.max() <= 1
    zs = model.sample_latents(3, temperature=0.0)
    assert all(torch.equal(z, torch.zeros_like(z)) for z in zs)
    assert torch.equal(model.sample(3, temperature=0.0), model.decode(zs))


def test_per_level_temperature():
    model = tiny_model(dtype=torch.float32)
    zs = model.sample_latents(2, temperature=[0.0, 1.0], generator=torch.Generator().manual_seed(1))
    assert torch.equal(zs[0], torch.zeros_like(zs[0])) and zs[1].abs().sum() > 0
    with pytest.raises(ValueError, match="one value per level"):
        model.sample_latents(2, temperature=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        model.sample_latents(2, temperature=-1.0)
    with pytest.raises(ValueError, match="at least 1"):
        model.sample_latents(0)


def test_bits_per_dim_formula():
    model = tiny_model(dtype=torch.float32)
    x8 = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    bpd = model.bits_per_dim(x8, torch.Generator().manual_seed(0))
    x = dequantize(x8, torch.Generator().manual_seed(0))
    d = 16
    expected = -(model.log_prob(x) - d * math.log(256)) / (d * math.log(2))
    assert torch.allclose(bpd, expected)
    assert x.min() >= 0 and x.max() < 1
    assert torch.equal(torch.floor(x * 256).to(torch.uint8), x8)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(2, 3, 4, 4), "3 channels; this model expects 1"),
        (torch.rand(2, 1, 8, 8), "8x8 pixels; this model expects 4x4"),
        (torch.rand(1, 4, 4), r"shape \(B, 1, 4, 4\)"),
        (torch.full((1, 1, 4, 4), float("nan")), "NaN"),
        (torch.full((1, 1, 4, 4), 1.5), r"\[0, 1\]"),
        (torch.full((1, 1, 4, 4), -0.1), r"\[0, 1\]"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.int64), "floating point"),
    ],
    ids=["channels", "size", "rank", "nan", "above", "below", "integer"],
)
def test_input_checks(bad, message):
    model = tiny_model(dtype=torch.float32)
    for method in (model.encode, model.log_prob):
        with pytest.raises(ValueError, match=message):
            method(bad)


def test_bits_per_dim_needs_uint8():
    model = tiny_model(dtype=torch.float32)
    with pytest.raises(ValueError, match="uint8"):
        model.bits_per_dim(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        model.bits_per_dim(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_decode_checks_latents():
    model = tiny_model(dtype=torch.float32)
    zs = model.sample_latents(2)
    with pytest.raises(ValueError, match="expected 2 latent levels"):
        model.decode(zs[:1])
    with pytest.raises(ValueError, match="latent level 1 must have shape"):
        model.decode([zs[0], torch.zeros(2, 3, 2, 2)])
    with pytest.raises(ValueError, match="same B"):
        model.decode([zs[0], zs[1][:1]])
    with pytest.raises(ValueError, match="NaN"):
        model.decode([zs[0], torch.full_like(zs[1], float("nan"))])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=30, num_scales=3), "divisible by 2\\*\\*\\(num_scales-1\\) = 4"),
        (dict(image_size=4, num_scales=3), "at least 2x2"),
        (dict(in_channels=0), "in_channels must be a positive integer"),
        (dict(mid_channels=2.5), "mid_channels must be a positive integer"),
        (dict(alpha=0.5), "alpha"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlowConfig(**kwargs)


def test_config_round_trips_through_dict():
    cfg = PRESETS["cifar10"]
    assert FlowConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown FlowConfig fields"):
        FlowConfig.from_dict({**cfg.to_dict(), "extra": 1})


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("imagenet")


def test_training_mode_gradients_reach_every_parameter():
    model = RealNVP(TINY)
    perturb(model, scale=0.05)
    model.train()
    x = torch.rand(8, 1, 4, 4)
    loss = -model.log_prob(x).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_keeps_flow_arithmetic_in_float32():
    model = RealNVP(FlowConfig(1, 8, 2, 8, 1)).cuda()
    perturb(model, scale=0.05)
    model.eval()
    x = torch.rand(4, 1, 8, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        zs, logdet = model(x)
    assert logdet.dtype == torch.float32
    assert all(z.dtype == torch.float32 for z in zs)
    _ref_zs, ref_logdet = model(x)
    assert torch.allclose(logdet, ref_logdet, rtol=0.05, atol=1.0)
    recon = model.decode([z.float() for z in zs])
    assert (recon - x).abs().max() < 0.05


def test_folded_inference_model_agrees():
    from core.flow.inference import fold_for_inference, sampling_model

    config = FlowConfig(in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=2)
    model = tiny_model(config)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # running statistics away from 0 / 1, so folding them is tested
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    folded = fold_for_inference(model)
    assert not any(type(m).__name__ == "WeightNormConv2d" for m in folded.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    zs, zs_folded = model.encode(x), folded.encode(x)
    for a, b in zip(zs, zs_folded):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(model.log_prob(x), folded.log_prob(x), atol=1e-9)
    assert torch.allclose(folded.decode(zs), x, atol=1e-10)
    # realnvp sample's copy: folded, channels_last on the CPU, the same function
    sampler = sampling_model(model)
    convs = [m.weight for m in sampler.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)
    assert torch.allclose(sampler.decode(zs), x, atol=1e-10)
    seeded = [torch.Generator().manual_seed(7) for _ in range(2)]
    assert torch.allclose(model.sample(4, 0.8, seeded[0]), sampler.sample(4, 0.8, seeded[1]))
    # the original keeps its weight-normalized layers and still trains
    assert any(type(m).__name__ == "WeightNormConv2d" for m in model.modules())


def test_sampling_model_takes_onednn_for_every_float32_convolution():
    """One image: where torch would send the small convolutions to its own kernel."""
    from core.flow.inference import fold_for_inference, sampling_model
    from core.flow.model import random_model

    config = FlowConfig(in_channels=3, image_size=8, num_scales=2, mid_channels=8, num_blocks=2)
    model = random_model(config)
    sampler = sampling_model(model)
    convs = {type(m).__name__ for m in sampler.modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs == {"OneDnnConv2d"}
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        zs = sampler.encode(x)
        assert torch.allclose(sampler.decode(zs), x, atol=1e-5)
        assert torch.allclose(sampler.decode(zs), fold_for_inference(model).decode(zs), atol=1e-5)


def test_bits_per_dim_runs_in_the_models_own_dtype():
    """A float64 model gets float64 inputs; the same seed draws the same dequantization
    noise, so float32 and float64 agree to float32 precision."""
    from core import mean_bits_per_dim

    model32 = tiny_model(dtype=torch.float32)
    model64 = copy.deepcopy(model32).double()
    x8 = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8)
    with torch.no_grad():
        b64 = model64.bits_per_dim(x8, torch.Generator().manual_seed(3))
        b32 = model32.bits_per_dim(x8, torch.Generator().manual_seed(3))
        mean64 = mean_bits_per_dim(model64, x8)
    assert b64.dtype == torch.float64 and b32.dtype == torch.float32
    torch.testing.assert_close(b64.float(), b32, rtol=1e-5, atol=1e-5)
    assert math.isfinite(mean64) and abs(mean64 - mean_bits_per_dim(model32, x8)) < 1e-4
    assert dequantize(x8, dtype=torch.float64).dtype == torch.float64


def test_the_design_names_are_importable_from_core():
    import core

    for name in ("RealNVP", "FlowConfig", "Bijection", "load_checkpoint", "save_checkpoint"):
        assert name in core.__all__ and getattr(core, name) is not None
    from core.files.checkpoint import load_checkpoint

    assert core.load_checkpoint is load_checkpoint


def test_model_copies_pause_the_collector_and_restore_it():
    """Model copies made beside the GUI thread run with Python's cyclic collector paused
    (a collection on the GUI thread during a render thread's copy crashed the suite once),
    nested and concurrent copies restore it once, as it was."""
    import gc
    import threading

    from core.flow.inference import collector_paused, copy_model

    model = RealNVP(FlowConfig(image_size=8, num_scales=2, mid_channels=4, num_blocks=1))
    seen: list[bool] = []
    module = torch.nn.Linear(2, 2)
    module.register_forward_pre_hook(lambda *_: None)

    class Probe(torch.nn.Module):
        def __deepcopy__(self, memo):
            seen.append(gc.isenabled())
            return Probe()

    assert gc.isenabled()
    copied = copy_model(torch.nn.Sequential(Probe(), module))
    assert seen == [False] and gc.isenabled()
    assert isinstance(copied[0], Probe) and copied[1] is not module
    twin = copy_model(model)
    assert twin is not model
    for a, b in zip(twin.parameters(), model.parameters()):
        assert a is not b and torch.equal(a, b)
    # Nested, and on two threads at once: enabled again only after the last one.
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with collector_paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(10)
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's copy is still running
    release.set()
    thread.join(10)
    assert gc.isenabled()
    # A collector the program had disabled stays disabled.
    gc.disable()
    try:
        copy_model(module)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_copy_waits_for_a_collection_already_running_on_another_thread():
    """``gc.disable()`` does not stop a collection that has begun, and a collection lets
    other threads run while it frees objects (here: a finalizer that waits). A model copy
    starts only after it ends; an explicit collection beside a copy does nothing."""
    import gc
    import threading

    from core.flow.collector import collect, collector_paused

    freeing = threading.Event()
    release = threading.Event()

    class SlowToFree:
        def __del__(self) -> None:
            freeing.set()
            release.wait(10)

    def collection() -> None:
        cycle = SlowToFree()
        cycle.itself = cycle
        del cycle
        gc.collect()

    collector = threading.Thread(target=collection)
    collector.start()
    copied = threading.Event()

    def copy() -> None:
        with collector_paused():
            copied.set()

    copier = None
    try:
        assert freeing.wait(10), "the collection never reached the finalizer"
        copier = threading.Thread(target=copy)
        copier.start()
        assert not copied.wait(0.3), "the copy ran inside another thread's collection"
    finally:
        release.set()
        collector.join(10)
    assert copier is not None and copied.wait(10)
    copier.join(10)
    assert gc.isenabled()

    # An explicit collection is skipped while a copy runs on another thread.
    inside = threading.Event()
    done = threading.Event()

    def long_copy() -> None:
        with collector_paused():
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=long_copy)
    thread.start()
    try:
        assert inside.wait(10)
        assert collect(0) is False
    finally:
        done.set()
        thread.join(10)
    assert collect(0) is True
