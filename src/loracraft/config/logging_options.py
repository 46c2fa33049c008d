"""Run settings: where the training's numbers and pictures are logged (TensorBoard, wandb).

kohya's names and defaults (library/train_util.py: add_training_arguments, prepare_accelerator,
init_trackers); `training/trackers.py` opens the trackers they name. All of them are in the OUTPUT group,
so they may change between a run and its --resume: they change nothing the run computes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from loracraft.config.fields import OUTPUT, flag, secret_names
from loracraft.config.rules import RuleViolation
from loracraft.config.values import OptionalPath

# kohya's default project name of a LoRA run's trackers (train_network.py's init_trackers call).
DEFAULT_TRACKER_NAME = "network_train"


class LoggingOptions(BaseModel):
    """The trackers a run logs to, their names and their settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    logging_dir: OptionalPath = flag(
        None,
        OUTPUT,
        "Folder for the training logs: TensorBoard's go to logging_dir/{log_prefix}{YYYYmmddHHMMSS} (one folder "
        "a run), and wandb's files there too with --log_with wandb.",
    )
    log_with: Literal["tensorboard", "wandb", "all"] | None = flag(
        None,
        OUTPUT,
        "Where the losses, learning rates, speed and sample images are logged: tensorboard, wandb (pip install "
        "wandb) or all (both). Empty: tensorboard when --logging_dir is given, else nowhere.",
    )
    log_prefix: str | None = flag(None, OUTPUT, "Prefix of the run's log folder name under --logging_dir.")
    log_tracker_name: str | None = flag(
        None,
        OUTPUT,
        f"The run's project name in the trackers (wandb's project); empty: {DEFAULT_TRACKER_NAME}.",
    )
    log_tracker_config: OptionalPath = flag(
        None,
        OUTPUT,
        "A TOML file of the trackers' own settings, one table each: [wandb] for wandb.init (entity, tags, "
        "notes, ...), [tensorboard] for TensorBoard's SummaryWriter (flush_secs, ...).",
    )
    wandb_api_key: str | None = flag(
        None,
        OUTPUT,
        "Log in to wandb with this key before training (without it, wandb uses your `wandb login`). Put it in "
        "a --config_file rather than on the command line, where it stays in the shell history. It is never "
        "written to a log or a saved config.",
        secret=True,
    )
    wandb_run_name: str | None = flag(
        None,
        OUTPUT,
        "The run's name in wandb; empty: a name wandb makes up (the kohya_ss GUI fills in the output name).",
        gui_default="last",
    )
    progress_file: OptionalPath = flag(
        None,
        OUTPUT,
        "loracraft's own: append the run's progress to this file as JSON lines (its start, every logged number "
        "with its step, sample images, how it ended), for the job queue and the web UI to follow a run. "
        "Sample images are copied into a folder beside it, named after it with -images.",
        invocation_only=True,
    )
    log_config: bool = flag(
        False,
        OUTPUT,
        "Also send the run's settings to the trackers (API keys left out, absolute paths cut to their last "
        "part).",
    )

    @model_validator(mode="after")
    def _tracker_rules(self) -> LoggingOptions:
        # kohya's rule (prepare_accelerator): TensorBoard needs a folder to write to.
        if self.log_with in ("tensorboard", "all") and not self.logging_dir:
            raise RuleViolation(
                f"`log_with` {self.log_with} writes TensorBoard logs under `logging_dir`: add `logging_dir` "
                "FOLDER, or use `log_with` wandb"
            )
        return self

    @property
    def tracker_names(self) -> tuple[str, ...]:
        """The trackers the run logs to, in kohya's reading of --log_with and --logging_dir."""
        if self.log_with is None:
            return ("tensorboard",) if self.logging_dir else ()
        if self.log_with == "all":
            return ("tensorboard", "wandb")
        return (self.log_with,)


# Settings whose values must never be written anywhere: not in the logs, not in the trackers' config.
SECRET_SETTINGS = secret_names(LoggingOptions)
