"""Saving the LoRA: kohya keys, ss_* metadata, the chosen format and precision, atomically."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loracraft.data.metadata import (
    bucket_info,
    dataset_dirs,
    datasets_metadata,
    merged_dataset_dirs,
    tag_frequency,
)
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.metadata import LoRARunInfo, ModelSource, kohya_metadata
from loracraft.training.optimizer import describe_optimizer

if TYPE_CHECKING:
    from loracraft.training.trainer import TrainingRun

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def now() -> float:
    """Wall-clock time, or SOURCE_DATE_EPOCH when set, so a seeded run can write byte-identical files."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH")
    return float(fixed) if fixed else time.time()


@dataclass
class RunFacts:
    """Run facts that are not in the config: the seed actually used, the start time, progress."""

    seed: int
    started_at: float
    steps_done: int = 0

    @property
    def session_id(self) -> int:
        # kohya draws a random id; deriving it from the seed keeps seeded runs reproducible.
        return random.Random(self.seed).randrange(2**31)


def run_info(run: TrainingRun, epoch: int, step: int) -> LoRARunInfo:
    config, plan = run.config, run.plan
    return LoRARunInfo(
        session_id=run.facts.session_id,
        training_started_at=run.facts.started_at,
        output_name=config.output_name,
        learning_rate=config.learning_rate,
        text_encoder_lr=config.text_encoder_lr,
        unet_lr=config.unet_lr,
        num_train_images=plan.num_train_samples,
        num_reg_images=plan.num_reg_images,
        num_batches_per_epoch=plan.batches_per_epoch,
        num_epochs=plan.steps.num_epochs,
        max_train_steps=plan.steps.max_train_steps,
        network_dim=config.network_dim,
        network_alpha=config.network_alpha,
        seed=run.facts.seed,
        resolution=config.resolution,
        batch_size_per_device=config.train_batch_size,
        total_batch_size=config.train_batch_size
        * run.accelerator.num_processes
        * config.gradient_accumulation_steps,
        optimizer=describe_optimizer(config),
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_warmup_steps=config.warmup_steps(plan.steps.max_train_steps),
        lr_scheduler=config.lr_scheduler,
        mixed_precision=config.mixed_precision,
        clip_skip=config.clip_skip,
        max_token_length=config.max_token_length,
        cache_latents=config.cache_latents,
        training_comment=config.training_comment,
        max_grad_norm=config.max_grad_norm,
        prior_loss_weight=config.prior_loss_weight,
        color_aug=config.color_aug,
        flip_aug=config.flip_aug,
        random_crop=config.random_crop,
        face_crop_aug_range=config.face_crop_aug_range,
        shuffle_caption=config.shuffle_caption,
        keep_tokens=config.keep_tokens,
        caption_dropout_rate=config.caption_dropout_rate,
        caption_dropout_every_n_epochs=config.caption_dropout_every_n_epochs,
        caption_tag_dropout_rate=config.caption_tag_dropout_rate,
        enable_bucket=config.enable_bucket,
        bucket_no_upscale=config.bucket_no_upscale,
        min_bucket_reso=config.min_bucket_reso,
        max_bucket_reso=config.max_bucket_reso,
        dataset_dirs=merged_dataset_dirs(plan) if config.dataset_config else dataset_dirs(plan, is_reg=False),
        datasets=datasets_metadata(plan) if config.dataset_config else None,
        reg_dataset_dirs=dataset_dirs(plan, is_reg=True),
        tag_frequency=tag_frequency(plan),
        bucket_info=bucket_info(plan),
        sd_model=ModelSource(config.pretrained_model_name_or_path),
        vae=ModelSource(config.vae) if config.vae else None,
        training_finished_at=now(),
        steps=step,
        epoch=epoch,
    )


def save_lora(run: TrainingRun, path: Path, *, epoch: int, step: int) -> Path:
    network = run.accelerator.unwrap_model(run.network)
    metadata = kohya_metadata(run_info(run, epoch, step), no_metadata=run.config.no_metadata)
    save_lora_file(network.kohya_state_dict(), path, metadata, SAVE_DTYPES[run.config.save_precision])
    return path
