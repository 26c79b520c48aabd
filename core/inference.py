"""An inference copy of a model: normalizations folded into plain convolutions.

Once per loaded model, for eval-only use (the explorer, sampling, encoding):

- every weight-normalized convolution becomes an ``nn.Conv2d`` with ``g * v / ||v||``
  computed once;
- the eval batch normalization that directly follows a convolution inside a residual
  block (``conv1 -> bn2``) is folded into that convolution's weight and bias.

Batch norms that precede a ReLU on the residual stream cannot be folded into a
convolution and stay as they are; so do the flow's own batch-norm bijections, which are
cheap per-channel affines with their own log-determinant. The folded model computes the
same function to float tolerance (tested in float64).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from core.model import RealNVP
from core.resnet import ResidualBlock, STNetwork, WeightNormConv2d


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


@torch.no_grad()
def fold_for_inference(model: RealNVP) -> RealNVP:
    """A folded, eval-mode copy of ``model``; the original is left untouched."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ResidualBlock):
            module.conv1 = _plain_conv(module.conv1)
            _fold_bn_into_conv(module.conv1, module.bn2)
            module.bn2 = nn.Identity()
            module.conv2 = _plain_conv(module.conv2)
        elif isinstance(module, STNetwork):
            module.in_conv = _plain_conv(module.in_conv)
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
