"""An inference copy of a model: normalizations folded into plain convolutions.

Once per loaded model, for eval-only use (the explorer, sampling, encoding):

- every weight-normalized convolution becomes an ``nn.Conv2d`` with ``g * v / ||v||``
  computed once;
- the eval batch normalization that directly follows a convolution inside a residual
  block (``conv1 -> bn2``) is folded into that convolution's weight and bias.

- the eval batch norms that precede a ReLU (``bn1`` of each block, ``out_bn`` of each s/t
  network) cannot be folded into a convolution; they become a precomputed per-channel
  ``x * scale + shift``, which at batch 1 costs a third of ``BatchNorm2d``'s call (4.5
  against 14.4 us with the ReLU, 16 channels at 14x14, one thread).

The flow's own batch-norm bijections stay as they are (per-channel affines with their own
log-determinant). The folded model computes the
same function to float tolerance (tested in float64).
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

from core.flow.collector import collector_paused
from core.flow.coupling import AffineCoupling
from core.flow.model import RealNVP
from core.flow.resnet import ResidualBlock, STNetwork, WeightNormConv2d

_Module = TypeVar("_Module", bound=nn.Module)


def copy_model(model: _Module) -> _Module:
    """``copy.deepcopy(model)`` with the cyclic collector paused (:func:`collector_paused`):
    how every model copy that may run beside the GUI thread is made."""
    with collector_paused():
        return copy.deepcopy(model)


def _plain_conv(wn: WeightNormConv2d) -> nn.Conv2d:
    weight = wn.weight().detach()
    out_ch, in_ch, k, _ = weight.shape
    conv = nn.Conv2d(in_ch, out_ch, k, padding=wn.padding).to(weight.device, weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(wn.bias.detach())
    return conv


def _fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``bn(conv(x))`` as one convolution (eval statistics)."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (out,)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)


class ScaleShift(nn.Module):
    """An eval ``BatchNorm2d`` as ``x * scale + shift`` with both precomputed."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.register_buffer("scale", scale.detach().view(1, -1, 1, 1).clone())
        self.register_buffer(
            "shift", (bn.bias - bn.running_mean * scale).detach().view(1, -1, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


@torch.no_grad()
def fold_for_inference(model: RealNVP) -> RealNVP:
    """A folded, eval-mode copy of ``model``; the original is left untouched."""
    folded = copy_model(model).eval()
    for module in folded.modules():
        if isinstance(module, ResidualBlock):
            module.conv1 = _plain_conv(module.conv1)
            _fold_bn_into_conv(module.conv1, module.bn2)
            module.bn2 = nn.Identity()
            module.conv2 = _plain_conv(module.conv2)
            module.bn1 = ScaleShift(module.bn1)
        elif isinstance(module, STNetwork):
            module.in_conv = _plain_conv(module.in_conv)
            module.out_bn = ScaleShift(module.out_bn)
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


class OneDnnConv2d(nn.Conv2d):
    """A convolution that always takes oneDNN's kernel. For a single image torch sends a
    convolution of under 20,480 input elements (64 channels at 16x16: the channel-wise
    couplings' networks of ``cifar10``) to its own im2col path instead, which ran at 140
    against oneDNN's 200-260 GFLOP/s on 2 threads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mkldnn_convolution(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
        )


@torch.no_grad()
def sampling_model(model: RealNVP) -> RealNVP:
    """The copy that ``realnvp sample`` decodes with: :func:`fold_for_inference`, and on the
    CPU in channels_last, where oneDNN's float32 convolutions of these s/t networks are
    faster in it, with every float32 convolution on oneDNN (:class:`OneDnnConv2d`;
    docs/performance.md, section 4). Same function to float tolerance."""
    folded = fold_for_inference(model)
    param = folded._param()
    if param.device.type != "cpu":
        return folded
    folded.to(memory_format=torch.channels_last)
    if param.dtype == torch.float32 and torch.backends.mkldnn.is_available():
        for module in folded.modules():
            if type(module) is nn.Conv2d and module.padding_mode == "zeros":
                module.__class__ = OneDnnConv2d  # same parameters, another kernel
    return folded


class Bf16Network(nn.Module):
    """An s/t network with bf16 weights in channels_last (oneDNN's layout for bf16
    convolutions): its input is cast to bf16 on the way in, and its outputs stay bf16,
    which :class:`core.flow.coupling.AffineCoupling` casts back to the running dtype before
    ``exp`` and the log-determinant."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.to(torch.bfloat16).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x.to(torch.bfloat16, memory_format=torch.channels_last))


@torch.no_grad()
def bf16_copy(folded: RealNVP) -> RealNVP:
    """A copy of an inference model whose s/t networks run in bf16; everything else (the
    logit, ``exp``, the flow's batch norms, the latents and the images) stays float32."""
    copied = copy_model(folded).eval()
    for module in copied.modules():
        if isinstance(module, AffineCoupling) and not isinstance(module.net, Bf16Network):
            module.net = Bf16Network(module.net)
    return copied


class FusedScaleShift(nn.Module):
    """A :class:`ScaleShift` as one ``addcmul``: for the draft copy's bf16 channels_last
    activations one pass instead of two, 9% of a bundled 16-image draft decode."""

    def __init__(self, folded: ScaleShift) -> None:
        super().__init__()
        self.register_buffer("scale", folded.scale)
        self.register_buffer("shift", folded.shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


# The couplings a draft decode runs first that stay float32 (see draft_copy).
DRAFT_FLOAT32_COUPLINGS = 3


@torch.no_grad()
def draft_copy(folded: RealNVP, float32_couplings: int = DRAFT_FLOAT32_COUPLINGS) -> RealNVP:
    """A copy of an inference model for draft frames: bf16 s/t networks (their eval batch
    norms as one ``addcmul``) in every coupling but the first ``float32_couplings`` that a
    decode runs (three of the final scale's four), which stay float32.

    A decode's first couplings are where a bf16 error is amplified most: every coupling
    after them carries it on. They run at the smallest size, where bf16 gains least.
    Measured on the bundled model (16 images, 12 latent draws, 2 threads): every network in
    bf16 puts single pixels up to 51-93 grey levels off (0.42x the float32 decode); the
    first two float32, 25-44 (0.47x); the first three, 17-39 (0.50x), the same as the
    whole final scale (0.54x). See docs/performance.md, section 3."""
    copied = copy_model(folded).eval()
    couplings = [m for m in copied.modules() if isinstance(m, AffineCoupling)]
    decode_order = couplings[::-1]  # the final scale's last coupling runs first
    for module in decode_order[float32_couplings:]:
        if isinstance(module.net, Bf16Network):
            continue
        module.net = Bf16Network(module.net)
        for block in module.net.modules():
            for name, child in block.named_children():
                if isinstance(child, ScaleShift):
                    setattr(block, name, FusedScaleShift(child))
    return copied
