"""Checkpoints: one file, written atomically, read without executing anything from it.

Layout (a plain dict saved with ``torch.save``; loaded with ``weights_only=True``)::

    format   "realnvp-checkpoint"
    version  1
    config   FlowConfig as a dict
    model    state dict, batch-norm running statistics included
    meta     dict: data set, step, test bits/dim, ... (plain values)
    training optional: optimizer state, step, RNG states, data config, metric history
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from core.files.atomic import atomic_write
from core.files.format_version import CHECKPOINT_FORMAT
from core.files.resources import BundledModelMissing, resolve_checkpoint
from core.flow.model import FlowConfig, RealNVP

FORMAT = "realnvp-checkpoint"
VERSION = CHECKPOINT_FORMAT
MAX_CHECKPOINT_BYTES = 4 * 1024**3
FULL_DISK_BYTES = 1024**2  # free space below this after a failed write: the disk is full


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is meant for the user."""


def save_checkpoint(
    path: str | os.PathLike,
    model: RealNVP,
    meta: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write atomically: a temporary file in the same folder, flushed, fsynced, renamed.

    A crash or a stop part-way leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
        "training": training,
    }
    with atomic_write(path) as f:
        try:
            torch.save(payload, f)
        except RuntimeError as exc:
            # torch's zip writer reports a short write as "unexpected pos": on a full disk,
            # say so (the trainer's error event then names the cause).
            if shutil.disk_usage(path.parent).free < FULL_DISK_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
            raise
    return path


class _ByteCounter(io.RawIOBase):
    """A write-only stream that keeps only the number of bytes written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        n = len(memoryview(data))
        self.count += n
        return n


def serialized_bytes(obj: Any) -> int:
    """The size ``torch.save`` gives ``obj``, measured without writing it anywhere."""
    counter = _ByteCounter()
    torch.save(obj, counter)
    return counter.count


# RNG states, scheduler, history and the rest of the training section, with room to spare.
TRAINING_STATE_SLACK = 64 * 1024


def estimate_checkpoint_bytes(
    model: RealNVP, training: bool = True, extra_bytes: int = 0, averaged: bool = False
) -> int:
    """How large a checkpoint of ``model`` will be: its state serialized as
    :func:`save_checkpoint` does (tensor headers and alignment included, which dominate a
    small model), plus, with ``training``, Adam's two moments per parameter and the rest of
    the training state, and with ``averaged`` the raw weights and the average that travel
    beside the averaged model (core.training.averaging), plus ``extra_bytes`` (statistics
    kept in ``meta``). Measured against written files it is within a few percent."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    total = serialized_bytes(state) + extra_bytes
    if training:
        params = {n: p.detach() for n, p in model.named_parameters()}
        total += 2 * serialized_bytes(params) + TRAINING_STATE_SLACK
        if averaged:
            total += serialized_bytes(state) + serialized_bytes(params)
    return total


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle of protocol 2 or later


def _file_kind(path: Path) -> str | None:
    """What a file that cannot be a checkpoint is, in words (``None``: it may be one). A
    file is only called truncated or corrupt once it starts as a checkpoint does."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = head[: exc.start].decode("utf-8") if exc.start > len(head) - 4 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n\f" for c in text):
        return "it is a text file"
    return "it is not a file saved by torch"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, validated; raises :class:`CheckpointError` with a clear
    message for a missing, empty, huge, truncated, hostile or foreign file. The word
    ``bundled`` reads the bundled model (:func:`core.files.resources.resolve_checkpoint`)."""
    try:
        path = resolve_checkpoint(path)
    except BundledModelMissing as exc:
        raise CheckpointError(str(exc)) from None
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"{path}: {size:,} bytes is too large for a checkpoint (limit {MAX_CHECKPOINT_BYTES:,})"
        )
    kind = _file_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path}: not a checkpoint: {kind}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on odd pickle protocols
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names a refused class as "... unsupported GLOBAL module.name ..."; anything
        # else the weights-only unpickler rejects is simply not a pickle it understands.
        refused = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if refused:
            raise CheckpointError(
                f"{path}: refused to load: the file contains objects other than plain "
                f"weights, which could run code ({refused[0]})"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint: the file is truncated or corrupt, or not a "
            "checkpoint saved by torch"
        ) from None
    except Exception:  # whatever the unpickler trips on, the file is bad input
        # Plain words: an exception's class name means nothing to the person who chose
        # the file.
        raise CheckpointError(
            f"{path}: not a readable checkpoint: the file is truncated or corrupt"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a Real NVP checkpoint of this project")
    version = data.get("version")
    if version != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported "
            f"(this program reads version {VERSION})"
        )
    for key, kind in (("config", dict), ("model", dict), ("meta", dict)):
        if not isinstance(data.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint is missing its {key!r} section")
    return data


def model_from_checkpoint(data: dict[str, Any], path: str | os.PathLike = "") -> RealNVP:
    try:
        config = FlowConfig.from_dict(data["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model configuration: {exc}") from None
    model = RealNVP(config)
    try:
        model.load_state_dict(data["model"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        raise CheckpointError(
            f"{path}: the weights do not match a Real NVP of this architecture ({detail})"
        ) from None
    return model


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[RealNVP, dict[str, Any]]:
    """The model in eval mode on ``map_location`` and the checkpoint's ``meta`` dict
    (with ``config`` added)."""
    data = read_checkpoint(path)
    model = model_from_checkpoint(data, path).to(map_location).eval()
    meta = dict(data["meta"])
    meta["config"] = model.config.to_dict()
    meta["has_training_state"] = data.get("training") is not None
    return model, meta
