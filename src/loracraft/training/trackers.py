"""The trackers a run logs its numbers and pictures to: TensorBoard and wandb, as --log_with says.

Every tracker takes the same four calls (`Tracker`), so the progress log, the validation and the sampler
log through one list without knowing which trackers it holds. Only the main process opens trackers.

Step numbers are optimizer steps, except for per-epoch values: a scalar whose name ends in
`epoch_<something>` (loss/epoch_average, loss/validation/epoch_average) is logged against the epoch
number, as kohya does.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

import numpy as np
from PIL import Image

from loracraft.atomic import atomic_path
from loracraft.config.files import read_table_file
from loracraft.config.logging_options import DEFAULT_TRACKER_NAME, SECRET_SETTINGS
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError

WANDB_MISSING = "needs the wandb package, which is not installed: pip install wandb"


class Tracker(Protocol):
    def log_scalars(self, values: Mapping[str, float], step: int) -> None: ...

    def log_images(
        self, images: Mapping[str, Image.Image], step: int, captions: Mapping[str, str]
    ) -> None: ...

    def log_config(self, values: Mapping[str, object]) -> None: ...

    def close(self) -> None: ...


def is_epoch_value(name: str) -> bool:
    """True for a per-epoch scalar, whose step is the epoch number."""
    return name.rsplit("/", 1)[-1].startswith("epoch_")


class TensorBoardTracker:
    """One TensorBoard run folder; `init_kwargs` are SummaryWriter's (the [tensorboard] table)."""

    def __init__(self, folder: Path, init_kwargs: Mapping[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder), **init_kwargs)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def log_images(self, images: Mapping[str, Image.Image], step: int, captions: Mapping[str, str]) -> None:
        for name, image in images.items():
            self.writer.add_image(name, np.asarray(image.convert("RGB")), step, dataformats="HWC")
            if name in captions:
                self.writer.add_text(f"{name}/caption", captions[name], step)

    def log_config(self, values: Mapping[str, object]) -> None:
        # As text: TensorBoard's hparams view would open a second run folder and refuses empty values.
        listing = "\n".join(f"    {name} = {value}" for name, value in values.items())
        self.writer.add_text("config", listing)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One wandb run. Scalars go against the hidden metrics `global_step` or `epoch` (kohya's), never
    wandb's own step, which would refuse an epoch number after a step number."""

    def __init__(self, wandb: Any, init_kwargs: Mapping[str, Any], api_key: str | None, source: str):
        # wandb's own errors (a refused key, no connection, a setting it does not take) are many types.
        try:
            if api_key:
                wandb.login(key=api_key)
            self.run = wandb.init(**init_kwargs)
        except Exception as error:
            raise UserError(f"{source}: wandb could not start the run: {error}") from None
        self.wandb = wandb
        self.run.define_metric("global_step", hidden=True)
        self.run.define_metric("epoch", hidden=True)
        self.defined: set[str] = set()

    def _define(self, names: list[str], axis: str) -> None:
        for name in names:
            if name not in self.defined:
                self.run.define_metric(name, step_metric=axis)
                self.defined.add(name)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for axis, chosen in (("epoch", True), ("global_step", False)):
            names = [name for name in values if is_epoch_value(name) == chosen]
            if names:
                self._define(names, axis)
                self.run.log({**{name: values[name] for name in names}, axis: step})

    def log_images(self, images: Mapping[str, Image.Image], step: int, captions: Mapping[str, str]) -> None:
        self._define(list(images), "global_step")
        pictures = {
            name: self.wandb.Image(image, caption=captions.get(name)) for name, image in images.items()
        }
        self.run.log({**pictures, "global_step": step})

    def log_config(self, values: Mapping[str, object]) -> None:
        self.run.config.update(dict(values), allow_val_change=True)

    def close(self) -> None:
        self.run.finish()


class ProgressFileTracker:
    """--progress_file: the run as JSON lines, one event each, for the job queue and the web UI to read
    while it trains (`jobs/progress.py`). Each line is appended in one write as it happens, so a killed
    run's file ends at its last event (at worst with half a line, which the reader passes over).

    Events, each with its `time`: `start` (pid, output folder and name, the final LoRA file, resumed or
    not, the TensorBoard folder), `plan` (total steps, epochs, steps per epoch, the step it starts at), `scalars` (a step and the
    values TrainingLog sends), `images` (a step and each sample's file and prompt; the files are copies
    in NAME-images/ beside the progress file), `end` (finished, stopped or failed, and why)."""

    def __init__(self, path: Path, config: TrainConfig):
        self.path = path
        self.images_folder = path.with_name(f"{path.stem}-images")
        self._write(
            "start",
            pid=os.getpid(),
            output_dir=str(Path(config.output_dir or ".").resolve()),
            output_name=config.output_stem,
            lora_file=str(config.output_path().resolve()),
            resumed=bool(config.resume),
            logging_dir=str(Path(config.logging_dir).resolve()) if config.logging_dir else None,
        )

    def begin(self, total_steps: int, epochs: int, steps_per_epoch: int, initial_step: int) -> None:
        self._write(
            "plan",
            total_steps=total_steps,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            initial_step=initial_step,
        )

    def end(self, outcome: str, detail: str = "") -> None:
        self._write("end", outcome=outcome, detail=detail)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        self._write("scalars", step=step, values={name: float(value) for name, value in values.items()})

    def log_images(self, images: Mapping[str, Image.Image], step: int, captions: Mapping[str, str]) -> None:
        written = []
        for name, image in images.items():
            target = self.images_folder / f"step{step:08d}-{name}.png"
            with atomic_path(target) as temporary:
                image.save(temporary, format="PNG")
            written.append({"name": name, "path": str(target), "caption": captions.get(name, "")})
        self._write("images", step=step, images=written)

    def log_config(self, values: Mapping[str, object]) -> None:
        """The settings are in the job's config file already."""

    def close(self) -> None:
        """Nothing stays open: each event opens the file."""

    def _write(self, event: str, **fields: object) -> None:
        line = json.dumps({"event": event, "time": time.time(), **fields}, allow_nan=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line + "\n")


def import_wandb(flag: str):
    """The wandb module, or one line naming `flag` and the install command."""
    try:
        import wandb
    except ImportError:
        raise UserError(f"{flag} {WANDB_MISSING}") from None
    return wandb


def tracker_settings(path: str | None) -> dict[str, dict[str, Any]]:
    """--log_tracker_config's tables, {tracker name: its init arguments} (kohya's format)."""
    if not path:
        return {}
    tables = read_table_file(path, "--log_tracker_config", "[wandb] and [tensorboard] tables")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise UserError(
                f"--log_tracker_config {path}: {name} = ... is not a table; write the settings under "
                "[wandb] or [tensorboard]"
            )
    return tables


def check_trackers(config: TrainConfig) -> None:
    """What opening the trackers would refuse, checked before the run loads anything."""
    if "wandb" in config.tracker_names:
        import_wandb(f"--log_with {config.log_with}")
    tracker_settings(config.log_tracker_config)


def api_key_warning(command_line_values: Mapping[str, object]) -> str | None:
    """kohya's warning (verify_command_line_training_args) for a key given as a flag."""
    if command_line_values.get("wandb_api_key") is None:
        return None
    return (
        "warning: --wandb_api_key on the command line stays in your shell history (and wandb records the "
        "command line with the run): put wandb_api_key in a --config_file, or log in once with `wandb login`"
    )


def run_folder_name(config: TrainConfig, started: float | None = None) -> str:
    """kohya's log folder name: {log_prefix}{YYYYmmddHHMMSS}, in local time."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(started))
    return f"{config.log_prefix or ''}{stamp}"


def open_trackers(config: TrainConfig, run_name: str | None = None) -> list[Tracker]:
    """The trackers --log_with names and the --progress_file, opened (on the main process only), with the
    run's settings when --log_config asks. `run_name` is the log folder's name under --logging_dir
    (`run_folder_name`)."""
    names = config.tracker_names
    trackers: list[Tracker] = []
    if config.progress_file:
        trackers.append(open_progress_file(config))
    if not names:
        return trackers
    settings = tracker_settings(config.log_tracker_config)
    folder = Path(config.logging_dir) / (run_name or run_folder_name(config)) if config.logging_dir else None
    try:
        if "tensorboard" in names:
            trackers.append(open_tensorboard(config, folder, settings.get("tensorboard", {})))
        if "wandb" in names:
            wandb = import_wandb(f"--log_with {config.log_with}")
            kwargs = wandb_init_kwargs(config, folder, settings.get("wandb", {}))
            trackers.append(WandbTracker(wandb, kwargs, config.wandb_api_key, _source(config, "wandb")))
        if config.log_config:
            values = sanitized_config(config)
            for tracker in trackers:
                tracker.log_config(values)
    except BaseException:
        for tracker in trackers:
            tracker.close()
        raise
    return trackers


def _source(config: TrainConfig, tracker: str) -> str:
    """What a tracker's start-up error names: its table in --log_tracker_config, or --log_with."""
    if config.log_tracker_config:
        return f"--log_tracker_config {config.log_tracker_config} [{tracker}]"
    return f"--log_with {config.log_with or tracker}"


def open_progress_file(config: TrainConfig) -> ProgressFileTracker:
    try:
        return ProgressFileTracker(Path(config.progress_file), config)
    except OSError as error:
        raise UserError(f"--progress_file {config.progress_file} cannot be written: {error}") from None


def open_tensorboard(config: TrainConfig, folder: Path, table: Mapping[str, Any]) -> TensorBoardTracker:
    try:
        return TensorBoardTracker(folder, table)
    except TypeError as error:  # a setting SummaryWriter does not take
        raise UserError(f"{_source(config, 'tensorboard')}: {error}") from None
    except OSError as error:
        raise UserError(f"--logging_dir {config.logging_dir} cannot be written: {error}") from None


def wandb_init_kwargs(config: TrainConfig, folder: Path | None, table: Mapping[str, Any]) -> dict[str, Any]:
    """wandb.init's arguments: kohya's project name, the [wandb] table, then the flags (which win)."""
    kwargs: dict[str, Any] = {"project": DEFAULT_TRACKER_NAME, **table}
    if config.log_tracker_name:
        kwargs["project"] = config.log_tracker_name
    if config.wandb_run_name:
        kwargs["name"] = config.wandb_run_name
    if folder is not None:
        # kohya points WANDB_DIR at the run's log folder; an argument does it without changing the environment.
        folder.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("dir", str(folder))
    return kwargs


def sanitized_config(config: TrainConfig) -> dict[str, bool | int | float | str]:
    """The settings --log_config sends (kohya's get_sanitized_config_or_none, which a public wandb page
    may show): secrets left out, absolute paths cut to their last part (no user or folder names), unset
    values left out, pairs and lists as text."""
    values: dict[str, bool | int | float | str] = {}
    for name, value in config.model_dump(exclude_none=True).items():
        if name in SECRET_SETTINGS:
            continue
        if isinstance(value, (list, tuple)):
            values[name] = ",".join(str(_without_parents(item)) for item in value)
        else:
            values[name] = _without_parents(value)
    return values


def _without_parents(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    absolute = PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()
    # PureWindowsPath splits at both separators, so it finds the last part of either kind of path.
    return PureWindowsPath(value).name if absolute or value.startswith("~") else value
