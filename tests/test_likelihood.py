"""The likelihood map: exact per-level and per-pixel bits (core.flow.likelihood)."""

from __future__ import annotations

import math

import pytest
import torch

from core.flow.likelihood import likelihood_map
from core.flow.model import FlowConfig, RealNVP, dequantize
from tests.test_bijections import perturb

CONFIGS = [
    FlowConfig(in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=1),
    FlowConfig(in_channels=3, image_size=8, num_scales=3, mid_channels=4, num_blocks=1),
    FlowConfig(in_channels=1, image_size=16, num_scales=3, mid_channels=4, num_blocks=2),
    FlowConfig(in_channels=3, image_size=4, num_scales=2, mid_channels=2, num_blocks=1),
]


def _perturbed(config: FlowConfig, seed: int = 0) -> RealNVP:
    torch.manual_seed(seed)
    model = RealNVP(config).double()
    perturb(model, seed, scale=0.1)
    return model.eval()


def assert_exact(model: RealNVP, x: torch.Tensor, rtol: float = 1e-6) -> None:
    """Map and level sums equal the model's own bits/dim to ``rtol``."""
    m = likelihood_map(model, x)
    bpd = model._bits_per_dim_continuous(x)
    d = model.config.num_dims
    levels = m.prior_bits_per_dim.sum(1) + m.logdet_bits_per_dim.sum(1)
    for total in (
        m.bits_per_dim,
        m.pixel_bits.flatten(1).sum(1) / d,
        levels + m.preprocess_bits_per_dim,
    ):
        torch.testing.assert_close(total, bpd, rtol=rtol, atol=0)
    # each level's map carries exactly that level's prior + log-det
    torch.testing.assert_close(
        m.level_bits.flatten(2).sum(2) / d,
        m.prior_bits_per_dim + m.logdet_bits_per_dim,
        rtol=rtol,
        atol=1e-12,
    )
    torch.testing.assert_close(
        m.preprocess_bits.flatten(1).sum(1) / d, m.preprocess_bits_per_dim, rtol=rtol, atol=0
    )
    assert m.pixel_bits.shape == x.shape
    assert m.level_bits.shape == (x.shape[0], model.num_levels, *x.shape[1:])


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"c{c.in_channels}-s{c.image_size}-L{c.num_scales}"
)
def test_map_and_levels_sum_to_the_total_on_perturbed_models(config):
    model = _perturbed(config)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(
        3,
        config.in_channels,
        config.image_size,
        config.image_size,
        generator=g,
        dtype=torch.float64,
    )
    with torch.no_grad():
        assert_exact(model, x)


def test_uint8_variant_matches_bits_per_dim_for_the_same_noise():
    model = _perturbed(CONFIGS[1]).float()
    x8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        m = model.likelihood_map_uint8(x8, torch.Generator().manual_seed(5))
        bpd = model.bits_per_dim(x8, torch.Generator().manual_seed(5))
    torch.testing.assert_close(m.bits_per_dim, bpd, rtol=1e-5, atol=0)
    s = m.summary(1)
    assert [lv["level"] for lv in s["levels"]] == [0, 1, 2]
    assert math.isclose(
        sum(lv["prior_bits_per_dim"] + lv["logdet_bits_per_dim"] for lv in s["levels"])
        + s["preprocess_bits_per_dim"],
        s["bits_per_dim"],
        rel_tol=1e-5,
    )


def test_map_follows_gradients_and_training_mode():
    """Batch statistics in training mode: the map still sums to that pass's log p."""
    model = _perturbed(CONFIGS[0]).train()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    m = likelihood_map(model, x)
    ref = model._bits_per_dim_continuous(x)
    torch.testing.assert_close(m.pixel_bits.flatten(1).sum(1) / 64, ref, rtol=1e-6, atol=0)


def _identity_model() -> RealNVP:
    """Fresh couplings are the identity; batch norms made exactly the identity too."""
    model = RealNVP(CONFIGS[0]).double().eval()
    for name, buf in model.named_buffers():
        if name.endswith("running_var"):
            buf.fill_(1.0 - 1e-4)  # (var + eps) == 1
    return model


def test_a_latent_element_lands_on_its_pixel_by_construction():
    """With identity couplings the flow is logit + squeeze + split: latent element
    ``z0[k, a, b]`` is pixel ``(2a + k // 2, 2b + k % 2)`` (squeeze channel ``2i + j`` holds
    rows ``i::2``, columns ``j::2``; level 0 takes squeeze channels 0-1, level 1 the rest)."""
    model = _identity_model()
    zero = [torch.zeros(1, *s, dtype=torch.float64) for s in model.latent_shapes]
    with torch.no_grad():
        base = likelihood_map(model, model.decode(zero))
        for level, k, a, b in [(0, 0, 1, 2), (0, 1, 3, 0), (1, 0, 2, 3), (1, 1, 0, 1)]:
            zs = [z.clone() for z in zero]
            zs[level][0, k, a, b] = 2.0
            x = model.decode(zs)
            m = likelihood_map(model, x)
            changed = (m.level_bits - base.level_bits).abs() > 1e-9  # (1, L, 1, 8, 8)
            squeeze_channel = 2 * level + k
            pixel = (2 * a + squeeze_channel // 2, 2 * b + squeeze_channel % 2)
            expected = torch.zeros_like(changed)
            expected[0, level, 0, pixel[0], pixel[1]] = True
            assert torch.equal(changed, expected), (level, k, a, b)
            # -log N(2) + log N(0) = 2 nats, all of it charged to that one pixel
            diff = (m.level_bits - base.level_bits)[0, level, 0, pixel[0], pixel[1]]
            assert diff.item() == pytest.approx(2.0 / math.log(2.0), rel=1e-9)
            assert (x - 0.5).abs().flatten().argmax().item() == pixel[0] * 8 + pixel[1]


def test_bundled_model_is_exact_in_float64():
    from tests.test_bundled_model import BUNDLED

    if not BUNDLED.is_file():
        pytest.skip("no bundled model")
    from core.files.checkpoint import load_checkpoint

    model, _ = load_checkpoint(BUNDLED)
    model = model.double()
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (2, 1, 28, 28), generator=g, dtype=torch.uint8)
    x8[1] = 0
    x8[1, :, 8:20, 12:16] = 255  # a stroke on black, digit-like
    x = dequantize(x8, g).double()
    with torch.no_grad():
        assert_exact(model, x)


def test_rejects_bad_images():
    model = _perturbed(CONFIGS[0])
    with pytest.raises(ValueError, match="lie in"):
        likelihood_map(model, torch.full((1, 1, 8, 8), 2.0, dtype=torch.float64))
