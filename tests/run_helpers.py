"""Setting up and running a training in pieces, for tests that look inside a run (its prepared parts,
its first loss, its steps) instead of only at the file it writes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from loracraft.config.load import build_config
from loracraft.config.schema import TrainConfig
from loracraft.training.loop import LoopHooks, run_epochs
from loracraft.training.progress import TrainingLog
from loracraft.training.step import diffusion_loss
from loracraft.training.trainer import setup_training, start_run


def set_up(config: TrainConfig, adjust_bundle: Callable | None = None):
    """(start, setup, printed lines) of a run, with `adjust_bundle(bundle)` applied to the loaded models
    before the training parts are built."""
    lines: list[str] = []
    start = start_run(config, lines.append)
    if adjust_bundle is not None:
        adjust_bundle(start.bundle)
    setup = setup_training(config, start.plan, start.bundle, start.accelerator, start.seed, lines.append)
    return start, setup, lines


def train_steps(start, setup, config: TrainConfig):
    """Run the planned steps quietly (no log files, no epoch files); returns the loop's result."""
    log = TrainingLog(start.plan.steps.max_train_steps, show_bar=False)
    loss_of = partial(diffusion_loss, setup.step_models, device=start.accelerator.device)
    return run_epochs(
        start.accelerator, setup.parts, loss_of, start.plan.steps, config.max_grad_norm, log, LoopHooks()
    )


def train_argv(
    model_file: Path, train_dir: Path, output_dir: Path, *extra: str, name: str = "toy"
) -> list[str]:
    """`loracraft train` on a kohya folder tree's images with .txt captions, writing `NAME.safetensors`
    to `output_dir`; `extra` adds (or, later on the line, overrides) flags."""
    return [
        "train",
        "--pretrained_model_name_or_path",
        str(model_file),
        "--train_data_dir",
        str(train_dir),
        "--output_dir",
        str(output_dir),
        "--output_name",
        name,
        "--caption_extension",
        ".txt",
        *extra,
    ]


def tiny_run_config(model_file: Path, train_dir: Path, output_dir: Path, **values) -> TrainConfig:
    """A tiny run's config: `NAME` toy at 64x64 from `train_dir`'s .txt captions, in float32, seed 0,
    loading in this process; `values` add (or override) settings."""
    return build_config(
        {},
        {
            "pretrained_model_name_or_path": str(model_file),
            "train_data_dir": str(train_dir),
            "output_dir": str(output_dir),
            "output_name": "toy",
            "caption_extension": ".txt",
            "resolution": (64, 64),
            "mixed_precision": "no",
            "seed": 0,
            "max_data_loader_n_workers": 0,
            **values,
        },
    )
