"""The training loop: batches -> loss -> backward -> (every accumulation window) clip, step, and with
--scale_weight_norms kohya's max-norm on the adapters (networks/max_norm.py).

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
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from loracraft.data.plan import StepCount
from loracraft.networks.max_norm import apply_max_norm
from loracraft.training.interrupt import StopRequest
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


def _stop_if_non_finite(log: TrainingLog, accelerator: Accelerator, step: int, epoch: int) -> None:
    """Raise NonFiniteLoss when a loss read back so far was NaN or inf. Call it where every process
    has just read its losses back (the same steps in each): with several processes, one that saw a NaN
    (whose gradients already reached every process) stops all of them together, where alone it would
    leave the others waiting for it in the next gradient exchange."""
    found = log.non_finite
    if accelerator.num_processes > 1:
        flag = torch.tensor([0.0 if found is None else 1.0], device=accelerator.device)
        if found is None and accelerator.reduce(flag, "sum").item() > 0:
            found = (step, epoch, math.nan)
        elif found is not None:
            accelerator.reduce(flag, "sum")
    if found is not None:
        raise NonFiniteLoss(*found)


@dataclass(frozen=True)
class Position:
    """Where a run stands: the epoch (from 1) its next batch belongs to, the batches of that epoch this
    process has trained, and the optimizer steps taken. A run resumed at a position continues exactly
    there: each epoch's batch order is a function of the seed and the epoch."""

    epoch: int = 1
    batch: int = 0
    step: int = 0


class StopRequested(Exception):
    """The loop stopped at `position` (an optimizer step boundary) because a stop was asked for."""

    def __init__(self, signal_name: str, position: Position):
        super().__init__(f"stopped by {signal_name} at step {position.step}")
        self.signal_name, self.position = signal_name, position


def _nothing(*_: object) -> None:
    return None


@dataclass(frozen=True)
class LoopHooks:
    """What the run does around the loop: `before_batch(steps so far)` before each batch (to stop
    training a part at a step), `after_step(position)` after each optimizer step and
    `after_epoch(position)` after every epoch but the last (to save files and states), and `stop`, read
    after each step (a Ctrl-C or SIGTERM asks for it)."""

    before_batch: Callable[[int], None] = _nothing
    after_step: Callable[[Position], None] = _nothing
    after_epoch: Callable[[Position], None] = _nothing
    stop: StopRequest = field(default_factory=StopRequest)
    restore_generators: Callable[[], None] = _nothing
    """A resumed run's: put the generators back as they were when its state was saved (`run_epochs`
    calls it at that same moment of the run)."""


@dataclass(frozen=True)
class LoopResult:
    steps: int
    """Optimizer steps taken, from the start of the run (a resumed run counts the saved ones)."""
    final_average_loss: float


def run_epochs(
    accelerator: Accelerator,
    parts: TrainingParts,
    loss_of: Callable[[dict], torch.Tensor],
    steps: StepCount,
    max_grad_norm: float,
    log: TrainingLog,
    hooks: LoopHooks,
    start: Position = Position(),
    *,
    max_norm: float = 0.0,
) -> LoopResult:
    """Train from `start` to `steps.max_train_steps` optimizer steps; `loss_of(batch)` runs the prepared
    model. `max_norm` above 0 (--scale_weight_norms) scales down, after every optimizer step, each adapter
    of the model's `network` whose weight difference has a larger norm. Raises NonFiniteLoss when a loss
    is NaN or inf, StopRequested when `hooks.stop` asks."""
    trainable = [p for group in parts.optimizer.param_groups for p in group["params"]]
    network = accelerator.unwrap_model(parts.model).network if max_norm > 0 else None
    parts.model.train()
    done = start.step
    batches_in_epoch = len(parts.loader)
    # torch's DataLoader draws its workers' base seed from the global generator when an epoch's iteration
    # starts: a state saved inside an epoch was saved after that draw, so its generators come back once
    # the resumed epoch's iteration has started; any other state's come back now.
    inside_epoch = 0 < start.batch < batches_in_epoch
    if not inside_epoch:
        hooks.restore_generators()
    for epoch in range(start.epoch, steps.num_epochs + 1):
        parts.loader.set_epoch(epoch - 1)
        skipped = start.batch if epoch == start.epoch else 0
        # Skipping happens in the sampler: the skipped batches are never loaded. An epoch whose every
        # batch was trained before the state was saved is not iterated at all (that would draw a seed).
        loader = parts.loader
        if skipped:
            loader = accelerator.skip_first_batches(parts.loader, skipped)
            # accelerate 0.33's skipping loader starts at epoch 0: the epoch sets the batch order.
            loader.set_epoch(epoch - 1)
        epoch_losses = []
        for index, batch in enumerate(loader if skipped < batches_in_epoch else (), start=skipped + 1):
            if inside_epoch and epoch == start.epoch and index == skipped + 1:
                hooks.restore_generators()
            hooks.before_batch(done)
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
            if not accelerator.sync_gradients:
                continue
            done += 1
            # kohya scales after every batch, also inside an accumulation window, where the weights have
            # not changed since the last step: after the optimizer steps is the same.
            norms = apply_max_norm(network, max_norm, accelerator.device) if network is not None else None
            lrs = learning_rates(parts.optimizer, parts.lr_scheduler)
            if log.step(done, epoch, loss.detach(), lrs, norms):
                _stop_if_non_finite(log, accelerator, done, epoch)
            if done >= steps.max_train_steps:
                break
            hooks.after_step(Position(epoch, index, done))
            # A stop at an epoch's last step waits for the epoch's end, so its epoch file is saved.
            if hooks.stop.requested and index < batches_in_epoch:
                raise StopRequested(hooks.stop.signal_name, Position(epoch, index, done))
        epoch_average = torch.stack(epoch_losses).mean().item() if epoch_losses else float("nan")
        log.epoch_end(epoch, epoch_average)
        _stop_if_non_finite(log, accelerator, done, epoch)
        if epoch_losses and not math.isfinite(epoch_average):
            # A batch inside an accumulation window, whose loss is not logged, went non-finite.
            raise NonFiniteLoss(done, epoch, epoch_average)
        if done >= steps.max_train_steps:
            break
        hooks.after_epoch(Position(epoch + 1, 0, done))
        if hooks.stop.requested:
            raise StopRequested(hooks.stop.signal_name, Position(epoch + 1, 0, done))
    average = log.flush()
    _stop_if_non_finite(log, accelerator, done, steps.num_epochs)
    return LoopResult(done, average)
