"""Saving the LoRA: kohya keys, ss_* metadata, the chosen format and precision, atomically."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from loracraft.config.schema import TrainConfig
from loracraft.data.metadata import (
    bucket_info,
    dataset_dirs,
    datasets_metadata,
    merged_dataset_dirs,
    tag_frequency,
)
from loracraft.data.plan import DatasetPlan
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.lora_network import LoRANetwork
from loracraft.networks.metadata import ModelSource, RunSummary, kohya_metadata
from loracraft.networks.network_spec import recorded_network_args
from loracraft.training.optimizer import describe_optimizer

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def now() -> float:
    """Wall-clock time, or SOURCE_DATE_EPOCH when set, so a seeded run can write byte-identical files."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH")
    return float(fixed) if fixed else time.time()


@dataclass(frozen=True)
class RunFacts:
    """What the files record about the run that is not in the config or the plan.

    `sd_model` and `vae` are made once per run: each hashes its file (gigabytes for a real checkpoint)
    at the first save that needs it and keeps the result for every later save.
    """

    seed: int
    started_at: float
    family: str
    """The base model's family ("sd1", "sd2", "sdxl", ModelBundle.family): kohya's SD1/SD2 and SDXL
    trainers write different ss_v2, ss_base_model_version and modelspec values."""
    sd_model: ModelSource
    vae: ModelSource | None

    @classmethod
    def for_run(cls, config: TrainConfig, seed: int, started_at: float, family: str) -> RunFacts:
        vae = ModelSource(config.vae) if config.vae else None
        return cls(seed, started_at, family, ModelSource(config.pretrained_model_name_or_path), vae)

    @property
    def session_id(self) -> int:
        # kohya draws a random id; deriving it from the seed keeps seeded runs reproducible.
        return random.Random(self.seed).randrange(2**31)


def run_summary(config: TrainConfig, plan: DatasetPlan, facts: RunFacts, epoch: int, step: int) -> RunSummary:
    """What the file records beyond the settings, at a save after `step` optimizer steps of `epoch`."""
    return RunSummary(
        session_id=facts.session_id,
        training_started_at=facts.started_at,
        seed=facts.seed,
        num_train_images=plan.num_train_samples,
        num_reg_images=plan.num_reg_images,
        num_validation_images=len(plan.validation.images) if plan.validation is not None else 0,
        num_batches_per_epoch=plan.batches_per_epoch,
        num_epochs=plan.steps.num_epochs,
        max_train_steps=plan.steps.max_train_steps,
        total_batch_size=config.train_batch_size * plan.num_processes * config.gradient_accumulation_steps,
        optimizer=describe_optimizer(config),
        network_args=recorded_network_args(config),
        family=facts.family,
        dataset_dirs=merged_dataset_dirs(plan) if config.dataset_config else dataset_dirs(plan, is_reg=False),
        datasets=datasets_metadata(plan) if config.dataset_config else None,
        reg_dataset_dirs=dataset_dirs(plan, is_reg=True),
        tag_frequency=tag_frequency(plan),
        bucket_info=bucket_info(plan),
        sd_model=facts.sd_model,
        vae=facts.vae,
        training_finished_at=now(),
        steps=step,
        epoch=epoch,
    )


def save_lora(
    network: LoRANetwork,
    path: Path,
    config: TrainConfig,
    plan: DatasetPlan,
    facts: RunFacts,
    *,
    epoch: int,
    step: int,
) -> Path:
    """Write the network's weights as a kohya LoRA file at `path`, with the run's metadata."""
    summary = run_summary(config, plan, facts, epoch, step)
    metadata = kohya_metadata(config, summary)
    save_lora_file(network.kohya_state_dict(), path, metadata, SAVE_DTYPES.get(config.save_precision))
    return path
