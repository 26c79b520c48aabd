"""Real NVP: the flow, its training and its checkpoints. Never imports Qt."""

from core.files.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.files.resources import BUNDLED, bundled_model_path
from core.flow.bijection import BatchNormFlow, Bijection, LogitTransform, Sequential, Squeeze
from core.flow.coupling import AffineCoupling, MaskType, channel_mask, checkerboard_mask
from core.flow.model import (
    PRESETS,
    FlowConfig,
    RealNVP,
    dequantize,
    mean_bits_per_dim,
    nats_to_bits_per_dim,
    preset,
)

__all__ = [
    "BUNDLED",
    "PRESETS",
    "AffineCoupling",
    "BatchNormFlow",
    "Bijection",
    "CheckpointError",
    "FlowConfig",
    "LogitTransform",
    "MaskType",
    "RealNVP",
    "Sequential",
    "Squeeze",
    "bundled_model_path",
    "channel_mask",
    "checkerboard_mask",
    "dequantize",
    "load_checkpoint",
    "mean_bits_per_dim",
    "nats_to_bits_per_dim",
    "preset",
    "save_checkpoint",
]
