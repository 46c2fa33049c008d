"""Everything a run writes while it trains, at the moments kohya does: LoRA files, states, their removal.

The main process writes the files; every process takes part in a state save (each gives its
generators). A write that fails (a full disk, a folder gone read-only) stops the run with one line: the
files saved before it are intact, and the line says how to go on.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator

from loracraft.atomic import write_text_atomic
from loracraft.config.load import effective_config_toml
from loracraft.config.schema import TrainConfig
from loracraft.data.plan import DatasetPlan
from loracraft.errors import UserError
from loracraft.networks.lora_network import LoRANetwork
from loracraft.training.loop import Position, TrainingParts
from loracraft.training.optimizer import evaluation_weights
from loracraft.training.output_folder import RUNNING, run_status_line, write_problem
from loracraft.training.resume import dataset_fingerprint
from loracraft.training.run_state import RunRecord, save_training_state
from loracraft.training.save_points import SaveSchedule, epoch_stem, state_name, step_stem
from loracraft.training.saving import RunFacts, save_lora
from loracraft.training.state_folder import remove_state_folder


@dataclass
class RunOutputs:
    config: TrainConfig
    plan: DatasetPlan
    facts: RunFacts
    accelerator: Accelerator
    network: LoRANetwork
    parts: TrainingParts
    echo: Callable[[str], None]
    epoch_files: list[Path] = field(default_factory=list)
    last_state: Path | None = None
    """The newest state written (or resumed from): where a failed run's message says to resume."""
    saved_at: dict[str, tuple[int, Path]] = field(default_factory=dict)
    """"lora" and "state": the step and path of the newest of each, so a stop right after a save reuses it."""

    def __post_init__(self) -> None:
        self.schedule = SaveSchedule.of(self.config, self.plan.steps.num_epochs)
        self.output_dir = Path(self.config.output_dir)
        self.stem = self.config.output_stem
        self.config_file = self.output_dir / f"{self.stem}.toml"
        self.fingerprint = dataset_fingerprint(self.plan)

    @property
    def writes(self) -> bool:
        return self.accelerator.is_main_process

    # The moments of a run.

    def at_start(self) -> None:
        self._write_config(RUNNING)

    def after_step(self, position: Position) -> None:
        if not self.schedule.saves_after_step(position.step):
            return
        self.accelerator.wait_for_everyone()
        stem = step_stem(self.stem, position.step)
        self._save_lora(stem, position)
        self._remove_lora(self.schedule.step_to_remove(position.step, self.schedule.keep_steps), step_stem)
        if self.schedule.states_with_files:
            self._save_state(stem, position)
            old = self.schedule.step_to_remove(position.step, self.schedule.keep_step_states)
            self._remove_state(old, step_stem)

    def after_epoch(self, position: Position) -> None:
        epoch = position.epoch - 1
        if not self.schedule.saves_after_epoch(epoch, self.plan.steps.num_epochs):
            return
        self.accelerator.wait_for_everyone()
        stem = epoch_stem(self.stem, epoch)
        self.epoch_files.append(self._save_lora(stem, position, epoch=epoch))
        self._remove_lora(self.schedule.epoch_to_remove(epoch, self.schedule.keep_epochs), epoch_stem)
        if self.schedule.states_with_files:
            self._save_state(stem, position)
            self._remove_state(
                self.schedule.epoch_to_remove(epoch, self.schedule.keep_epoch_states), epoch_stem
            )

    def at_end(self, position: Position) -> Path:
        """The final state (with --save_state or --save_state_on_train_end) and NAME.safetensors."""
        self.accelerator.wait_for_everyone()
        if self.schedule.state_at_end:
            self._save_state(self.stem, position)
        final = self._save_lora(self.stem, position, epoch=self.plan.steps.num_epochs)
        self._write_config(f"finished after {position.step} steps")
        return final

    def at_stop(self, signal_name: str, position: Position) -> str:
        """After a Ctrl-C or SIGTERM: a state and a LoRA file at the step reached; returns the line to end
        with, holding the command that resumes."""
        stem = step_stem(self.stem, position.step)
        lora = self._saved_now("lora", position) or self._save_lora(stem, position)
        state = self._saved_now("state", position) or self._save_state(stem, position)
        command = self.resume_command(state)
        self._write_config(f"stopped by {signal_name} at step {position.step}; resume: {command}")
        return (
            f"stopped by {signal_name} at step {position.step} of {self.plan.steps.max_train_steps}; saved "
            f"{lora.name} and {state.name}. Resume with: {command}"
        )

    def _saved_now(self, kind: str, position: Position) -> Path | None:
        step, path = self.saved_at.get(kind, (-1, None))
        return path if step == position.step else None

    def resume_command(self, state: Path) -> str:
        return shlex.join(
            ["loracraft", "train", "--config_file", str(self.config_file), "--resume", str(state)]
        )

    def failed(self, reason: str) -> None:
        """Mark NAME.toml as failed, if the disk still takes it (a full disk may be the reason)."""
        try:
            self._write_config(f"failed: {reason}")
        except UserError:
            pass

    # How each thing is written.

    def _save_lora(self, stem: str, position: Position, epoch: int | None = None) -> Path:
        path = self.output_dir / f"{stem}.{self.config.save_model_as}"
        if self.writes:
            # A schedule-free optimizer's evaluation weights are the ones to keep.
            with evaluation_weights(self.parts.optimizer), self._writing(path):
                saved_epoch = epoch if epoch is not None else position.epoch
                save_lora(
                    self.network,
                    path,
                    self.config,
                    self.plan,
                    self.facts,
                    epoch=saved_epoch,
                    step=position.step,
                )
        self.saved_at["lora"] = (position.step, path)
        return path

    def _save_state(self, stem: str, position: Position) -> Path:
        folder = self.output_dir / state_name(stem)
        record = RunRecord(
            position=position,
            seed=self.facts.seed,
            started_at=self.facts.started_at,
            num_processes=self.accelerator.num_processes,
            dataset_fingerprint=self.fingerprint,
            family=self.facts.family,
        )
        with self._writing(folder):
            save_training_state(
                folder, self.accelerator, self.network, self.parts, record, effective_config_toml(self.config)
            )
        self.last_state = folder
        self.saved_at["state"] = (position.step, folder)
        return folder

    def _remove_lora(self, number: int | None, name_of: Callable[[str, int], str]) -> None:
        if number is None or not self.writes:
            return
        old = self.output_dir / f"{name_of(self.stem, number)}.{self.config.save_model_as}"
        if old.exists():
            old.unlink()
            self.echo(f"removed old LoRA file {old.name}")

    def _remove_state(self, number: int | None, name_of: Callable[[str, int], str]) -> None:
        if number is None or not self.writes:
            return
        old = self.output_dir / state_name(name_of(self.stem, number))
        if old.exists():
            remove_state_folder(old)
            self.echo(f"removed old state {old.name}")

    def _write_config(self, status: str) -> None:
        if self.writes:
            with self._writing(self.config_file):
                write_text_atomic(
                    self.config_file, run_status_line(status) + effective_config_toml(self.config)
                )

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            resume = (
                f"resume with: {self.resume_command(self.last_state)}" if self.last_state else "run it again"
            )
            raise UserError(
                f"could not write {path}: {write_problem(error)}. The files saved before are intact; then {resume}"
            ) from None
