"""The benchmarks' progress log (the real one, also recording when each optimizer step finished) and the
demo's run timed with it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from loracraft.config.load import updated_config
from loracraft.config.schema import TrainConfig
from loracraft.tools.demo import DemoConcept, demo_config, make_demo_dataset
from loracraft.training.loop import LoopHooks, run_epochs
from loracraft.training.progress import TrainingLog
from loracraft.training.step import diffusion_loss
from loracraft.training.trainer import RunStart, TrainingSetup, setup_training, start_run


class TimedLog(TrainingLog):
    """The real progress log, also recording when each optimizer step finished."""

    def __init__(self, total_steps: int):
        super().__init__(total_steps, show_bar=False)
        self.times: list[float] = []

    def step(self, step, epoch, loss, lrs, max_norm=None) -> bool:
        flushed = super().step(step, epoch, loss, lrs, max_norm)
        self.times.append(time.perf_counter())
        return flushed


@dataclass(frozen=True)
class TimedRun:
    config: TrainConfig
    start: RunStart
    setup: TrainingSetup
    step_seconds: float
    """Mean seconds per optimizer step after the warm-up."""


def timed_demo_run(root: Path, steps: int, warmup: int, **overrides) -> TimedRun:
    """The demo's run on the shipped tiny model (rank 8 on U-Net and text encoder, batch 4 at 64 px,
    cached latents, AdamW) for `warmup + steps` steps, set up by the trainer, with `overrides` of its
    settings; the parts it leaves are ready for more measuring."""
    data_dir = make_demo_dataset(root / "dataset", DemoConcept(), seed=0)
    config = updated_config(
        demo_config(data_dir, root / "out", seed=0, epochs=1),
        {
            "logging_dir": None,
            "save_every_n_epochs": None,
            "max_train_epochs": None,
            "max_train_steps": warmup + steps,
            **overrides,
        },
    )
    quiet = lambda _: None  # noqa: E731
    start = start_run(config, quiet)
    setup = setup_training(config, start.plan, start.bundle, start.accelerator, start.seed, quiet)
    log = TimedLog(start.plan.steps.max_train_steps)
    loss_of = partial(diffusion_loss, setup.step_models, device=start.accelerator.device)
    run_epochs(start.accelerator, setup.parts, loss_of, start.plan.steps, 1.0, log, LoopHooks())
    times = log.times[warmup - 1 :]
    return TimedRun(config, start, setup, (times[-1] - times[0]) / (len(times) - 1))
