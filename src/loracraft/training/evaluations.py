"""What a run looks at between its steps: sample images and the validation loss, each at the moments
its flags name, sent to the trackers and to NAME.log.

The moments are kohya's (train_network.py): before the first step (step 0), after every optimizer step
(a "mid-epoch" moment, even at an epoch's last step) and at every epoch's end, the last step and the
last epoch's end included. The loop calls `after_step` and `after_epoch` for every moment but the run's
last step and last epoch, which `at_end` takes after the final file is written.

Neither changes what the run trains: both put every random generator, every module's mode and the
adapters' multiplier back as they found them (`sampling/during_training.py`, `training/validation.py`),
and the trainer leaves the time they take out of the speed the trackers get.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from loracraft.sampling.during_training import SampleImage, TrainingSamples
from loracraft.sampling.schedule import sample_due
from loracraft.training.loop import Position
from loracraft.training.progress import TrainingLog
from loracraft.training.run_log import RunLog
from loracraft.training.step import StepModels
from loracraft.training.validation import Validation, ValidationLosses


@dataclass
class RunEvaluations:
    """The run's sample images (None: it draws none) and validation set (None: nothing is held out)."""

    samples: TrainingSamples | None
    validation: Validation | None
    step_models: StepModels
    accelerator: Accelerator
    optimizer: torch.optim.Optimizer
    log: TrainingLog
    run_log: RunLog
    echo: Callable[[str], None]

    def at_start(self, position: Position) -> None:
        """Before the first step of a run (a resumed run's start is no moment: it was one already)."""
        if position.step == 0:
            self._moment(step=0, epoch=0)

    def after_step(self, position: Position) -> None:
        self._moment(step=position.step, epoch=None)

    def after_epoch(self, position: Position) -> None:
        # `position` is where the next epoch starts: the epoch that ended is the one before.
        self._moment(step=position.step, epoch=position.epoch - 1)

    def at_end(self, steps: int, last_epoch: int) -> None:
        """The run's last step, then its last epoch's end, as kohya asks before it leaves the loop."""
        self._moment(step=steps, epoch=None)
        self._moment(step=steps, epoch=last_epoch)

    def _moment(self, *, step: int, epoch: int | None) -> None:
        if self.samples is not None and sample_due(self.samples.options, step=step, epoch=epoch):
            self._record_samples(self.samples.draw(step=step, epoch=epoch), step)
        # Every process evaluates (the same batches): with DDP their forward passes must match.
        if self.validation is not None and epoch != 0 and self.validation.due(step=step, epoch_end=epoch):
            losses = self.validation.evaluate(self.step_models, self.accelerator, self.optimizer)
            self._record_validation(losses, step, epoch)

    def _record_samples(self, images: list[SampleImage], step: int) -> None:
        if not images:
            return
        self.log.log_images(
            {f"sample_{image.prompt.index}": image.image for image in images},
            step,
            {f"sample_{image.prompt.index}": image.prompt.prompt for image in images},
        )
        names = ", ".join(image.path.name for image in images)
        self.run_log.line(f"samples at step {step}: {names}")

    def _record_validation(self, losses: ValidationLosses, step: int, epoch: int | None) -> None:
        """kohya's keys: loss/validation/{step|epoch}_average and _divergence (the validation loss minus
        the training loss's moving average); ours beside them: the same average per folder and per
        timestep. Epoch values go against the epoch number, as kohya logs them."""
        kind, at = ("step", step) if epoch is None else ("epoch", epoch)
        training_average = self.log.flush()
        values = {
            f"loss/validation/{kind}_average": losses.overall,
            f"loss/validation/{kind}_divergence": losses.overall - training_average,
        }
        values |= {f"loss/validation/{_tag(name)}/{kind}_average": v for name, v in losses.per_subset.items()}
        values |= {f"loss/validation/t{t}/{kind}_average": v for t, v in losses.per_timestep.items()}
        self.log.log_scalars(values, at)
        folders = ", ".join(f"{name} {value:.6f}" for name, value in losses.per_subset.items())
        where = f"step {step}" if epoch is None else f"epoch {epoch} (step {step})"
        self.run_log.line(f"validation loss at {where}: {losses.overall:.6f} ({folders})")


def _tag(name: str) -> str:
    # Tracker keys are paths: a folder name's spaces and slashes become underscores.
    return "_".join(name.split()).replace("/", "_")
