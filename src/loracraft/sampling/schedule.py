"""When a run draws sample images, and what their files are called: kohya's rules.

kohya asks "sample now?" at three moments (train_network.py): before the first step (epoch 0, step 0),
after every optimizer step (no epoch: a "mid-epoch" moment, even at an epoch's last step) and at every
epoch's end (the epoch just finished, from 1). `sample_at_first` draws at the first, `sample_every_n_steps`
at the second, `sample_every_n_epochs` at the third and turns the second off. The last step and the last
epoch's end are moments like any other: kohya asks before it leaves the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from loracraft.config.sample_options import SampleOptions
from loracraft.data.plan import StepCount

SAMPLE_FOLDER = "sample"


@dataclass(frozen=True)
class SamplePoint:
    """A moment of a run that draws images: `step` optimizer steps done, and `epoch` the epoch that has
    just ended (0 before the first step), or None after an optimizer step inside the loop."""

    epoch: int | None
    step: int


def sample_due(options: SampleOptions, *, step: int, epoch: int | None) -> bool:
    """Whether the run draws images at this moment (see SamplePoint for `step` and `epoch`).

    Unlike kohya, a resumed run asking at its start (epoch 0, step > 0) draws nothing: kohya draws there
    only when sample_every_n_epochs is set, because it takes epoch 0 for an epoch's end."""
    if not options.sample_prompts:
        return False
    if step == 0:
        return options.sample_at_first
    if options.sample_every_n_epochs is not None:
        return epoch is not None and epoch > 0 and epoch % options.sample_every_n_epochs == 0
    if options.sample_every_n_steps is not None:
        return epoch is None and step % options.sample_every_n_steps == 0
    return False


def planned_samples(options: SampleOptions, steps: StepCount) -> list[SamplePoint]:
    """Every moment of a run of `steps` (from its start) that draws images, in the order they come."""
    moments = [SamplePoint(0, 0)]
    for epoch in range(1, steps.num_epochs + 1):
        first = (epoch - 1) * steps.steps_per_epoch + 1
        last = min(epoch * steps.steps_per_epoch, steps.max_train_steps)
        moments += [SamplePoint(None, step) for step in range(first, last + 1)]
        moments.append(SamplePoint(epoch, last))
    return [moment for moment in moments if sample_due(options, step=moment.step, epoch=moment.epoch)]


def sample_file_name(
    output_name: str | None, point: SamplePoint, index: int, seed: int | None, when: datetime
) -> str:
    """kohya's name: `[NAME_]e000004_00_20261202120000[_SEED].png` at an epoch's end (and e000000 before
    the first step), `[NAME_]000100_00_...` after a step; `index` is the prompt's place in its file."""
    moment = f"e{point.epoch:06d}" if point.epoch is not None else f"{point.step:06d}"
    prefix = f"{output_name}_" if output_name else ""
    suffix = f"_{seed}" if seed is not None else ""
    return f"{prefix}{moment}_{index:02d}_{when:%Y%m%d%H%M%S}{suffix}.png"


def sample_folder(output_dir: str | None) -> Path:
    """OUTPUT/sample, where kohya puts the images."""
    return Path(output_dir or ".") / SAMPLE_FOLDER
