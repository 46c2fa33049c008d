"""Where each setting appears in the form, and when it is shown: the one place the UI's layout is declared.

Tabs follow the kohya_ss GUI's habits. A field lands on a tab by its name (the few exceptions), else by
the options class that declares it, else by its `--help` group, so a new flag shows up on its group's
tab without touching this file; a new group must be given a tab here (a test checks every field is on
exactly one tab).

Some settings only mean something with another: the relevance table says so once, and the form hides
them while their condition is false (their values stay in the config). The model family (read from the
model file) hides the settings of other families.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel

from loracraft.config import fields as groups
from loracraft.config.distributed_options import DistributedOptions
from loracraft.config.fields import flag_infos
from loracraft.config.logging_options import LoggingOptions
from loracraft.config.sample_options import SampleOptions
from loracraft.config.schema import TrainConfig
from loracraft.config.validation_options import ValidationOptions

MODEL = "Model"
FOLDERS = "Folders and dataset"
NETWORK = "Network"
OPTIMIZER = "Optimizer and schedule"
TRAINING = "Training"
CAPTIONS = "Captions"
AUGMENTATION = "Augmentation"
SAMPLES = "Samples"
SAVING = "Saving and resume"
ADVANCED = "Advanced"
TABS = (MODEL, FOLDERS, NETWORK, OPTIMIZER, TRAINING, CAPTIONS, AUGMENTATION, SAMPLES, SAVING, ADVANCED)

_TAB_OF_FIELD = {
    "v_parameterization": MODEL,  # kohya_ss: beside v2 on the model tab
    "validation_split": SAMPLES,  # the validation settings sit together, with the samples
    "validation_seed": SAMPLES,
    # Attention and memory switches: the kohya_ss GUI's advanced section.
    "sdpa": ADVANCED,
    "xformers": ADVANCED,
    "mem_eff_attn": ADVANCED,
    "lowram": ADVANCED,
}
_TAB_OF_OPTIONS: tuple[tuple[type[BaseModel], str], ...] = (
    (SampleOptions, SAMPLES),
    (ValidationOptions, SAMPLES),
    (LoggingOptions, ADVANCED),
    (DistributedOptions, ADVANCED),
)
_TAB_OF_GROUP = {
    groups.MODEL: MODEL,
    groups.DATASET: FOLDERS,
    groups.BUCKETS: FOLDERS,
    groups.CAPTIONS: CAPTIONS,
    groups.AUGMENT: AUGMENTATION,
    groups.CACHING: TRAINING,
    groups.NETWORK: NETWORK,
    groups.OPTIMIZER: OPTIMIZER,
    groups.NOISE_AND_LOSS: ADVANCED,
    groups.TRAINING: TRAINING,
    groups.OUTPUT: SAVING,
}


def tab_of(name: str) -> str:
    """The tab that shows field `name`."""
    if name in _TAB_OF_FIELD:
        return _TAB_OF_FIELD[name]
    for options, tab in _TAB_OF_OPTIONS:
        if name in options.model_fields:
            return tab
    return _TAB_OF_GROUP[flag_infos(TrainConfig)[name].group]


@cache
def tab_fields() -> dict[str, tuple[str, ...]]:
    """tab -> its fields, in schema order."""
    return {tab: tuple(name for name in TrainConfig.model_fields if tab_of(name) == tab) for tab in TABS}


@dataclass(frozen=True)
class Relevance:
    """`fields` matter only while `when(value of controller)` holds."""

    fields: tuple[str, ...]
    controller: str
    when: Callable[[Any], bool]


def _is_on(value: Any) -> bool:
    return bool(value)


def _is_off(value: Any) -> bool:
    return not value


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda value: value in choices


RELEVANCE = (
    Relevance(("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale"), "enable_bucket", _is_on),
    Relevance(("cache_latents_to_disk",), "cache_latents", _is_on),
    Relevance(("cache_text_encoder_outputs_to_disk",), "cache_text_encoder_outputs", _is_on),
    Relevance(("text_encoder_lr", "stop_text_encoder_training"), "network_train_unet_only", _is_off),
    Relevance(("unet_lr",), "network_train_text_encoder_only", _is_off),
    Relevance(("lr_scheduler_num_cycles",), "lr_scheduler",
              _one_of("cosine_with_restarts", "cosine_with_min_lr", "warmup_stable_decay")),
    Relevance(("lr_scheduler_power",), "lr_scheduler", _one_of("polynomial")),
    Relevance(("lr_scheduler_timescale",), "lr_scheduler", _one_of("inverse_sqrt")),
    Relevance(("lr_scheduler_min_lr_ratio",), "lr_scheduler", _one_of("cosine_with_min_lr", "warmup_stable_decay")),
    Relevance(("lr_decay_steps",), "lr_scheduler", _one_of("warmup_stable_decay")),
    Relevance(("lr_scheduler_args",), "lr_scheduler_type", _is_on),
    Relevance(("scale_v_pred_loss_like_noise_pred",), "v_parameterization", _is_on),
    Relevance(("huber_schedule", "huber_c", "huber_scale"), "loss_type", _one_of("huber", "smooth_l1")),
    Relevance(("noise_offset_random_strength", "adaptive_noise_scale"), "noise_offset", _is_on),
    Relevance(("multires_noise_discount",), "multires_noise_iterations", _is_on),
    Relevance(("ip_noise_gamma_random_strength",), "ip_noise_gamma", _is_on),
    Relevance(("sample_every_n_steps", "sample_every_n_epochs", "sample_at_first", "sample_sampler"),
              "sample_prompts", _is_on),
    Relevance(("validation_seed", "validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps"),
              "validation_split", _is_on),
    Relevance(("save_last_n_epochs_state", "save_last_n_steps_state"), "save_state", _is_on),
    Relevance(("zero_stage", "offload_optimizer_device", "offload_optimizer_nvme_path", "offload_param_device",
               "offload_param_nvme_path", "zero3_init_flag", "zero3_save_16bit_model",
               "fp16_master_weights_and_gradients"), "deepspeed", _is_on),
    Relevance(("offload_optimizer_nvme_path",), "offload_optimizer_device", _one_of("nvme")),
    Relevance(("offload_param_nvme_path",), "offload_param_device", _one_of("nvme")),
    Relevance(("wandb_api_key", "wandb_run_name"), "log_with", _one_of("wandb", "all")),
)  # fmt: skip
# Settings of one model family: hidden once the model file is known to be of another.
FAMILY_FIELDS = {
    "v2": ("sd2",),
    "tokenizer_2_path": ("sdxl",),
}
CONTROLLERS = tuple(dict.fromkeys(rule.controller for rule in RELEVANCE))


def hidden_fields(values: Mapping[str, Any], family: str | None) -> set[str]:
    """The fields to hide for these config values (field -> value, as TrainConfig reads them) and the
    model's family (None: not known, nothing hidden for it)."""
    hidden = {
        name for rule in RELEVANCE if not rule.when(values.get(rule.controller)) for name in rule.fields
    }
    if family is not None:
        hidden |= {name for name, families in FAMILY_FIELDS.items() if family not in families}
    return hidden


def matches_search(name: str, query: str) -> bool:
    """A field matches when every word of the query is in its name or its description."""
    info = flag_infos(TrainConfig)[name]
    text = f"{name} {name.replace('_', ' ')} {info.description}".lower()
    return all(word in text for word in query.lower().split())
