"""The trainer's step under DistributedDataParallel, for ``tests/test_train.py``.

Run by ``torchrun --nproc_per_node 2 tests/ddp_step.py OUT``: every rank trains a copy of
one model on the same batches, so the averaged gradient is each rank's own and the run must
match one process (:func:`train_steps` without a process group) to float tolerance. Each
rank saves its losses and weights to ``OUT/rank<R>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from core.flow.model import FlowConfig, RealNVP
from core.training.step import make_train_step, use_channels_last
from core.training.trainer import TrainConfig

# Three input channels and two scales: checkerboard and channel-wise couplings, batch norm
# in the s/t networks and in the flow, all in channels_last where the trainer uses it.
CONFIG = FlowConfig(in_channels=3, image_size=8, num_scales=2, mid_channels=8, num_blocks=1)
STEPS, BATCH = 3, 8


def train_steps(
    channels_last: bool, distributed: bool = False
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses (bits/dim) of :data:`STEPS` float32 steps on the CPU and the weights after them."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = RealNVP(CONFIG).train()
    step = make_train_step(model, device, "float32", TrainConfig(), lr=1e-3)  # as the trainer
    if not channels_last:
        model.to(memory_format=torch.contiguous_format)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if distributed:  # the model is converted first, then wrapped, as the trainer does
        step.net = nn.parallel.DistributedDataParallel(model)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x = torch.rand(
            BATCH, CONFIG.in_channels, CONFIG.image_size, CONFIG.image_size, generator=data
        )
        step(x.contiguous(memory_format=fmt))
        losses.append(step.read(reset_window=True)["loss"])
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return losses, state


def main(out: Path) -> None:
    from core.training.distributed import close_distributed, init_distributed

    torch.set_num_threads(1)
    ranks, device = init_distributed("cpu")
    try:
        losses, state = train_steps(use_channels_last(device, "float32"), distributed=True)
        torch.save({"losses": losses, "state": state}, out / f"rank{ranks.rank}.pt")
    finally:
        close_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
