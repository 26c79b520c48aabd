"""Distributed runs: which rank this process is, joining the process group and leaving it.

Under ``torchrun`` the environment names the rank and world size; NCCL on CUDA, gloo on the
CPU. Outside it, one process of rank 0.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.training.device import pick_device


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Ranks, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), pick_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Ranks(rank, world, local_rank), device


def close_distributed() -> None:
    """Leave the process group, if this process joined one. The DDP wrapper sits in reference
    cycles: it is collected first (and its reducer's gloo work with it), while the group and
    the interpreter are alive. Left to the interpreter's exit, its C++ threads could abort the
    rank ("terminate called without an active exception", seen once in a full suite run
    across two processes)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
