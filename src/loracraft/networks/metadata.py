"""The `ss_*` and `modelspec.*` metadata kohya's train_network.py writes into a LoRA file.

Values are `str(value)` of what kohya passes (so `None` becomes "None", booleans "True"/"False", a
resolution tuple "(512, 512)") and nested structures are `json.dumps` strings, because A1111's Lora tab,
additional-networks and Civitai parse these exact spellings. This is the variant kohya writes without a
dataset config file (`ss_dataset_dirs`, `ss_tag_frequency`, ... at the top level, no `ss_datasets`).
"""

import datetime
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from loracraft.networks.hashes import file_legacy_hash, file_sha256

MODELSPEC_VERSION = "1.0.1"

# What kohya's --no_metadata keeps (train_util.SS_METADATA_MINIMUM_KEYS), plus modelspec.
_MINIMUM_KEYS = (
    "ss_v2",
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
)


@dataclass(frozen=True)
class ModelSource:
    """A base model or VAE as given by the user: a file, a diffusers folder or a Hub id."""

    path_or_id: str

    @property
    def name(self) -> str:
        """The file or folder name of a local path, else the id as given (kohya `ss_sd_model_name`)."""
        path = Path(self.path_or_id)
        return path.name if path.exists() else self.path_or_id

    @cached_property
    def file_hashes(self) -> tuple[str, str] | None:
        """(old A1111 hash, full-file SHA-256) of a local file, computed once on first use; None otherwise."""
        path = Path(self.path_or_id)
        return (file_legacy_hash(path), file_sha256(path)) if path.is_file() else None


@dataclass(frozen=True)
class LoRARunInfo:
    """What a LoRA file records about the run that made it (kohya's values and units)."""

    session_id: int
    training_started_at: float
    """Unix time."""
    output_name: str
    learning_rate: float
    num_train_images: int
    """Training images times repeats."""
    num_reg_images: int
    num_batches_per_epoch: int
    num_epochs: int
    max_train_steps: int
    network_dim: int
    network_alpha: float
    seed: int
    resolution: tuple[int, int]
    """(width, height)."""
    batch_size_per_device: int
    total_batch_size: int
    optimizer: str
    """kohya style: `module.Class` plus `(key=value,...)` when optimizer args were given."""
    text_encoder_lr: float | None = None
    unet_lr: float | None = None
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = 1
    lr_warmup_steps: int | float = 0
    lr_scheduler: str = "constant"
    network_module: str = "networks.lora"
    """kohya's module name, so A1111 and other tools recognise a plain LoRA."""
    network_dropout: float | None = None
    network_args: dict[str, str] | None = None
    mixed_precision: str = "no"
    v2: bool = False
    v_parameterization: bool = False
    clip_skip: int | None = None
    max_token_length: int | None = None
    cache_latents: bool = False
    training_comment: str | None = None
    max_grad_norm: float = 1.0
    prior_loss_weight: float = 1.0
    color_aug: bool = False
    flip_aug: bool = False
    random_crop: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    face_crop_aug_range: str | None = None
    enable_bucket: bool = False
    bucket_no_upscale: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    dataset_dirs: dict = field(default_factory=dict)
    """{folder name: {"n_repeats": n, "img_count": n}} for training folders."""
    reg_dataset_dirs: dict = field(default_factory=dict)
    tag_frequency: dict = field(default_factory=dict)
    """{folder name: {tag: count}}."""
    datasets: list | None = None
    """kohya's `ss_datasets` (runs with a dataset config): one record per dataset."""
    bucket_info: dict | None = None
    """{"buckets": {i: {"resolution": [w, h], "count": n}}, "mean_img_ar_error": x}."""
    sd_model: ModelSource | None = None
    vae: ModelSource | None = None
    min_timestep: int | None = None
    max_timestep: int | None = None
    metadata_title: str | None = None
    metadata_author: str | None = None
    metadata_description: str | None = None
    metadata_license: str | None = None
    metadata_tags: str | None = None
    training_finished_at: float | None = None
    """Unix time of this save; None before the first save, which leaves out the three save-time keys."""
    steps: int = 0
    epoch: int = 0


def kohya_metadata(info: LoRARunInfo, no_metadata: bool = False) -> dict[str, str]:
    """All metadata for a LoRA file, or with `no_metadata` (kohya `--no_metadata`) only the minimum keys
    consumers need to recognise it; modelspec is written in both cases, as kohya does."""
    ss = _ss_metadata(info)
    if no_metadata:
        ss = {key: ss[key] for key in _MINIMUM_KEYS if key in ss}
    return {**ss, **_modelspec(info)}


def base_model_version(info: LoRARunInfo) -> str:
    """kohya `ss_base_model_version` for SD1/SD2: sd_v1 / sd_v2, with `_v` for v-prediction."""
    return ("sd_v2" if info.v2 else "sd_v1") + ("_v" if info.v_parameterization else "")


def _ss_metadata(info: LoRARunInfo) -> dict[str, str]:
    values: dict[str, object] = {
        "ss_session_id": info.session_id,
        "ss_training_started_at": info.training_started_at,
        "ss_output_name": info.output_name,
        "ss_learning_rate": info.learning_rate,
        "ss_text_encoder_lr": info.text_encoder_lr,
        "ss_unet_lr": info.unet_lr,
        "ss_num_train_images": info.num_train_images,
        "ss_num_reg_images": info.num_reg_images,
        "ss_num_batches_per_epoch": info.num_batches_per_epoch,
        "ss_num_epochs": info.num_epochs,
        "ss_gradient_checkpointing": info.gradient_checkpointing,
        "ss_gradient_accumulation_steps": info.gradient_accumulation_steps,
        "ss_max_train_steps": info.max_train_steps,
        "ss_lr_warmup_steps": info.lr_warmup_steps,
        "ss_lr_scheduler": info.lr_scheduler,
        "ss_network_module": info.network_module,
        "ss_network_dim": info.network_dim,
        "ss_network_alpha": info.network_alpha,
        "ss_network_dropout": info.network_dropout,
        "ss_mixed_precision": info.mixed_precision,
        "ss_v2": info.v2,
        "ss_base_model_version": base_model_version(info),
        "ss_clip_skip": info.clip_skip,
        "ss_max_token_length": info.max_token_length,
        "ss_cache_latents": info.cache_latents,
        "ss_seed": info.seed,
        "ss_training_comment": info.training_comment,
        "ss_optimizer": info.optimizer,
        "ss_max_grad_norm": info.max_grad_norm,
        "ss_prior_loss_weight": info.prior_loss_weight,
        "ss_batch_size_per_device": info.batch_size_per_device,
        "ss_total_batch_size": info.total_batch_size,
        "ss_resolution": info.resolution,
        "ss_color_aug": info.color_aug,
        "ss_flip_aug": info.flip_aug,
        "ss_random_crop": info.random_crop,
        "ss_shuffle_caption": info.shuffle_caption,
        "ss_enable_bucket": info.enable_bucket,
        "ss_bucket_no_upscale": info.bucket_no_upscale,
        "ss_min_bucket_reso": info.min_bucket_reso,
        "ss_max_bucket_reso": info.max_bucket_reso,
        "ss_keep_tokens": info.keep_tokens,
        "ss_caption_dropout_rate": info.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": info.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": info.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": info.face_crop_aug_range,
        "ss_dataset_dirs": json.dumps(info.dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(info.reg_dataset_dirs),
        "ss_tag_frequency": json.dumps(info.tag_frequency),
        "ss_bucket_info": json.dumps(info.bucket_info),
    }
    if info.network_args is not None:
        values["ss_network_args"] = json.dumps(info.network_args)
    if info.datasets is not None:
        values["ss_datasets"] = json.dumps(info.datasets)
    for source, name_key, old_hash_key, new_hash_key in (
        (info.sd_model, "ss_sd_model_name", "ss_sd_model_hash", "ss_new_sd_model_hash"),
        (info.vae, "ss_vae_name", "ss_vae_hash", "ss_new_vae_hash"),
    ):
        if source is not None:
            values[name_key] = source.name
            if source.file_hashes is not None:
                values[old_hash_key], values[new_hash_key] = source.file_hashes
    if info.training_finished_at is not None:
        values["ss_training_finished_at"] = info.training_finished_at
        values["ss_steps"] = info.steps
        values["ss_epoch"] = info.epoch
    return {key: str(value) for key, value in values.items()}


def _modelspec(info: LoRARunInfo) -> dict[str, str]:
    if info.v2:
        architecture = "stable-diffusion-v2-768-v" if info.v_parameterization else "stable-diffusion-v2-512"
    else:
        architecture = "stable-diffusion-v1"
    timestamp = (
        info.training_finished_at if info.training_finished_at is not None else info.training_started_at
    )
    width, height = info.resolution
    spec = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": info.metadata_title if info.metadata_title is not None else info.output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.prediction_type": "v" if info.v_parameterization else "epsilon",
    }
    optional = {
        "modelspec.author": info.metadata_author,
        "modelspec.description": info.metadata_description,
        "modelspec.license": info.metadata_license,
        "modelspec.tags": info.metadata_tags,
        "modelspec.encoder_layer": None if info.clip_skip is None else str(info.clip_skip),
    }
    if info.min_timestep is not None or info.max_timestep is not None:
        start = 0 if info.min_timestep is None else info.min_timestep
        end = 1000 if info.max_timestep is None else info.max_timestep
        optional["modelspec.timestep_range"] = f"{start},{end}"
    return {**spec, **{key: value for key, value in optional.items() if value is not None}}
