"""TrainConfig: the one typed description of a training run.

Field names are kohya sd-scripts' flag names, so `--network_dim 32` on the command line, `network_dim = 32`
in a kohya TOML and the web UI's form all land here. Each field's description is written once and feeds
`--help`, the UI tooltip and the docs. Defaults follow the kohya_ss GUI (the guides in shared/seeds); where
we chose otherwise the reason is written next to the field.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from loracraft.config.values import parse_resolution, parse_warmup

MODEL = "Model"
DATASET = "Dataset"
CAPTIONS = "Captions and text encoder"
BUCKETS = "Aspect-ratio buckets"
CACHING = "Caching and data loading"
NETWORK = "Network"
OPTIMIZER = "Optimizer and learning rate"
TRAINING = "Training length and precision"
OUTPUT = "Output and logging"
AUGMENT = "Augmentation"

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


def _field(default: Any, group: str, doc: str, **kwargs: Any) -> Any:
    return Field(default, description=doc, json_schema_extra={"group": group}, **kwargs)


def _empty_is_none(value: Any) -> Any:
    # kohya_ss GUI and TOML files write "" for "not set".
    return None if value == "" else value


OptionalPath = Annotated[str | None, BeforeValidator(_empty_is_none)]


class TrainConfig(BaseModel):
    """Every setting of one LoRA training run, in kohya's names and units."""

    model_config = ConfigDict(extra="forbid")

    # --- Model
    pretrained_model_name_or_path: OptionalPath = _field(
        None,
        MODEL,
        "Base model: a single-file checkpoint (.safetensors, .ckpt, .pt) in the original SD layout, or a "
        "diffusers folder. Required.",
    )
    vae: OptionalPath = _field(
        None, MODEL, "Replacement VAE: a single file or a diffusers VAE folder. Default: the model's own VAE."
    )
    tokenizer_path: OptionalPath = _field(
        None,
        MODEL,
        "Folder with the CLIP tokenizer files (vocab.json, merges.txt). Needed offline when the model is a "
        "single file with no tokenizer beside it (loracraft's own option).",
    )
    sdpa: bool = _field(
        True,
        MODEL,
        "Use PyTorch scaled-dot-product attention. On by default (kohya needs the flag; diffusers already "
        "uses SDPA), kept so kohya command lines work.",
    )

    # --- Dataset
    train_data_dir: OptionalPath = _field(
        None,
        DATASET,
        "Folder of kohya concept folders named N_concept (N = repeats), each holding images and captions.",
    )
    reg_data_dir: OptionalPath = _field(
        None,
        DATASET,
        "Folder of regularization concept folders (N_class). Balanced against the training images as kohya "
        "does, so each epoch holds about as many reg samples as training samples (steps roughly double).",
    )
    prior_loss_weight: float = _field(1.0, DATASET, "Loss weight of regularization images.", ge=0)
    train_batch_size: int = _field(
        1, DATASET, "Images per batch. A batch holds images of one bucket only, so it can be smaller.", ge=1
    )
    resolution: Annotated[tuple[int, int], BeforeValidator(parse_resolution)] = _field(
        (512, 512),
        DATASET,
        "Training resolution 'SIZE' or 'WIDTH,HEIGHT' in pixels; the bucket area.",
    )

    # --- Captions and text encoder
    caption_extension: str = _field(
        ".caption",
        CAPTIONS,
        "Extension of the caption file beside each image. If it is missing but a .txt with the same stem "
        "exists, the .txt is used and a warning says so. No caption file: the concept name of the folder.",
    )
    clip_skip: int | None = _field(
        None,
        CAPTIONS,
        "Use the output of the N-th text-encoder layer from the end (2 for NovelAI-based anime models); "
        "1 or empty is the last layer.",
        ge=1,
        le=12,
    )
    max_token_length: Literal[75, 150, 225] = _field(
        75,
        CAPTIONS,
        "Caption length in tokens: 75, 150 or 225 (long captions are encoded in 75-token chunks).",
    )

    dataset_config: OptionalPath = _field(
        None,
        DATASET,
        "kohya dataset TOML ([general], [[datasets]], [[datasets.subsets]]). Its keys override these flags "
        "(subset > dataset > general > flags); train_data_dir and reg_data_dir are then ignored.",
    )
    shuffle_caption: bool = _field(
        False, CAPTIONS, "Shuffle the caption's tags (split at caption_separator) each time."
    )
    caption_separator: str = _field(",", CAPTIONS, "Separator between tags.")
    keep_tokens: int = _field(
        0, CAPTIONS, "Keep the first N tags in place when shuffling or dropping tags.", ge=0
    )
    keep_tokens_separator: str = _field(
        "",
        CAPTIONS,
        "A marker in the caption: tags before it stay fixed, tags after it are shuffled (overrides keep_tokens).",
    )
    secondary_separator: str | None = _field(
        None,
        CAPTIONS,
        "Separator inside a tag group that is kept together, replaced by caption_separator after shuffling.",
    )
    caption_prefix: str | None = _field(None, CAPTIONS, "Text put before every caption.")
    caption_suffix: str | None = _field(None, CAPTIONS, "Text put after every caption.")
    caption_dropout_rate: float = _field(
        0.0, CAPTIONS, "Chance of training an image with an empty caption.", ge=0, le=1
    )
    caption_dropout_every_n_epochs: int = _field(
        0, CAPTIONS, "Train with empty captions every N-th epoch; 0 = never.", ge=0
    )
    caption_tag_dropout_rate: float = _field(
        0.0, CAPTIONS, "Chance of dropping each (not kept) tag.", ge=0, le=1
    )
    enable_wildcard: bool = _field(
        False,
        CAPTIONS,
        "Expand {a|b|c} to one random choice; a multi-line caption file gives one random line.",
    )
    weighted_captions: bool = _field(
        False, CAPTIONS, "Read A1111 emphasis in captions: (word:1.3), (word) = x1.1, [word] = /1.1."
    )

    # --- Buckets
    enable_bucket: bool = _field(
        True, BUCKETS, "Group images into aspect-ratio buckets instead of square crops."
    )
    min_bucket_reso: int = _field(256, BUCKETS, "Smallest bucket side in pixels.", ge=64)
    max_bucket_reso: int = _field(1024, BUCKETS, "Largest bucket side in pixels.", ge=64)
    bucket_reso_steps: int = _field(
        64, BUCKETS, "Bucket side granularity in pixels (a multiple of 64 for SD1)."
    )
    bucket_no_upscale: bool = _field(
        True, BUCKETS, "Never upscale small images: their bucket is their own size, cropped to the step."
    )

    # --- Augmentation
    flip_aug: bool = _field(
        False, AUGMENT, "Flip images horizontally at random (the latent cache keeps both versions)."
    )
    color_aug: bool = _field(
        False, AUGMENT, "Shift hue or gamma at random. Needs images decoded each step: no latent cache."
    )
    random_crop: bool = _field(
        False, AUGMENT, "Crop at a random place instead of the centre. No latent cache."
    )
    face_crop_aug_range: str | None = _field(
        None,
        AUGMENT,
        "'lo,hi': crop around the face box encoded in the file name (*_cx_cy_w_h), scaled at random.",
    )
    alpha_mask: bool = _field(
        False, AUGMENT, "Use each image's alpha channel as a loss mask (transparent pixels do not train)."
    )

    # --- Caching and data loading
    cache_latents: bool = _field(
        True, CACHING, "Encode every image with the VAE once before training and keep the latents in memory."
    )
    cache_latents_to_disk: bool = _field(
        False,
        CACHING,
        "Keep latent caches as .npz files beside the images, reused by later runs; recomputed when the image, "
        "its bucket or the VAE changed. Implies cache_latents.",
    )
    vae_batch_size: int = _field(1, CACHING, "Images per VAE call when caching latents.", ge=1)
    max_data_loader_n_workers: int = _field(
        0,
        CACHING,
        "Data-loader worker processes. 0 (the kohya_ss GUI default) loads in the training process, which is "
        "fastest when latents are cached.",
        ge=0,
    )
    persistent_data_loader_workers: bool = _field(
        False, CACHING, "Keep data-loader workers alive between epochs (no pause at each epoch start)."
    )

    cache_text_encoder_outputs: bool = _field(
        False,
        CACHING,
        "Encode every caption once before training. Needs static captions (no shuffle, dropout or wildcards) "
        "and a frozen text encoder (--network_train_unet_only).",
    )
    cache_text_encoder_outputs_to_disk: bool = _field(
        False,
        CACHING,
        "Keep text-encoder output caches as files beside the images. Implies cache_text_encoder_outputs.",
    )
    cache_only: bool = _field(
        False,
        CACHING,
        "Write the latent disk caches (and text-encoder caches with cache_text_encoder_outputs) beside the "
        "images, then exit without training: prepare on one machine, train on another.",
    )
    skip_bad_images: bool = _field(
        False,
        CACHING,
        "Skip unreadable images with a warning naming each. Default: stop before training and list them.",
    )

    # --- Network
    network_dim: int = _field(8, NETWORK, "LoRA rank: the size of the added low-rank matrices.", ge=1)
    network_alpha: float = _field(
        1.0,
        NETWORK,
        "LoRA alpha. The update is scaled by alpha/rank, so alpha 1 with rank 32 trains 1/32 as strongly as "
        "alpha 32. 0 means alpha = rank.",
        ge=0,
    )
    network_train_unet_only: bool = _field(False, NETWORK, "Train LoRA on the U-Net only (no text encoder).")
    network_train_text_encoder_only: bool = _field(False, NETWORK, "Train LoRA on the text encoder only.")

    # --- Optimizer and learning rate
    optimizer_type: str = _field(
        "AdamW", OPTIMIZER, "Optimizer. AdamW for now; kohya's other names give a clear 'not yet'."
    )
    optimizer_args: list[str] = _field(
        [], OPTIMIZER, "Extra optimizer arguments as key=value, e.g. weight_decay=0.01 betas=0.9,0.99."
    )
    learning_rate: float = _field(
        1e-4,
        OPTIMIZER,
        "Learning rate for every part without its own (kohya's default 2e-6 is for full fine-tuning).",
        ge=0,
    )
    unet_lr: float | None = _field(1e-4, OPTIMIZER, "U-Net LoRA learning rate; empty = learning_rate.", ge=0)
    text_encoder_lr: float | None = _field(
        5e-5,
        OPTIMIZER,
        "Text-encoder LoRA learning rate; empty = learning_rate; 0 = text encoder not trained.",
        ge=0,
    )
    lr_scheduler: Literal[LR_SCHEDULERS] = _field("cosine", OPTIMIZER, "Learning-rate schedule.")
    lr_warmup_steps: Annotated[int | float, BeforeValidator(parse_warmup)] = _field(
        0,
        OPTIMIZER,
        "Warm-up: a whole number of optimizer steps, or a ratio of all steps below 1 (0.1 or '10%'). "
        "0 by default like kohya's script: the GUI's 10% is meant for constant_with_warmup.",
    )
    lr_scheduler_num_cycles: int = _field(1, OPTIMIZER, "Restarts of cosine_with_restarts.", ge=1)
    lr_scheduler_power: float = _field(1.0, OPTIMIZER, "Power of the polynomial schedule.", gt=0)
    max_grad_norm: float = _field(
        1.0, OPTIMIZER, "Clip the gradient norm of the LoRA weights; 0 disables.", ge=0
    )

    # --- Training length and precision
    max_train_steps: int = _field(
        1600, TRAINING, "Total optimizer steps (ignored when max_train_epochs is set).", ge=1
    )
    max_train_epochs: int | None = _field(None, TRAINING, "Total epochs; overrides max_train_steps.", ge=1)
    gradient_accumulation_steps: int = _field(
        1, TRAINING, "Batches whose gradients are summed before one optimizer step.", ge=1
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = _field(
        "fp16",
        TRAINING,
        "Compute precision of the frozen model: fp16 (needs a CUDA GPU; loss scaling), bf16 (recent GPUs and "
        "CPUs) or no (fp32).",
    )
    gradient_checkpointing: bool = _field(
        False, TRAINING, "Recompute activations in the backward pass: less memory, about 20-30% slower."
    )
    seed: int | None = _field(
        None,
        TRAINING,
        "Random seed; the same seed, data and flags on the CPU give a bit-identical LoRA. Empty: random.",
    )

    # --- Output and logging
    output_dir: OptionalPath = _field(
        None, OUTPUT, "Folder for the LoRA files, the state and the effective config."
    )
    output_name: str = _field(
        "last", OUTPUT, "File name stem of the LoRA: NAME.safetensors, NAME-000001.safetensors."
    )
    save_model_as: Literal["safetensors", "ckpt", "pt"] = _field(
        "safetensors", OUTPUT, "File format. safetensors is the safe, standard choice."
    )
    save_precision: Literal["float", "fp16", "bf16"] = _field(
        "fp16", OUTPUT, "Precision of the saved weights."
    )
    save_every_n_epochs: int | None = _field(
        None, OUTPUT, "Also save NAME-00000E.safetensors every N epochs.", ge=1
    )
    training_comment: str | None = _field(None, OUTPUT, "Free text stored in the file's ss_training_comment.")
    no_metadata: bool = _field(
        False, OUTPUT, "Write only the minimum metadata (no dataset, tags or settings)."
    )
    logging_dir: OptionalPath = _field(
        None, OUTPUT, "Write TensorBoard logs under logging_dir/{log_prefix}{timestamp}."
    )
    log_prefix: str = _field("", OUTPUT, "Prefix of the TensorBoard run folder name.")

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
    def _cross_field_rules(self) -> TrainConfig:
        if self.network_train_unet_only and self.network_train_text_encoder_only:
            raise ValueError(
                "--network_train_unet_only and --network_train_text_encoder_only exclude each other; pick one"
            )
        if self.min_bucket_reso > self.max_bucket_reso:
            raise ValueError(
                f"--min_bucket_reso {self.min_bucket_reso} is larger than --max_bucket_reso {self.max_bucket_reso}"
            )
        if self.bucket_reso_steps % 64 != 0 or self.bucket_reso_steps <= 0:
            raise ValueError(
                f"--bucket_reso_steps must be a multiple of 64 for SD1, got {self.bucket_reso_steps}"
            )
        if self.cache_latents and (self.color_aug or self.random_crop or self.face_crop_aug_range):
            flag = next(
                f
                for f, on in (
                    ("--color_aug", self.color_aug),
                    ("--random_crop", self.random_crop),
                    ("--face_crop_aug_range", self.face_crop_aug_range),
                )
                if on
            )
            raise ValueError(
                f"{flag} changes the pixels every epoch, so latents cannot be cached: drop {flag} or set "
                "--cache_latents false (flip_aug works with the cache)"
            )
        if self.cache_text_encoder_outputs:
            dynamic = [
                flag
                for flag, on in (
                    ("--shuffle_caption", self.shuffle_caption),
                    ("--caption_dropout_rate", self.caption_dropout_rate > 0),
                    ("--caption_dropout_every_n_epochs", self.caption_dropout_every_n_epochs > 0),
                    ("--caption_tag_dropout_rate", self.caption_tag_dropout_rate > 0),
                    ("--enable_wildcard", self.enable_wildcard),
                )
                if on
            ]
            if dynamic:
                raise ValueError(
                    f"--cache_text_encoder_outputs needs captions that never change, but {dynamic[0]} changes "
                    "them each epoch; drop one of the two"
                )
            if self.train_text_encoder:
                raise ValueError(
                    "--cache_text_encoder_outputs needs a frozen text encoder: add --network_train_unet_only"
                )
        if any(side % 8 for side in self.resolution):
            raise ValueError(
                f"--resolution sides must be multiples of 8, got {self.resolution[0]},{self.resolution[1]}"
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
    def train_unet(self) -> bool:
        return not self.network_train_text_encoder_only

    @property
    def train_text_encoder(self) -> bool:
        return not self.network_train_unet_only and self.effective_text_encoder_lr > 0

    def warmup_steps(self, total_steps: int) -> int:
        """lr_warmup_steps as optimizer steps: a ratio below 1 is a share of the total."""
        if isinstance(self.lr_warmup_steps, float) and self.lr_warmup_steps < 1:
            return int(self.lr_warmup_steps * total_steps)
        return int(self.lr_warmup_steps)

    def output_path(self, suffix: str = "") -> Path:
        return Path(self.output_dir or ".") / f"{self.output_name}{suffix}.{self.save_model_as}"


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
        parsed[key] = value
    return parsed
