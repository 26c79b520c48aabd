"""Real NVP: the flow, its training and its checkpoints. Never imports Qt.

The package is split by concept: :mod:`core.flow` (the bijections, the coupling layer and its
masks, the s/t ResNet, the multi-scale model, the likelihood map, the folded inference copy,
CUDA graphs), :mod:`core.training` (the trainer, data sets, precision, devices, events),
:mod:`core.stats` (typicality, class statistics, heat maps) and :mod:`core.files` (images,
atomic writes, checkpoints, bundled resources), with the command line (:mod:`core.cli`,
``python -m core``) and the benchmarks (:mod:`core.bench`) beside them.

The names below resolve lazily (PEP 562): ``import core.stats.typicality`` or
``import core.files.images`` loads no torch, so the explorer's torch-free views can use them;
``core.RealNVP`` imports the flow on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "BatchNormFlow": "core.flow.bijection",
    "Bijection": "core.flow.bijection",
    "LogitTransform": "core.flow.bijection",
    "Sequential": "core.flow.bijection",
    "Squeeze": "core.flow.bijection",
    "CheckpointError": "core.files.checkpoint",
    "load_checkpoint": "core.files.checkpoint",
    "save_checkpoint": "core.files.checkpoint",
    "AffineCoupling": "core.flow.coupling",
    "MaskType": "core.flow.coupling",
    "channel_mask": "core.flow.coupling",
    "checkerboard_mask": "core.flow.coupling",
    "PRESETS": "core.flow.model",
    "FlowConfig": "core.flow.model",
    "RealNVP": "core.flow.model",
    "dequantize": "core.flow.model",
    "mean_bits_per_dim": "core.flow.model",
    "nats_to_bits_per_dim": "core.flow.model",
    "preset": "core.flow.model",
    "BUNDLED": "core.files.resources",
    "bundled_model_path": "core.files.resources",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
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
