"""Run settings: what the run writes and where."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from loracraft.config.fields import OUTPUT, flag
from loracraft.config.values import OptionalPath


class OutputOptions(BaseModel):
    """The LoRA files, their metadata and the resumable states."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_dir: OptionalPath = flag(
        None, OUTPUT, "Folder for the LoRA files, the state and the effective config."
    )
    output_name: str | None = flag(
        None,
        OUTPUT,
        "File name stem of the LoRA: NAME.safetensors, NAME-000001.safetensors; empty = last.",
        ss_key="ss_output_name",
        gui_default="last",
    )
    save_model_as: Literal["safetensors", "ckpt", "pt"] = flag(
        "safetensors", OUTPUT, "File format. safetensors is the safe, standard choice."
    )
    save_precision: Literal["float", "fp16", "bf16"] | None = flag(
        None,
        OUTPUT,
        "Precision of the saved weights; empty = the precision they trained in (float32).",
        gui_default="fp16",
    )
    save_every_n_epochs: int | None = flag(
        None, OUTPUT, "Also save NAME-00000E.safetensors every N epochs.", ge=1, gui_default=1
    )
    save_every_n_steps: int | None = flag(
        None, OUTPUT, "Also save NAME-step0000000S.safetensors every N optimizer steps.", ge=1
    )
    save_n_epoch_ratio: int | None = flag(
        None,
        OUTPUT,
        "Save about N epoch files over the run: sets save_every_n_epochs to epochs / N (at least 1).",
        ge=1,
    )
    save_last_n_epochs: int | None = flag(
        None,
        OUTPUT,
        "Keep only the newest N epoch files (and states); an older one is removed once the newer is written.",
        ge=1,
    )
    save_last_n_steps: int | None = flag(
        None,
        OUTPUT,
        "Keep step files (and states) of the last N steps only; older ones are removed once a newer is written.",
        ge=1,
    )
    save_state: bool = flag(
        False,
        OUTPUT,
        "With every LoRA file saved during training, also save a resumable state folder (NAME-00000E-state, "
        "NAME-step0000000S-state) and NAME-state at the end: adapter, optimizer, schedule, every RNG and the "
        "position in the data, for --resume.",
    )
    save_state_on_train_end: bool = flag(
        False, OUTPUT, "Save the resumable state NAME-state at the end of training only."
    )
    save_last_n_epochs_state: int | None = flag(
        None, OUTPUT, "Keep the newest N epoch states (overrides save_last_n_epochs for states).", ge=1
    )
    save_last_n_steps_state: int | None = flag(
        None, OUTPUT, "Keep the states of the last N steps (overrides save_last_n_steps for states).", ge=1
    )
    resume: str | None = flag(
        None,
        OUTPUT,
        "Continue a run from a state folder saved by --save_state: the same epoch, step and place in the "
        "data, so the result equals an uninterrupted run. 'latest' finds the newest valid state of "
        "--output_name in --output_dir. Not for new settings: --network_weights starts from a LoRA file.",
    )
    training_comment: str | None = flag(
        None, OUTPUT, "Free text stored in the file's ss_training_comment.", ss_key="ss_training_comment"
    )
    no_metadata: bool = flag(False, OUTPUT, "Write only the minimum metadata (no dataset, tags or settings).")

    @property
    def output_stem(self) -> str:
        """The LoRA file's name stem: --output_name, or kohya's "last" when it is not given."""
        return self.output_name or "last"

    def output_path(self, suffix: str = "") -> Path:
        return Path(self.output_dir or ".") / f"{self.output_stem}{suffix}.{self.save_model_as}"
