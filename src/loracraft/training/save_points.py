"""When a run saves, what the files are called, and which older ones it removes: kohya's rules.

Names (sd-scripts' train_util): an epoch file `NAME-000004.safetensors`, a step file
`NAME-step00000200.safetensors`, the final file `NAME.safetensors`; their states `NAME-000004-state/`,
`NAME-step00000200-state/` and `NAME-state/`.

Epoch files are saved every `save_every_n_epochs` epochs except after the last epoch (the final file is
that one); `save_n_epoch_ratio` N sets the interval to epochs // N (at least 1). Step files are saved
every `save_every_n_steps` optimizer steps. `save_last_n_epochs` K removes the epoch file K intervals
back when a new one is written; `save_last_n_steps` S removes the step file of the last multiple of the
interval that lies more than S steps back. Their `_state` variants do the same for states (and default
to them). Each removal names exactly one older save, as kohya's does, so files of other runs are never
swept up.
"""

from __future__ import annotations

from dataclasses import dataclass

from loracraft.config.schema import TrainConfig


def epoch_stem(stem: str, epoch: int) -> str:
    return f"{stem}-{epoch:06d}"


def step_stem(stem: str, step: int) -> str:
    return f"{stem}-step{step:08d}"


def state_name(file_stem: str) -> str:
    """The state folder saved beside the LoRA file of this stem (`NAME-000004` -> `NAME-000004-state`)."""
    return f"{file_stem}-state"


@dataclass(frozen=True)
class SaveSchedule:
    """The run's saving settings, with save_n_epoch_ratio already turned into an epoch interval."""

    every_n_epochs: int | None
    every_n_steps: int | None
    keep_epochs: int | None
    keep_steps: int | None
    keep_epoch_states: int | None
    keep_step_states: int | None
    states_with_files: bool
    """--save_state: a state beside every file saved during training, and one at the end."""
    state_at_end: bool

    @classmethod
    def of(cls, config: TrainConfig, num_epochs: int) -> SaveSchedule:
        every_n_epochs = config.save_every_n_epochs
        if config.save_n_epoch_ratio:
            every_n_epochs = num_epochs // config.save_n_epoch_ratio or 1
        return cls(
            every_n_epochs=every_n_epochs,
            every_n_steps=config.save_every_n_steps,
            keep_epochs=config.save_last_n_epochs,
            keep_steps=config.save_last_n_steps,
            keep_epoch_states=config.save_last_n_epochs_state or config.save_last_n_epochs,
            keep_step_states=config.save_last_n_steps_state or config.save_last_n_steps,
            states_with_files=config.save_state,
            state_at_end=config.save_state or config.save_state_on_train_end,
        )

    def saves_after_epoch(self, epoch: int, num_epochs: int) -> bool:
        return bool(self.every_n_epochs) and epoch % self.every_n_epochs == 0 and epoch < num_epochs

    def saves_after_step(self, step: int) -> bool:
        return bool(self.every_n_steps) and step % self.every_n_steps == 0

    def epoch_to_remove(self, epoch: int, keep: int | None) -> int | None:
        """The epoch whose file (`keep` = keep_epochs) or state (keep_epoch_states) goes when `epoch` is saved."""
        if not keep or not self.every_n_epochs:
            return None
        old = epoch - self.every_n_epochs * keep
        return old if old > 0 else None

    def step_to_remove(self, step: int, keep: int | None) -> int | None:
        """The step whose file or state goes when `step` is saved: with saves every 10 steps and keep 30,
        step 50 removes step 10."""
        if not keep or not self.every_n_steps:
            return None
        old = step - keep - 1
        old -= old % self.every_n_steps
        return old if old > 0 else None
