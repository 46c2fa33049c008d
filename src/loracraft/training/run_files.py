"""The files a run will write in --output_dir, known before it starts: `loracraft plan` lists them.

The run is followed step by step as the loop calls `RunOutputs` (`run_outputs.py`): after every optimizer
step but the last, `after_step` saves step files and states; after every epoch but the last reached,
`after_epoch` saves epoch files and states; each save may remove one older save (`save_points.py`, kohya's
rules); at the end come the final state and `NAME.safetensors`. `NAME.toml` is written at the start,
`NAME.log` (`run_log.py`) follows the run, and sample images go to `sample/` at the moments
`sampling/schedule.py` names (their file names end in the time they are drawn, shown as `*`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from loracraft.config.schema import TrainConfig
from loracraft.data.plan import StepCount
from loracraft.sampling.prompts import SamplePrompt
from loracraft.sampling.schedule import SAMPLE_FOLDER, SamplePoint, planned_samples, sample_file_name
from loracraft.training.save_points import SaveSchedule, epoch_stem, state_name, step_stem

# Any date: it is replaced by `*` in the listed sample names (the real one is when the image is drawn).
_SOME_TIME = datetime(2000, 1, 1)


@dataclass
class PlannedFile:
    name: str
    """The path inside --output_dir (a state is a folder; samples are in sample/)."""
    written: str
    """When the run writes it: "at the start", "after step 12", "after epoch 2 (step 8)", "at the end"."""
    removed: str | None = None
    """When a later save removes it again (kohya's save_last_n_* rules); None: it stays."""


class _Outputs:
    """The files of a run in the order they appear, with the removals RunOutputs would make."""

    def __init__(self, config: TrainConfig, num_epochs: int):
        self.config = config
        self.schedule = SaveSchedule.of(config, num_epochs)
        self.stem = config.output_stem
        self.files: dict[str, PlannedFile] = {}

    def add(self, name: str, written: str) -> None:
        self.files[name] = PlannedFile(name, written)

    def remove(self, name: str, when: str) -> None:
        planned = self.files.get(name)
        if planned is not None and planned.removed is None:
            planned.removed = when

    def lora(self, stem: str) -> str:
        return f"{stem}.{self.config.save_model_as}"

    def save(
        self,
        stem_of: Callable[[str, int], str],
        number: int,
        when: str,
        old: int | None,
        old_state: int | None,
    ) -> None:
        """A save during training (a step or an epoch file, and its state with --save_state), with the
        removals it makes."""
        self.add(self.lora(stem_of(self.stem, number)), when)
        if old is not None:
            self.remove(self.lora(stem_of(self.stem, old)), when)
        if self.schedule.states_with_files:
            self.add(state_name(stem_of(self.stem, number)), when)
            if old_state is not None:
                self.remove(state_name(stem_of(self.stem, old_state)), when)

    def after_step(self, step: int) -> None:
        schedule = self.schedule
        if schedule.saves_after_step(step):
            old = schedule.step_to_remove(step, schedule.keep_steps)
            old_state = schedule.step_to_remove(step, schedule.keep_step_states)
            self.save(step_stem, step, f"after step {step}", old, old_state)

    def after_epoch(self, epoch: int, step: int, num_epochs: int) -> None:
        schedule = self.schedule
        if schedule.saves_after_epoch(epoch, num_epochs):
            old = schedule.epoch_to_remove(epoch, schedule.keep_epochs)
            old_state = schedule.epoch_to_remove(epoch, schedule.keep_epoch_states)
            self.save(epoch_stem, epoch, f"after epoch {epoch} (step {step})", old, old_state)

    def at_end(self, step: int) -> None:
        if self.schedule.state_at_end:
            self.add(state_name(self.stem), f"at the end (step {step})")
        self.add(self.lora(self.stem), f"at the end (step {step})")


def planned_files(
    config: TrainConfig,
    steps: StepCount,
    prompts: tuple[SamplePrompt, ...] = (),
    resumed_at: int = 0,
) -> list[PlannedFile]:
    """Every file the run writes in --output_dir, from the start (or the step a resumed run
    continues after, `resumed_at`) to its end, in
    the order it writes them; `prompts` are the sample prompts, when it draws samples."""
    outputs = _Outputs(config, steps.num_epochs)
    outputs.add(f"{outputs.stem}.toml", "at the start (its first line says how the run ended)")
    outputs.add(f"{outputs.stem}.log", "at the start, a line per epoch")
    moments: dict[int, list[SamplePoint]] = {}
    for point in planned_samples(config, steps):
        if point.step > resumed_at or resumed_at == 0:
            moments.setdefault(point.step, []).append(point)
    _samples(outputs, config, moments.pop(0, []), prompts)
    for step in range(resumed_at + 1, steps.max_train_steps + 1):
        epoch_end = step % steps.steps_per_epoch == 0
        # The loop leaves at the last step before either hook: the final file is that save.
        if step < steps.max_train_steps:
            outputs.after_step(step)
            if epoch_end:
                outputs.after_epoch(step // steps.steps_per_epoch, step, steps.num_epochs)
        _samples(outputs, config, moments.pop(step, []), prompts)
    outputs.at_end(steps.max_train_steps)
    return list(outputs.files.values())


def _samples(
    outputs: _Outputs, config: TrainConfig, points: list[SamplePoint], prompts: tuple[SamplePrompt, ...]
) -> None:
    stamp = f"{_SOME_TIME:%Y%m%d%H%M%S}"
    for point in points:
        for prompt in prompts:
            name = sample_file_name(config.output_name, point, prompt.index, prompt.seed, _SOME_TIME)
            outputs.add(str(Path(SAMPLE_FOLDER) / name.replace(stamp, "*")), _moment(point))


def _moment(point: SamplePoint) -> str:
    if point.step == 0:
        return "before the first step"
    if point.epoch is None:
        return f"after step {point.step}"
    return f"after epoch {point.epoch} (step {point.step})"


def kept_files(files: list[PlannedFile]) -> list[str]:
    """The names left in --output_dir when the run has finished."""
    return [planned.name for planned in files if planned.removed is None]


def format_run_files(files: list[PlannedFile], output_dir: Path, shown: int = 40) -> list[str]:
    """Console lines: the files kept at the end with when each is written, then those removed on the
    way; long lists (samples every step) are cut at `shown` lines with a count of the rest."""
    kept = [planned for planned in files if planned.removed is None]
    removed = [planned for planned in files if planned.removed is not None]
    width = min(max((len(planned.name) for planned in files), default=0), 48)
    lines = [f"Files (in {output_dir})"]
    lines += [f"  {planned.name:<{width}}  {planned.written}" for planned in kept[:shown]]
    if len(kept) > shown:
        lines.append(f"  ... and {len(kept) - shown} more")
    if removed:
        lines.append(f"  written and removed again on the way ({len(removed)}):")
        lines += [
            f"  {planned.name:<{width}}  {planned.written}; removed {planned.removed}"
            for planned in removed[:shown]
        ]
        if len(removed) > shown:
            lines.append(f"  ... and {len(removed) - shown} more")
    return lines
