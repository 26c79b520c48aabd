"""float32 or bf16: the choice, bf16 autocast's scope, and the bf16 inference copy.

Most CI machines (and the one these tests were written on) have no bf16 matrix units, so the
``auto`` outcomes are forced here by handing :func:`choose_precision` the measurements.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturbed_model

from core.files.images import to_uint8
from core.flow.bijection import Bijection
from core.flow.inference import Bf16Network, bf16_copy, fold_for_inference
from core.flow.model import FlowConfig, gaussian_log_prob
from core.flow.resnet import STNetwork
from core.training.precision import (
    bf16_units,
    choose_precision,
    conv_probe_ms,
    interleaved_ms,
    same_picture,
)
from core.training.step import step_autocast

CPU = torch.device("cpu")
SMALL = FlowConfig(in_channels=1, image_size=8, num_scales=2, mid_channels=8, num_blocks=1)


def never() -> dict[str, float]:
    raise AssertionError("must not be measured")


def test_cpuinfo_flags_are_read():
    intel = "processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n"
    zen3 = "processor : 0\nflags : fpu sse avx2 fma\n"
    arm = "processor : 0\nFeatures : fp asimd sve bf16 i8mm\n"
    assert bf16_units(intel) == ["amx_bf16", "avx512_bf16"]
    assert bf16_units(zen3) == []
    assert bf16_units(arm) == ["bf16"]


def test_asked_for_precisions_are_not_measured():
    for name in ("float32", "bf16"):
        choice = choose_precision(name, CPU, never, never)
        assert choice.precision == name and "asked for" in choice.reason
    with pytest.raises(ValueError, match="unknown precision"):
        choose_precision("fp16", CPU, never, never)


def test_auto_falls_back_to_float32_where_bf16_convolutions_are_slow():
    # What a CPU without bf16 units measures: the step itself is never timed.
    choice = choose_precision("auto", CPU, lambda: {"float32": 2.0, "bf16": 17.0}, never)
    assert choice.precision == "float32" and choice.dtype == torch.float32
    assert "8.5x slower" in choice.reason and choice.bf16_ms == 17.0


@pytest.mark.parametrize(
    ("step_ms", "chosen"),
    [
        ({"float32": 100.0, "bf16": 40.0}, "bf16"),  # bf16 units: the step is faster
        ({"float32": 100.0, "bf16": 97.0}, "float32"),  # within the margin: float32 stays
        ({"float32": 100.0, "bf16": 180.0}, "float32"),  # faster convolutions, slower step
    ],
)
def test_auto_measures_the_step_where_bf16_convolutions_are_faster(step_ms, chosen):
    calls = []

    def measure():
        calls.append(1)
        return step_ms

    choice = choose_precision("auto", CPU, lambda: {"float32": 4.0, "bf16": 1.0}, measure)
    assert calls == [1] and choice.precision == chosen
    assert choice.float32_ms == step_ms["float32"] and choice.bf16_ms == step_ms["bf16"]


def test_auto_off_the_cpu_needs_no_measurement():
    assert choose_precision("auto", torch.device("cuda"), never, never).precision == "bf16"
    assert choose_precision("auto", torch.device("mps"), never, never).precision == "float32"


def test_the_real_probe_and_interleaving_run():
    probe = conv_probe_ms(8, 8, 4, repeats=1)
    assert set(probe) == {"float32", "bf16"} and min(probe.values()) > 0
    order: list[str] = []
    interleaved_ms(order.append, repeats=2, warmup=1)
    assert order == ["float32", "bf16"] * 3


def test_the_picture_test_counts_grey_levels():
    a = np.full((1, 1, 100, 100), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0, :9] = 101  # one grey level: the same picture
    b[0, 0, 1, :10] = 103  # 10 of 10,000 pixels further off: 99.9% is the limit
    assert same_picture(a, b) == (True, 0.999)
    b[0, 0, 2, 0] = 0
    same, share = same_picture(a, b)
    assert not same and share == pytest.approx(0.9989)


def test_bf16_autocast_reaches_only_the_st_networks():
    model = perturbed_model(SMALL).train()
    dtypes: dict[str, set[torch.dtype]] = {"st": set(), "flow": set()}

    def record(kind):
        def hook(module, args, out):
            for t in out if isinstance(out, tuple) else (out,):
                dtypes[kind].add(t.dtype)

        return hook

    for m in model.modules():
        if isinstance(m, STNetwork):
            m.register_forward_hook(record("st"))
        elif isinstance(m, Bijection):
            m.register_forward_hook(record("flow"))
    x = torch.rand(4, 1, 8, 8)
    with step_autocast(CPU, "bf16"):
        zs, logdet = model(x)
    assert dtypes == {"st": {torch.bfloat16}, "flow": {torch.float32}}
    assert logdet.dtype == torch.float32 and all(z.dtype == torch.float32 for z in zs)
    (-(gaussian_log_prob(zs) + logdet).mean()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in model.buffers())


def test_float32_steps_have_no_autocast():
    model = perturbed_model(SMALL).train()
    with step_autocast(CPU, "float32"):
        zs, _ = model(torch.rand(2, 1, 8, 8))
    assert not torch.is_autocast_enabled("cpu") and zs[0].dtype == torch.float32


def test_the_bf16_copy_leaves_the_float32_model_exact():
    folded = fold_for_inference(perturbed_model(SMALL, scale=0.05))
    before = {k: v.clone() for k, v in folded.state_dict().items()}
    fast = bf16_copy(folded)
    for key, value in folded.state_dict().items():
        assert torch.equal(value, before[key]) and value.dtype == before[key].dtype, key
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    with torch.inference_mode():
        assert (folded.decode(folded.encode(x)) - x).abs().max() < 1e-5  # float32: exact
        zs = folded.encode(x)
        out = fast.decode(zs)
    nets = [m for m in fast.modules() if isinstance(m, Bf16Network)]
    assert nets and all(
        p.dtype == torch.bfloat16 for n in nets for p in n.parameters() if p.is_floating_point()
    )
    assert out.dtype == torch.float32
    # bf16 s/t networks: near the float32 image, not equal to it (which pixels move, and
    # by how much, is the engine's picture test)
    assert torch.isfinite(out).all() and 0 < (out - x).abs().mean() < 0.05
    same, share = same_picture(to_uint8(x.numpy()), to_uint8(out.numpy()))
    assert 0.5 < share < 1.0 and not same
