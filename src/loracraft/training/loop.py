"""The training loop: batches -> loss -> backward -> (every accumulation window) clip, step.

The model, the loader, the optimizer and the schedule go through `accelerator.prepare` together. The
prepared loader tells accelerate where each epoch ends, so an accumulation window never spans two
epochs: the last window of an epoch steps with what it has, as in kohya, whose step count
(`plan.steps`) assumes exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from loracraft.data.plan import StepCount
from loracraft.training.progress import TrainingLog


@dataclass(frozen=True)
class TrainingParts:
    """What the loop drives, as `accelerator.prepare` returned it."""

    model: nn.Module
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler


def prepare_training(
    accelerator: Accelerator,
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainingParts:
    return TrainingParts(*accelerator.prepare(model, loader, optimizer, lr_scheduler))


@dataclass(frozen=True)
class LoopResult:
    steps: int
    """Optimizer steps taken."""
    final_average_loss: float


def run_epochs(
    accelerator: Accelerator,
    parts: TrainingParts,
    loss_of: Callable[[dict], torch.Tensor],
    steps: StepCount,
    max_grad_norm: float,
    log: TrainingLog,
    epoch_end: Callable[[int, int], None],
) -> LoopResult:
    """Train `steps.max_train_steps` optimizer steps; `loss_of(batch)` runs the prepared model.
    `epoch_end(epoch, steps so far)` is called after every epoch but the last (to save epoch files)."""
    trainable = [p for group in parts.optimizer.param_groups for p in group["params"]]
    group_names = [group.get("name", f"group{i}") for i, group in enumerate(parts.optimizer.param_groups)]
    parts.model.train()
    done = 0
    for epoch in range(1, steps.num_epochs + 1):
        parts.loader.set_epoch(epoch - 1)
        epoch_losses = []
        for batch in parts.loader:
            with accelerator.accumulate(parts.model):
                loss = loss_of(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, max_grad_norm)
                # The prepared optimizer and schedule step only at the end of an accumulation window.
                parts.optimizer.step()
                parts.lr_scheduler.step()
                parts.optimizer.zero_grad(set_to_none=True)
            epoch_losses.append(loss.detach())
            if accelerator.sync_gradients:
                done += 1
                lrs = dict(zip(group_names, parts.lr_scheduler.get_last_lr(), strict=True))
                log.step(done, epoch, loss.detach(), lrs)
                if done >= steps.max_train_steps:
                    break
        log.epoch_end(epoch, torch.stack(epoch_losses).mean().item())
        if done >= steps.max_train_steps:
            break
        epoch_end(epoch, done)
    return LoopResult(done, log.flush())
