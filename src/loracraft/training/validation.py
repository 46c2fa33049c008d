"""The validation loss: the held-out images' diffusion loss at fixed noise and fixed timesteps, so two
evaluations of the same weights give the same number and a change in it is the LoRA's doing.

As in kohya (train_network.py), each validation batch is evaluated at 4 timesteps spread over the
trained range, linspace(min_timestep, max_timestep, 6)[1:-1] (200, 400, 600, 800 by default), with the
LoRA in eval mode (no dropout) and every random generator switched to the validation seed and back.
The noise comes from a generator of its own, seeded by (validation seed, batch index), drawn on the CPU:
the same on any device, and the same for a batch however many batches are evaluated. Switching the
global generators too makes whatever else draws (the VAE's posterior when latents are not cached) draw
the same each time, and leaves training's draws as they were: a run with validation trains exactly like
one without.

The held-out images go through the same caches as training's (latents and text-encoder outputs) and
are read in this process, without workers. With several processes every process evaluates the whole
set, the same batches with the same noise, so each gets the same losses and nothing is gathered.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from loracraft.config.schema import TrainConfig
from loracraft.data.dataset import batch_loader
from loracraft.data.plan import DatasetPlan
from loracraft.models.bundle import ModelBundle
from loracraft.training.batches import make_batch_loader
from loracraft.training.caching import cached_text_inputs
from loracraft.training.optimizer.running import evaluation_weights
from loracraft.training.rng_state import capture_rng, restore_rng
from loracraft.training.step import FixedDraws, StepModels, sample_losses

TIMESTEPS_PER_BATCH = 4


def validation_timesteps(low: int, high: int, count: int = TIMESTEPS_PER_BATCH) -> list[int]:
    """`count` timesteps evenly inside [low, high], both ends left out: kohya's
    `np.linspace(low, high, count + 2, dtype=int)[1:-1]`, in integers."""
    return [low + (high - low) * k // (count + 1) for k in range(1, count + 1)]


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The generator of one validation batch's noise. A str seed is hashed (SHA-512), so neighbouring
    (seed, batch) pairs give unrelated streams."""
    return torch.Generator().manual_seed(random.Random(f"validation:{seed}:{batch_index}").getrandbits(63))


@dataclass(frozen=True)
class ValidationLosses:
    """Mean per-sample losses of one evaluation: over everything, per folder (`Subset.name`) and per
    timestep. Each sample counts once per timestep, whatever the size of its batch."""

    overall: float
    per_subset: dict[str, float]
    per_timestep: dict[int, float]


class _Means:
    def __init__(self) -> None:
        self._sums: dict[object, float] = defaultdict(float)
        self._counts: dict[object, int] = defaultdict(int)

    def add(self, key: object, value: float) -> None:
        self._sums[key] += value
        self._counts[key] += 1

    def means(self) -> dict:
        return {key: self._sums[key] / self._counts[key] for key in self._sums}


class Validation:
    """The held-out images and when to evaluate them (`due`); `evaluate` measures the loss."""

    def __init__(
        self,
        plan: DatasetPlan,
        loader: DataLoader,
        *,
        timesteps: list[int],
        max_batches: int | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
    ) -> None:
        self.plan = plan
        self.loader = loader
        self.seed = plan.seed
        self.timesteps = timesteps
        self.batch_count = len(loader) if max_batches is None else min(max_batches, len(loader))
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs

    def due(self, *, step: int, epoch_end: int | None) -> bool:
        """Whether to evaluate after optimizer step `step` (`epoch_end` None), or at the end of epoch
        `epoch_end` (counted from 1). As in kohya: every epoch unless --validate_every_n_epochs says
        otherwise, and with --validate_every_n_steps also every N steps."""
        if epoch_end is not None:
            return self.every_n_epochs is None or epoch_end % self.every_n_epochs == 0
        return self.every_n_steps is not None and step % self.every_n_steps == 0

    def evaluate(
        self,
        step_models: StepModels,
        accelerator: Accelerator,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> ValidationLosses:
        """The validation loss of the weights as they are now. The model's modules, every random
        generator and a schedule-free `optimizer`'s weights are as they were before, afterwards."""
        modes = {module: module.training for module in step_models.model.modules()}
        generators = capture_rng()
        set_seed(self.seed)
        step_models.model.eval()
        try:
            with torch.no_grad(), evaluation_weights(optimizer) if optimizer is not None else nullcontext():
                return self._measure(step_models, accelerator.device)
        finally:
            # Module by module: a part frozen in eval mode during training (stop_text_encoder_training)
            # stays so.
            for module, training in modes.items():
                module.training = training
            restore_rng(generators)

    def _measure(self, models: StepModels, device: torch.device) -> ValidationLosses:
        overall, per_subset, per_timestep = _Means(), _Means(), _Means()
        for batch_index, batch in enumerate(islice(self.loader, self.batch_count)):
            # The VAE encodes uncached images once for the four timesteps.
            if "latents" not in batch:
                batch = {**batch, "latents": models.encode_images(batch["pixels"].to(device))}
            names = [self.plan.subsets[index].name for index in batch["subset_indices"].tolist()]
            generator = batch_generator(self.seed, batch_index)
            for timestep in self.timesteps:
                noise = torch.randn(batch["latents"].shape, generator=generator)
                draws = FixedDraws(noise, torch.full((len(names),), timestep, dtype=torch.long))
                losses = sample_losses(models, batch, device, draws).float().cpu().tolist()
                for name, loss in zip(names, losses, strict=True):
                    overall.add(None, loss)
                    per_subset.add(name, loss)
                    per_timestep.add(timestep, loss)
        return ValidationLosses(overall.means()[None], per_subset.means(), per_timestep.means())


def make_validation_set(
    config: TrainConfig,
    plan: DatasetPlan | None,
    bundle: ModelBundle,
    device: torch.device,
    echo: Callable[[str], None],
) -> Validation | None:
    """The run's validation set from the planned held-out images (`plan.validation`), their latents and
    text-encoder outputs cached as training's are; None when nothing is held out. Call it where the
    training loader is made, while the encoders are still on the device."""
    if plan is None:
        given = [
            f"--{name}"
            for name in ("validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps")
            if getattr(config, name) is not None
        ]
        if given:
            echo(
                f"note: {' and '.join(given)} given, but no image is held out (--validation_split 0 and no "
                "is_validation subset), so no validation loss is measured"
            )
        return None

    def validation_echo(line: str) -> None:
        echo(f"{line} (validation set)")

    text_states, text_state_files = cached_text_inputs(config, plan, bundle, device, validation_echo)
    loader = make_batch_loader(
        config,
        plan,
        bundle,
        device,
        validation_echo,
        text_states=text_states,
        text_state_files=text_state_files,
    )
    return Validation(
        plan,
        # In this process: every evaluation reads the same batches and no worker starts.
        batch_loader(loader.dataset, num_workers=0),
        timesteps=validation_timesteps(*config.timestep_range),
        max_batches=config.max_validation_steps,
        every_n_steps=config.validate_every_n_steps,
        every_n_epochs=config.validate_every_n_epochs,
    )
