"""The `ss_*` and `modelspec.*` metadata kohya's train_network.py writes into a LoRA file.

Values are `str(value)` of what kohya passes (so `None` becomes "None", booleans "True"/"False", a
resolution tuple "(512, 512)") and nested structures are `json.dumps` strings, because A1111's Lora tab,
additional-networks and Civitai parse these exact spellings. A run with a dataset config records its
datasets in `ss_datasets`; a plain-folder run records the folder settings, batch size and buckets at the
top level instead, as kohya does.

The settings come from the TrainConfig: each field declared with an `ss_key` (config/fields.py) is
written under it, so a new kohya flag reaches the metadata with its declaration alone. The model family
("sd1", "sd2", "sdxl") sets the values kohya's sd1/sd2 (train_network.py) and SDXL
(sdxl_train_network.py) trainers write differently: `ss_v2`, `ss_base_model_version` and modelspec's
architecture and implementation.
"""

import datetime
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from loracraft.config.fields import flag_infos
from loracraft.config.schema import TrainConfig
from loracraft.networks.hashes import file_legacy_hash, file_sha256
from loracraft.networks.kohya_names import check_family

MODELSPEC_VERSION = "1.0.1"
# kohya's sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0, written for every SDXL model (v-prediction too).
SDXL_BASE_MODEL_VERSION = "sdxl_base_v1-0"
# sai_model_spec.IMPL_STABILITY_AI: kohya's implementation for SDXL LoRAs; SD1/SD2 LoRAs say "diffusers".
SDXL_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"

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
class RunSummary:
    """What a LoRA file records about its run beyond the settings (those come from the TrainConfig)."""

    session_id: int
    training_started_at: float
    """Unix time."""
    seed: int
    """The seed actually used (drawn at random when --seed is not given, as kohya does)."""
    num_train_images: int
    """Training images times repeats."""
    num_reg_images: int
    num_batches_per_epoch: int
    num_epochs: int
    max_train_steps: int
    """After --max_train_epochs turned into steps."""
    total_batch_size: int
    optimizer: str
    """kohya style: `module.Class` plus `(key=value,...)` when optimizer args were given."""
    num_validation_images: int = 0
    """Held-out images (each counts once) whose loss is the validation loss."""
    network_args: dict[str, str | float | None] | None = None
    """kohya's ss_network_args: --network_args as given, with --network_dropout (network_spec.py)."""
    family: str = "sd1"
    """The base model's family: "sd1", "sd2" or "sdxl"."""
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
    training_finished_at: float | None = None
    """Unix time of this save; None before the first save, which leaves out the three save-time keys."""
    steps: int = 0
    epoch: int = 0


def kohya_metadata(config: TrainConfig, info: RunSummary) -> dict[str, str]:
    """All metadata for a LoRA file, or with `--no_metadata` only the minimum keys consumers need to
    recognise it; modelspec is written in both cases, as kohya does."""
    check_family(info.family)
    ss = {**_settings_metadata(config, info.family), **_ss_metadata(info, config.v_parameterization)}
    if config.no_metadata:
        ss = {key: ss[key] for key in _MINIMUM_KEYS if key in ss}
    return {key: str(value) for key, value in {**ss, **_modelspec(config, info)}.items()}


def _settings_metadata(config: TrainConfig, family: str) -> dict[str, object]:
    """The settings kohya records, each under the `ss_key` its declaration names. kohya writes the folder
    settings at the top level only for plain-folder runs; with a dataset config `ss_datasets` holds them."""
    values: dict[str, object] = {
        info.ss_key: getattr(config, name)
        for name, info in flag_infos(TrainConfig).items()
        if info.ss_key is not None and not (info.ss_folders_only and config.dataset_config)
    }
    values["ss_text_encoder_lr"] = recorded_text_encoder_lr(config.text_encoder_lr, family)
    return values


def recorded_text_encoder_lr(values: list[float] | None, family: str) -> float | list[float] | None:
    """`ss_text_encoder_lr` as kohya spells it: the first value (networks.lora reads only that one), or
    None when not given. An SDXL run that trains TE2 at another rate records both, as kohya's trainers
    with a rate per text encoder (lora_flux, lora_sd3) write the list."""
    if not values:
        return None
    if family == "sdxl" and len(set(values)) > 1:
        return values
    return values[0]


def base_model_version(family: str, v_parameterization: bool) -> str:
    """kohya `ss_base_model_version`: sd_v1 / sd_v2, with `_v` for v-prediction; sdxl_base_v1-0."""
    if family == "sdxl":
        return SDXL_BASE_MODEL_VERSION
    return ("sd_v2" if family == "sd2" else "sd_v1") + ("_v" if v_parameterization else "")


def _ss_metadata(info: RunSummary, v_parameterization: bool) -> dict[str, object]:
    values: dict[str, object] = {
        "ss_session_id": info.session_id,
        "ss_training_started_at": info.training_started_at,
        "ss_num_train_images": info.num_train_images,
        "ss_num_reg_images": info.num_reg_images,
        "ss_num_validation_images": info.num_validation_images,
        "ss_num_batches_per_epoch": info.num_batches_per_epoch,
        "ss_num_epochs": info.num_epochs,
        "ss_max_train_steps": info.max_train_steps,
        "ss_base_model_version": base_model_version(info.family, v_parameterization),
        "ss_seed": info.seed,
        "ss_optimizer": info.optimizer,
        "ss_dataset_dirs": json.dumps(info.dataset_dirs),
        "ss_tag_frequency": json.dumps(info.tag_frequency),
    }
    if info.family == "sd2":
        values["ss_v2"] = True  # the --v2 setting, which an SD2 model implies (family_settings.py)
    if info.datasets is not None:
        values["ss_datasets"] = json.dumps(info.datasets)
    else:
        values["ss_total_batch_size"] = info.total_batch_size
        values["ss_reg_dataset_dirs"] = json.dumps(info.reg_dataset_dirs)
        values["ss_bucket_info"] = json.dumps(info.bucket_info)
    if info.network_args is not None:
        values["ss_network_args"] = json.dumps(info.network_args)
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
    return values


def _modelspec(config: TrainConfig, info: RunSummary) -> dict[str, str]:
    """kohya's modelspec (train_util.get_sai_model_spec -> sai_model_spec.build_metadata) for a LoRA."""
    timestamp = (
        info.training_finished_at if info.training_finished_at is not None else info.training_started_at
    )
    spec = lora_modelspec(
        info.family,
        config.v_parameterization,
        config.output_stem,
        timestamp,
        _resolution(config, info.family),
    )
    if config.min_timestep is not None or config.max_timestep is not None:
        low = 0 if config.min_timestep is None else config.min_timestep
        high = 1000 if config.max_timestep is None else config.max_timestep
        spec["modelspec.timestep_range"] = f"{low},{high}"
    if config.clip_skip is not None:
        spec["modelspec.encoder_layer"] = str(config.clip_skip)
    return spec


def lora_modelspec(
    family: str,
    v_parameterization: bool,
    title: str,
    timestamp: float,
    resolution: tuple[int, int] | None = None,
) -> dict[str, str]:
    """The modelspec keys every kohya LoRA file has (sai_model_spec.build_metadata with lora=True); no
    resolution: the family's native size, as kohya's determine_resolution."""
    width, height = resolution or native_resolution(family, v_parameterization)
    return {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{_architecture(family, v_parameterization)}/lora",
        "modelspec.implementation": SDXL_IMPLEMENTATION if family == "sdxl" else "diffusers",
        "modelspec.title": title,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.prediction_type": "v" if v_parameterization else "epsilon",
    }


def checkpoint_modelspec(
    family: str, v_parameterization: bool, title: str, timestamp: float
) -> dict[str, str]:
    """The modelspec keys kohya writes into a checkpoint (build_metadata with is_stable_diffusion_ckpt):
    a LoRA's, for the model's own architecture, with Stability AI's implementation for every family."""
    return lora_modelspec(family, v_parameterization, title, timestamp) | {
        "modelspec.architecture": _architecture(family, v_parameterization),
        "modelspec.implementation": SDXL_IMPLEMENTATION,
    }


def _resolution(config: TrainConfig, family: str) -> tuple[int, int]:
    """The run's resolution. Without `--resolution`, a dataset config's datasets set their own and kohya
    writes the family's native size (sai_model_spec.determine_resolution)."""
    if not config.dataset_config or "resolution" in config.model_fields_set:
        return config.resolution
    return native_resolution(family, config.v_parameterization)


def native_resolution(family: str, v_parameterization: bool) -> tuple[int, int]:
    if family == "sdxl":
        return (1024, 1024)
    return (768, 768) if family == "sd2" and v_parameterization else (512, 512)


def _architecture(family: str, v_parameterization: bool) -> str:
    """sai_model_spec.determine_architecture: SDXL is the base architecture whatever its prediction."""
    if family == "sdxl":
        return "stable-diffusion-xl-v1-base"
    if family == "sd2":
        return "stable-diffusion-v2-768-v" if v_parameterization else "stable-diffusion-v2-512"
    return "stable-diffusion-v1"
