"""Learning-rate schedules, from diffusers' schedule helpers."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from loracraft.config.schema import TrainConfig


def build_lr_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int, num_processes: int = 1
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule over `total_steps` optimizer steps.

    Like kohya, the horizon is multiplied by the number of processes because accelerate steps a prepared
    scheduler once per process.
    """
    return get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.warmup_steps(total_steps) * num_processes,
        num_training_steps=total_steps * num_processes,
        num_cycles=config.lr_scheduler_num_cycles,
        power=config.lr_scheduler_power,
    )
