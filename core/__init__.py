"""Real NVP: the flow, its training and its checkpoints. Never imports Qt."""

from core.bijection import BatchNormFlow, Bijection, LogitTransform, Sequential, Squeeze
from core.coupling import AffineCoupling, MaskType, channel_mask, checkerboard_mask
from core.model import PRESETS, FlowConfig, RealNVP, dequantize, nats_to_bits_per_dim, preset

__all__ = [
    "PRESETS",
    "AffineCoupling",
    "BatchNormFlow",
    "Bijection",
    "FlowConfig",
    "LogitTransform",
    "MaskType",
    "RealNVP",
    "Sequential",
    "Squeeze",
    "channel_mask",
    "checkerboard_mask",
    "dequantize",
    "nats_to_bits_per_dim",
    "preset",
]
