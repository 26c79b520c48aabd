"""The shared contract test: every bijection, in float64, away from its identity init.

Adding a layer to the project adds one entry to ``BIJECTIONS``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from core import (
    AffineCoupling,
    BatchNormFlow,
    Bijection,
    LogitTransform,
    MaskType,
    Sequential,
    Squeeze,
    channel_mask,
    checkerboard_mask,
)


def perturb(
    module: torch.nn.Module, seed: int = 0, scale: float = 0.3, buffers: bool = True
) -> None:
    """Move every parameter and batch-norm statistic away from its initial value, so a test
    cannot pass because zero-initialized layers are the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in module.named_buffers() if buffers else ():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g, dtype=b.dtype))


# (name, factory, input shape, input sampler)
BIJECTIONS: list[tuple[str, Callable[[], Bijection], tuple[int, ...]]] = [
    ("squeeze", Squeeze, (2, 2, 4, 4)),
    ("logit", lambda: LogitTransform(0.05), (2, 1, 4, 4)),
    ("batchnorm", lambda: BatchNormFlow(3), (2, 3, 2, 2)),
    ("coupling-checker-0", lambda: AffineCoupling(1, 4, 1, MaskType.CHECKERBOARD, 0), (2, 1, 4, 4)),
    ("coupling-checker-1", lambda: AffineCoupling(2, 4, 2, MaskType.CHECKERBOARD, 1), (2, 2, 3, 3)),
    ("coupling-channel-0", lambda: AffineCoupling(4, 4, 1, MaskType.CHANNEL, 0), (2, 4, 2, 2)),
    ("coupling-channel-1", lambda: AffineCoupling(4, 4, 1, MaskType.CHANNEL, 1), (2, 4, 2, 2)),
    (
        "sequential",
        lambda: Sequential(
            AffineCoupling(1, 4, 1, MaskType.CHECKERBOARD, 0), BatchNormFlow(1), Squeeze()
        ),
        (2, 1, 4, 4),
    ),
]


def _input(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if name == "logit":  # the preprocessing takes images in [0, 1]
        x = torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return x


@pytest.fixture(params=BIJECTIONS, ids=[b[0] for b in BIJECTIONS])
def case(request):
    name, factory, shape = request.param
    torch.manual_seed(0)
    layer = factory().double()
    perturb(layer)
    layer.eval()
    return name, layer, _input(name, shape)


def test_shape_kept_and_finite(case):
    _, layer, x = case
    z, logdet = layer(x)
    assert z.numel() == x.numel()
    assert z.shape[0] == x.shape[0]
    assert logdet.shape == (x.shape[0],)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()


def test_inverse_recovers_input(case):
    _, layer, x = case
    z, _ = layer(x)
    assert torch.allclose(layer.inverse(z), x, atol=1e-12, rtol=0)


def test_logdet_matches_autograd_jacobian(case):
    _, layer, x = case
    _z, logdet = layer(x)
    for i in range(x.shape[0]):
        xi = x[i : i + 1]

        def f(flat, xi=xi):
            return layer(flat.view_as(xi))[0].flatten()

        jac = torch.autograd.functional.jacobian(f, xi.flatten())
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        assert torch.allclose(logdet[i], expected, atol=1e-9), (logdet[i], expected)


def test_elementwise_logdet_sums_to_logdet_and_follows_the_elements(case):
    _, layer, x = case
    z, logdet = layer(x)
    z2, per_element = layer.forward_elementwise(x)
    assert torch.equal(z, z2)
    assert per_element.shape == z.shape
    torch.testing.assert_close(per_element.flatten(1).sum(1), logdet, rtol=1e-10, atol=1e-10)
    # permute_elements moves values exactly as forward moves elements: an index tensor
    # pushed through it is a permutation of the input's element numbers.
    index = torch.arange(x[:1].numel()).view_as(x[:1])
    moved = layer.permute_elements(index)
    assert moved.shape == z[:1].shape
    assert sorted(moved.flatten().tolist()) == list(range(x[:1].numel()))


def test_every_parameter_gets_a_gradient(case):
    _, layer, x = case
    params = list(layer.parameters())
    if not params:
        pytest.skip("no parameters")
    z, logdet = layer(x)
    ((z**2).sum() + logdet.sum()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_fresh_coupling_is_the_identity():
    layer = AffineCoupling(2, 8, 1, MaskType.CHECKERBOARD, 0).eval()
    x = torch.randn(3, 2, 4, 4)
    z, logdet = layer(x)
    assert torch.equal(z, x)
    assert torch.equal(logdet, torch.zeros(3))


def test_squeeze_exact_values():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    z, logdet = Squeeze()(x)
    expected = torch.tensor(
        [
            [[0.0, 2.0], [8.0, 10.0]],
            [[1.0, 3.0], [9.0, 11.0]],
            [[4.0, 6.0], [12.0, 14.0]],
            [[5.0, 7.0], [13.0, 15.0]],
        ]
    ).view(1, 4, 2, 2)
    assert torch.equal(z, expected)
    assert torch.equal(logdet, torch.zeros(1))
    assert torch.equal(Squeeze().inverse(z), x)


def test_squeeze_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(1, 1, 3, 4))


def test_checkerboard_masks_exact():
    assert torch.equal(
        checkerboard_mask(3, 4, 0)[0, 0],
        torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]),
    )
    assert torch.equal(
        checkerboard_mask(3, 4, 1)[0, 0],
        torch.tensor([[0.0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]),
    )


def test_channel_masks_exact():
    assert torch.equal(channel_mask(4, 0).flatten(), torch.tensor([1.0, 1, 0, 0]))
    assert torch.equal(channel_mask(4, 1).flatten(), torch.tensor([0.0, 0, 1, 1]))
    with pytest.raises(ValueError, match="even"):
        channel_mask(3, 0)


def test_channel_coupling_follows_the_masked_formula():
    """The split implementation equals y = b*x + (1-b)*(x*exp(s) + t) with the channel mask."""
    torch.manual_seed(0)
    layer = AffineCoupling(4, 4, 1, MaskType.CHANNEL, 1).double()
    perturb(layer)
    layer.eval()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    b = channel_mask(4, 1, dtype=torch.float64)
    kept = x[:, 2:]
    raw_s, t = layer.net(kept)
    s = layer.scale * torch.tanh(raw_s)
    s_full = torch.cat((s, torch.zeros_like(s)), 1)
    t_full = torch.cat((t, torch.zeros_like(t)), 1)
    expected = b * x + (1 - b) * (x * torch.exp(s_full) + t_full)
    y, logdet = layer(x)
    assert torch.allclose(y, expected, atol=1e-12)
    assert torch.allclose(logdet, ((1 - b) * s_full).flatten(1).sum(1), atol=1e-12)


def test_batchnorm_uses_batch_statistics_in_training():
    layer = BatchNormFlow(2).double()
    x = torch.randn(64, 2, 3, 3, dtype=torch.float64) * 3 + 1
    y, logdet = layer(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-10)
    var = x.var((0, 2, 3), unbiased=False)
    assert torch.allclose(logdet, (-0.5 * torch.log(var + layer.eps)).sum().expand(64) * 9)
    # running statistics moved towards the batch's
    assert (layer.running_mean - 1).abs().max() < 1


def test_batchnorm_inverse_refuses_training_mode():
    layer = BatchNormFlow(2)
    with pytest.raises(RuntimeError, match="eval mode"):
        layer.inverse(torch.zeros(1, 2, 2, 2))


def test_logit_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(0.6)
