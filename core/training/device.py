"""The one device picker, used by the trainer, the CLI and the explorer's engine."""

from __future__ import annotations

import torch

from core.training.threads import pick_threads


def available_devices() -> list[str]:
    """Names a user may pass as ``--device``: ``auto``, ``cpu``, each CUDA device, ``mps``."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        names.append("mps")
    return names


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; anything else is checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; choose from {available_devices()}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError("device 'mps' asked for, but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; choose from {available_devices()}")
    return device


def use_threads(requested: int | None = None) -> int:
    """Give torch ``requested`` CPU threads (``--threads``), or the default that another
    busy process does not collapse (:mod:`core.training.threads`); returns the count."""
    threads = pick_threads(requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def describe(device: torch.device, threads: int | None = None) -> str:
    """A human label such as ``cuda:0 (NVIDIA H200)`` or ``cpu (2 threads)`` (``threads``:
    the count to show instead of this thread's torch setting)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        n = torch.get_num_threads() if threads is None else threads
        return f"cpu ({n} thread{'s' if n != 1 else ''})"
    return str(device)


def cpu_model() -> str:
    """The processor's name as the system gives it (``AMD EPYC``, ``Intel Xeon ...``), for
    the records of where a run's figures came from; ``unknown`` where it cannot be read."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
