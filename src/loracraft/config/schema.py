"""TrainConfig: the one typed description of a training run.

Field names are kohya sd-scripts' flag names, so `--network_dim 32` on the command line, `network_dim = 32`
in a kohya TOML and the web UI's form all land here. Each setting is declared once (`fields.flag`): its
description feeds `--help`, the UI tooltip and the docs; its `ss_key` the LoRA file's metadata.

A run's settings come in three scopes, each declared in its own class: `SubsetOptions` (captions and
augmentation, per image folder), `DatasetOptions` (resolution, batch size, buckets, per dataset) and the
run-only settings below. TrainConfig is all three: as flags, the subset and dataset options apply to every
folder; a dataset TOML may set them per dataset and per folder.
"""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, ConfigDict, field_validator, model_validator

from loracraft.config.dataset_options import DatasetOptions
from loracraft.config.fields import (
    CACHING,
    CAPTIONS,
    DATASET,
    MODEL,
    NETWORK,
    OPTIMIZER,
    OUTPUT,
    TRAINING,
    flag,
)
from loracraft.config.rules import RuleViolation, run_conflict_with_subset
from loracraft.config.subset_options import SubsetOptions
from loracraft.config.values import parse_warmup

LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
# kohya accepts these optimizer names; only AdamW is built so far, the rest get a clear "not yet".
# fmt: off
KNOWN_OPTIMIZERS = (
    "AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
    "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdaGrad", "DAdaptAdam",
    "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "AdaFactor",
    "RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree",
)
# fmt: on
SUPPORTED_OPTIMIZERS = ("AdamW",)


def _empty_is_none(value: Any) -> Any:
    # kohya_ss GUI and TOML files write "" for "not set".
    return None if value == "" else value


OptionalPath = Annotated[str | None, BeforeValidator(_empty_is_none)]


class TrainConfig(SubsetOptions, DatasetOptions):
    """Every setting of one LoRA training run, in kohya's names and units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- Model
    pretrained_model_name_or_path: OptionalPath = flag(
        None,
        MODEL,
        "Base model: a single-file checkpoint (.safetensors, .ckpt, .pt) in the original SD layout, or a "
        "diffusers folder. Required.",
        gui_default="runwayml/stable-diffusion-v1-5",
    )
    vae: OptionalPath = flag(
        None, MODEL, "Replacement VAE: a single file or a diffusers VAE folder. Default: the model's own VAE."
    )
    tokenizer_path: OptionalPath = flag(
        None,
        MODEL,
        "Folder with the CLIP tokenizer files (vocab.json, merges.txt). Needed offline when the model is a "
        "single file with no tokenizer beside it (loracraft's own option).",
    )
    sdpa: bool = flag(
        True,
        MODEL,
        "Use PyTorch scaled-dot-product attention. On by default (kohya needs the flag; diffusers already "
        "uses SDPA), kept so kohya command lines work.",
    )

    # --- Dataset
    train_data_dir: OptionalPath = flag(
        None,
        DATASET,
        "Folder of kohya concept folders named N_concept (N = repeats), each holding images and captions.",
    )
    reg_data_dir: OptionalPath = flag(
        None,
        DATASET,
        "Folder of regularization concept folders (N_class). Balanced against the training images as kohya "
        "does, so each epoch holds about as many reg samples as training samples (steps roughly double).",
    )
    dataset_config: OptionalPath = flag(
        None,
        DATASET,
        "kohya dataset TOML ([general], [[datasets]], [[datasets.subsets]]). Its keys override these flags "
        "(subset > dataset > general > flags); train_data_dir and reg_data_dir are then ignored.",
    )
    prior_loss_weight: float = flag(
        1.0, DATASET, "Loss weight of regularization images.", ss_key="ss_prior_loss_weight", ge=0
    )

    # --- Captions and text encoder
    clip_skip: int | None = flag(
        None,
        CAPTIONS,
        "Use the output of the N-th text-encoder layer from the end (2 for NovelAI-based anime models); "
        "1 or empty is the last layer.",
        ss_key="ss_clip_skip",
        gui_default=1,
        ge=1,
        le=12,
    )
    max_token_length: Literal[75, 150, 225] | None = flag(
        None,
        CAPTIONS,
        "Caption length in tokens: 75, 150 or 225 (long captions are encoded in 75-token chunks); "
        "empty = 75.",
        ss_key="ss_max_token_length",
        gui_default=75,
    )
    weighted_captions: bool = flag(
        False, CAPTIONS, "Read A1111 emphasis in captions: (word:1.3), (word) = x1.1, [word] = /1.1."
    )

    # --- Caching and data loading
    cache_latents: bool = flag(
        False,
        CACHING,
        "Encode every image with the VAE once before training and keep the latents in memory (much "
        "faster steps; needs no color_aug, random_crop or face_crop_aug_range).",
        ss_key="ss_cache_latents",
        gui_default=True,
    )
    cache_latents_to_disk: bool = flag(
        False,
        CACHING,
        "Keep latent caches as .npz files beside the images, reused by later runs; recomputed when the image, "
        "its bucket or the VAE changed. Implies cache_latents.",
    )
    vae_batch_size: int = flag(1, CACHING, "Images per VAE call when caching latents.", ge=1)
    latent_sampling: Literal["sample", "mean"] = flag(
        "sample",
        CACHING,
        "How an image's latent is read from the VAE: 'sample' draws from the VAE's posterior, as kohya "
        "does; 'mean' takes the posterior mean. Real SD VAEs have a tiny posterior spread, so the choice "
        "matters little there; a VAE with a wide spread (loracraft's tiny model) makes the draw's noise "
        "part of what the LoRA learns, and 'mean' avoids that (loracraft's own option).",
    )
    max_data_loader_n_workers: int = flag(
        8,
        CACHING,
        "Data-loader worker processes, at most one per CPU core. 0 loads in the training process, which is "
        "fastest when latents are cached (and the kohya_ss GUI's choice).",
        ge=0,
        gui_default=0,
    )
    persistent_data_loader_workers: bool = flag(
        False, CACHING, "Keep data-loader workers alive between epochs (no pause at each epoch start)."
    )
    cache_text_encoder_outputs: bool = flag(
        False,
        CACHING,
        "Encode every caption once before training. Needs static captions (no shuffle, dropout or wildcards) "
        "and a frozen text encoder (--network_train_unet_only). kohya: SDXL only; loracraft caches SD1's too.",
    )
    cache_text_encoder_outputs_to_disk: bool = flag(
        False,
        CACHING,
        "Keep text-encoder output caches as files beside the images. Implies cache_text_encoder_outputs. "
        "kohya: SDXL only.",
    )
    cache_only: bool = flag(
        False,
        CACHING,
        "Write the latent disk caches (and text-encoder caches with cache_text_encoder_outputs) beside the "
        "images, then exit without training: prepare on one machine, train on another (loracraft's own "
        "option; kohya has it in its separate caching scripts).",
    )
    skip_bad_images: bool = flag(
        False,
        CACHING,
        "Skip unreadable images with a warning naming each. Default: stop before training and list them "
        "(loracraft's own option).",
    )

    # --- Network
    network_dim: int | None = flag(
        None,
        NETWORK,
        "LoRA rank: the size of the added low-rank matrices; empty = 4 (kohya's networks.lora default).",
        ss_key="ss_network_dim",
        ge=1,
        gui_default=8,
    )
    network_alpha: float = flag(
        1.0,
        NETWORK,
        "LoRA alpha. The update is scaled by alpha/rank, so alpha 1 with rank 32 trains 1/32 as strongly as "
        "alpha 32. 0 means alpha = rank.",
        ss_key="ss_network_alpha",
        ge=0,
    )
    network_train_unet_only: bool = flag(False, NETWORK, "Train LoRA on the U-Net only (no text encoder).")
    network_train_text_encoder_only: bool = flag(False, NETWORK, "Train LoRA on the text encoder only.")

    # --- Optimizer and learning rate
    optimizer_type: str = flag(
        "AdamW",
        OPTIMIZER,
        "Optimizer. AdamW for now; kohya's other names give a clear 'not yet'.",
        gui_default="AdamW8bit",
    )
    optimizer_args: list[str] = flag(
        [], OPTIMIZER, "Extra optimizer arguments as key=value, e.g. weight_decay=0.01 betas=0.9,0.99."
    )
    learning_rate: float = flag(
        2e-6,
        OPTIMIZER,
        "Learning rate for every part without its own (--unet_lr, --text_encoder_lr). The default is "
        "kohya's, meant for full fine-tuning; LoRA usually trains at 1e-4.",
        ss_key="ss_learning_rate",
        ge=0,
        gui_default=1e-4,
    )
    unet_lr: float | None = flag(
        None,
        OPTIMIZER,
        "U-Net LoRA learning rate; empty = learning_rate.",
        ss_key="ss_unet_lr",
        ge=0,
        gui_default=1e-4,
    )
    text_encoder_lr: float | None = flag(
        None,
        OPTIMIZER,
        "Text-encoder LoRA learning rate; empty = learning_rate; 0 = text encoder not trained.",
        ss_key="ss_text_encoder_lr",
        ge=0,
        gui_default=1e-4,
    )
    lr_scheduler: Literal[LR_SCHEDULERS] = flag(
        "constant", OPTIMIZER, "Learning-rate schedule.", ss_key="ss_lr_scheduler", gui_default="cosine"
    )
    lr_warmup_steps: Annotated[int | float, BeforeValidator(parse_warmup)] = flag(
        0,
        OPTIMIZER,
        "Warm-up: a whole number of optimizer steps, or a ratio of all steps below 1 (0.1 or '10%').",
        ss_key="ss_lr_warmup_steps",
        gui_default=0.1,
    )
    lr_scheduler_num_cycles: int = flag(1, OPTIMIZER, "Restarts of cosine_with_restarts.", ge=1)
    lr_scheduler_power: float = flag(1.0, OPTIMIZER, "Power of the polynomial schedule.", gt=0)
    max_grad_norm: float = flag(
        1.0,
        OPTIMIZER,
        "Clip the gradient norm of the LoRA weights; 0 disables.",
        ss_key="ss_max_grad_norm",
        ge=0,
    )

    # --- Training length and precision
    max_train_steps: int = flag(
        1600, TRAINING, "Total optimizer steps (ignored when max_train_epochs is set).", ge=1
    )
    max_train_epochs: int | None = flag(None, TRAINING, "Total epochs; overrides max_train_steps.", ge=1)
    gradient_accumulation_steps: int = flag(
        1,
        TRAINING,
        "Batches whose gradients are summed before one optimizer step.",
        ss_key="ss_gradient_accumulation_steps",
        ge=1,
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = flag(
        "no",
        TRAINING,
        "Compute precision of the frozen model: fp16 (needs a CUDA GPU; loss scaling), bf16 (recent GPUs and "
        "CPUs) or no (fp32).",
        ss_key="ss_mixed_precision",
        gui_default="fp16",
    )
    gradient_checkpointing: bool = flag(
        False,
        TRAINING,
        "Recompute activations in the backward pass: less memory, about 20-30% slower.",
        ss_key="ss_gradient_checkpointing",
    )
    seed: int | None = flag(
        None,
        TRAINING,
        "Random seed; the same seed, data and flags on the CPU give a bit-identical LoRA. Empty: random.",
    )

    # --- Output and logging
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
    training_comment: str | None = flag(
        None, OUTPUT, "Free text stored in the file's ss_training_comment.", ss_key="ss_training_comment"
    )
    no_metadata: bool = flag(False, OUTPUT, "Write only the minimum metadata (no dataset, tags or settings).")
    logging_dir: OptionalPath = flag(
        None, OUTPUT, "Write TensorBoard logs under logging_dir/{log_prefix}{timestamp}."
    )
    log_prefix: str | None = flag(None, OUTPUT, "Prefix of the TensorBoard run folder name.")

    @field_validator("optimizer_type")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        name = value or "AdamW"
        by_lower = {n.lower(): n for n in KNOWN_OPTIMIZERS}
        canonical = by_lower.get(name.lower())
        if canonical is None:
            raise ValueError(
                f"unknown optimizer {value!r}; loracraft builds {', '.join(SUPPORTED_OPTIMIZERS)}"
            )
        if canonical not in SUPPORTED_OPTIMIZERS:
            raise ValueError(f"{canonical} is not built into loracraft yet; use AdamW for now")
        return canonical

    @field_validator("optimizer_args")
    @classmethod
    def _optimizer_args_parse(cls, value: list[str]) -> list[str]:
        parse_optimizer_args(value)
        return value

    @model_validator(mode="after")
    def _run_rules(self) -> TrainConfig:
        if self.network_train_unet_only and self.network_train_text_encoder_only:
            raise RuleViolation(
                "`network_train_unet_only` and `network_train_text_encoder_only` exclude each other; pick one"
            )
        # As flags, the subset options apply to every folder: the same rules as for a TOML subset.
        conflict = run_conflict_with_subset(self, self)
        if conflict is not None:
            raise conflict
        if self.cache_text_encoder_outputs and self.train_text_encoder:
            raise RuleViolation(
                "`cache_text_encoder_outputs` needs a frozen text encoder: add `network_train_unet_only`"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _disk_cache_implies_cache(cls, data: Any) -> Any:
        # kohya: --cache_latents_to_disk implies --cache_latents.
        if isinstance(data, dict) and data.get("cache_latents_to_disk") is True:
            data = {**data, "cache_latents": True}
        if isinstance(data, dict) and data.get("cache_text_encoder_outputs_to_disk") is True:
            data = {**data, "cache_text_encoder_outputs": True}
        return data

    # --- derived values the trainer uses
    @property
    def effective_unet_lr(self) -> float:
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr

    @property
    def network_rank(self) -> int:
        """--network_dim, or 4 when it is not given (kohya's networks.lora default)."""
        return self.network_dim or 4

    @property
    def token_length(self) -> int:
        """--max_token_length, or 75 (one CLIP window) when it is not given."""
        return self.max_token_length or 75

    @property
    def data_loader_workers(self) -> int:
        """--max_data_loader_n_workers, at most one per CPU core (as kohya caps it)."""
        return min(self.max_data_loader_n_workers, os.cpu_count() or 1)

    @property
    def train_unet(self) -> bool:
        return not self.network_train_text_encoder_only

    @property
    def train_text_encoder(self) -> bool:
        return not self.network_train_unet_only and self.effective_text_encoder_lr > 0

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        """`optimizer_args` as the optimizer's keyword arguments."""
        return parse_optimizer_args(self.optimizer_args)

    def warmup_steps(self, total_steps: int) -> int:
        """lr_warmup_steps as optimizer steps: a ratio below 1 is a share of the total."""
        if isinstance(self.lr_warmup_steps, float) and self.lr_warmup_steps < 1:
            return int(self.lr_warmup_steps * total_steps)
        return int(self.lr_warmup_steps)

    @property
    def output_stem(self) -> str:
        """The LoRA file's name stem: --output_name, or kohya's "last" when it is not given."""
        return self.output_name or "last"

    def output_path(self, suffix: str = "") -> Path:
        return Path(self.output_dir or ".") / f"{self.output_stem}{suffix}.{self.save_model_as}"


def parse_optimizer_args(items: list[str]) -> dict[str, Any]:
    """kohya's `key=value` optimizer arguments; values are Python literals, `a,b` is a tuple."""
    parsed: dict[str, Any] = {}
    allowed = set(inspect.signature(torch.optim.AdamW).parameters) - {"params", "lr"}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"optimizer argument {item!r} is not key=value")
        if key not in allowed:
            raise ValueError(f"AdamW has no argument {key!r}; it takes {', '.join(sorted(allowed))}")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        parsed[key] = tuple(value) if isinstance(value, list) else value
    return parsed
