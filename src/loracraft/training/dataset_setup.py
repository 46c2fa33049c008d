"""From TrainConfig to the dataset plan: scan the kohya folders, balance, bucket, count steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loracraft.config.schema import TrainConfig
from loracraft.data.plan import DatasetPlan, build_epoch_plan
from loracraft.data.scan import scan_dreambooth_dir


def plan_dataset(
    config: TrainConfig, seed: int, num_processes: int, echo: Callable[[str], None]
) -> DatasetPlan:
    subsets, warnings = scan_dreambooth_dir(
        Path(config.train_data_dir), is_reg=False, caption_extension=config.caption_extension
    )
    if config.reg_data_dir:
        reg_subsets, reg_warnings = scan_dreambooth_dir(
            Path(config.reg_data_dir), is_reg=True, caption_extension=config.caption_extension
        )
        subsets += reg_subsets
        warnings += reg_warnings
    plan = build_epoch_plan(
        subsets,
        resolution=config.resolution,
        batch_size=config.train_batch_size,
        seed=seed,
        max_train_epochs=config.max_train_epochs,
        max_train_steps=config.max_train_steps,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_processes=num_processes,
        enable_bucket=config.enable_bucket,
        min_bucket_reso=config.min_bucket_reso,
        max_bucket_reso=config.max_bucket_reso,
        bucket_reso_steps=config.bucket_reso_steps,
        bucket_no_upscale=config.bucket_no_upscale,
    )
    for warning in [*warnings, *plan.warnings]:
        echo(f"warning: {warning}")
    return plan
