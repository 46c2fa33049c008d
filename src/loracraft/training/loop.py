"""The training loop: batches -> loss -> backward -> (every accumulation window) clip, step.

The model, the loader, the optimizer and the schedule go through `accelerator.prepare` together. The
prepared loader tells accelerate where each epoch ends, so an accumulation window never spans two
epochs: the last window of an epoch steps with what it has, as in kohya, whose step count
(`plan.steps`) assumes exactly that.

A NaN or inf loss stops the run (`NonFiniteLoss`) where the log reads the losses back (every few steps
and at each epoch's end, so the loop never waits for the device to check), before any later file is
written: the epoch files saved before it stay as they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from loracraft.data.plan import StepCount
from loracraft.training.optimizer import learning_rates
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


class NonFiniteLoss(Exception):
    """The loss of optimizer step `step` (in `epoch`) was NaN or inf; the loop stopped."""

    def __init__(self, step: int, epoch: int, value: float):
        super().__init__(f"loss {value} at step {step} (epoch {epoch})")
        self.step, self.epoch, self.value = step, epoch, value


def _stop_if_non_finite(log: TrainingLog) -> None:
    if log.non_finite is not None:
        raise NonFiniteLoss(*log.non_finite)


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
    before_batch: Callable[[int], None] | None = None,
) -> LoopResult:
    """Train `steps.max_train_steps` optimizer steps; `loss_of(batch)` runs the prepared model.
    `epoch_end(epoch, steps so far)` is called after every epoch but the last (to save epoch files),
    `before_batch(steps so far)` before each batch (to stop training a part at a step).
    Raises NonFiniteLoss when a loss is NaN or inf."""
    trainable = [p for group in parts.optimizer.param_groups for p in group["params"]]
    parts.model.train()
    done = 0
    for epoch in range(1, steps.num_epochs + 1):
        parts.loader.set_epoch(epoch - 1)
        epoch_losses = []
        for batch in parts.loader:
            if before_batch is not None:
                before_batch(done)
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
                log.step(done, epoch, loss.detach(), learning_rates(parts.optimizer, parts.lr_scheduler))
                _stop_if_non_finite(log)
                if done >= steps.max_train_steps:
                    break
        epoch_average = torch.stack(epoch_losses).mean().item()
        log.epoch_end(epoch, epoch_average)
        _stop_if_non_finite(log)
        if not math.isfinite(epoch_average):
            # A batch inside an accumulation window, whose loss is not logged, went non-finite.
            raise NonFiniteLoss(done, epoch, epoch_average)
        if done >= steps.max_train_steps:
            break
        epoch_end(epoch, done)
    average = log.flush()
    _stop_if_non_finite(log)
    return LoopResult(done, average)
