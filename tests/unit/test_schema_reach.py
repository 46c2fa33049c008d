"""Every setting is declared once and reaches everything derived from it: `--help`, the dataset-TOML
tables, the effective-config TOML round trip, and the LoRA metadata where kohya records it (checked
against the keys kohya's train_network.py writes, kept in tests/data/kohya/)."""

import json
import typing
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

from loracraft.config.cli_args import make_train_parser
from loracraft.config.dataset_config import DatasetKeys, SubsetKeys
from loracraft.config.dataset_options import DatasetOptions
from loracraft.config.fields import flag_infos
from loracraft.config.load import build_config, effective_config_toml, read_config_file
from loracraft.config.schema import TrainConfig
from loracraft.config.subset_options import SubsetOptions
from loracraft.networks.metadata import RunSummary, kohya_metadata

KOHYA = Path(__file__).parents[1] / "data" / "kohya"
FIELDS = TrainConfig.model_fields
DECLARED = flag_infos(TrainConfig)

# Settings a changed value needs beside it to pass the rules between settings.
COMPANIONS: dict[str, dict] = {
    "color_aug": {"cache_latents": False},
    "random_crop": {"cache_latents": False},
    "face_crop_aug_range": {"cache_latents": False},
    "cache_text_encoder_outputs": {"network_train_unet_only": True},
    "cache_text_encoder_outputs_to_disk": {"network_train_unet_only": True},
    "network_train_text_encoder_only": {},
    "min_bucket_reso": {"max_bucket_reso": 2048},
    "full_fp16": {"mixed_precision": "fp16"},
    "full_bf16": {"mixed_precision": "bf16"},
    "fp8_base": {"mixed_precision": "bf16"},
    "fp8_base_unet": {"mixed_precision": "bf16"},
    "adaptive_noise_scale": {"noise_offset": 0.1},
    "scale_v_pred_loss_like_noise_pred": {"v_parameterization": True},
    "conditioning_data_dir": {"masked_loss": True},
    "dim_from_weights": {"network_weights": "start.safetensors"},
    "base_weights_multiplier": {"base_weights": ["a.safetensors"]},
    "log_with": {"logging_dir": "logs"},
    "sample_every_n_steps": {"sample_prompts": "prompts.txt"},
    "sample_every_n_epochs": {"sample_prompts": "prompts.txt"},
    "sample_at_first": {"sample_prompts": "prompts.txt"},
}
# Values the type alone cannot suggest.
CHANGED: dict[str, object] = {
    "resolution": (640, 512),
    "face_crop_aug_range": (2.0, 4.0),
    "optimizer_args": ["weight_decay=0.01"],
    "network_args": ["conv_dim=4"],
    "optimizer_type": "adamw",  # a spelling kohya accepts, normalised
    "caption_separator": ";",
    "bucket_reso_steps": 128,
    "clip_skip": 2,
    "min_bucket_reso": 320,
    "lr_warmup_steps": 0.1,
    "lr_scheduler_type": "CosineAnnealingLR",
    "lr_scheduler_args": ["T_max=100"],
    "text_encoder_lr": [5e-5, 2e-5],  # SDXL's TE1 and TE2
    "base_weights": ["a.safetensors", "b.safetensors"],
    "base_weights_multiplier": [0.5],
}


def changed_value(name: str, field: FieldInfo) -> object:
    """A valid value other than the default."""
    if name in CHANGED:
        return CHANGED[name]
    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return next(choice for choice in args if choice != field.default)
    base = args[0] if args and typing.get_origin(annotation) is not typing.Literal else annotation
    if typing.get_origin(base) is typing.Literal:
        return next(choice for choice in typing.get_args(base) if choice != field.default)
    if base is bool:
        return not field.default
    if base is int:
        return (field.default or 1) + 1
    if base is float:
        return 0.5 if field.default != 0.5 else 0.25
    if base is str:
        return "chosen/value"
    raise AssertionError(f"no changed value for {name}: {annotation}")


def config_with(name: str) -> TrainConfig:
    value = changed_value(name, FIELDS[name])
    return build_config({}, {**COMPANIONS.get(name, {}), name: value})


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_setting_reaches_help_with_its_description(name):
    help_text = " ".join(make_train_parser().format_help().split())
    assert f"--{name} " in help_text
    first_words = " ".join(DECLARED[name].description.split()[:6])
    assert first_words and first_words in help_text


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_setting_round_trips_through_the_effective_config(name, tmp_path):
    config = config_with(name)
    assert getattr(config, name) != FIELDS[name].default or name == "optimizer_type"
    path = tmp_path / "run.toml"
    path.write_text(effective_config_toml(config), encoding="utf-8")
    reloaded = build_config(read_config_file(path), {})
    if not DECLARED[name].recorded:  # an API key, one call's progress file: never written, back unset
        assert getattr(reloaded, name) is None and reloaded == config.model_copy(update={name: None})
    else:
        assert reloaded == config


def test_dataset_toml_keys_are_the_subset_and_dataset_settings():
    """A subset or dataset setting is a TOML key (under its toml_key) and nothing else is."""
    subset_keys = {DECLARED[name].toml_key for name in SubsetOptions.model_fields}
    dataset_keys = {DECLARED[name].toml_key for name in DatasetOptions.model_fields}
    assert subset_keys | {"num_repeats", "class_tokens"} == set(SubsetKeys.model_fields)
    assert dataset_keys == set(DatasetKeys.model_fields)
    assert "batch_size" in dataset_keys and "train_batch_size" not in dataset_keys


def kohya_keys() -> dict[str, dict]:
    data = json.loads((KOHYA / "ss_metadata_sources.json").read_text(encoding="utf-8"))
    return {key: entries[0] for key, entries in data["keys"].items()}


# kohya keys whose value is a setting but not as given: the seed actually drawn, the steps after
# --max_train_epochs (both come from the run), and the first of --text_encoder_lr's values.
FROM_THE_RUN = {"ss_seed", "ss_max_train_steps"}
NOT_PLAIN_ARGS = {"ss_text_encoder_lr": "text_encoder_lr"}


def kohya_setting_keys() -> dict[str, tuple[str, bool]]:
    """ss key -> (our field, written only without a dataset config) for every key kohya takes from a
    setting we have."""
    found = {}
    for key, entry in kohya_keys().items():
        expression = entry["expression"]
        name = NOT_PLAIN_ARGS.get(key)
        if entry["source"] in ("args", "args_bool"):
            name = entry["args"][0]
        elif entry["source"] == "dataset" and expression.removeprefix("bool(").startswith("dataset."):
            name = expression.removeprefix("bool(").removeprefix("dataset.").rstrip(")")
        if name in FIELDS and key not in FROM_THE_RUN:
            found[key] = (name, entry["context"] == "without_dataset_config")
    return found


def test_metadata_keys_match_kohya():
    ours = {info.ss_key: (name, info.ss_folders_only) for name, info in DECLARED.items() if info.ss_key}
    assert ours == kohya_setting_keys()


@pytest.mark.parametrize("key", sorted(kohya_setting_keys()))
def test_every_recorded_setting_reaches_the_metadata(key):
    name, folders_only = kohya_setting_keys()[key]
    summary = RunSummary(
        session_id=1, training_started_at=0.0, seed=1, num_train_images=1, num_reg_images=0,
        num_batches_per_epoch=1, num_epochs=1, max_train_steps=1, total_batch_size=1, optimizer="x",
    )  # fmt: skip
    config = config_with(name)
    # kohya's networks.lora reads (and records) only the first --text_encoder_lr value
    recorded = config.text_encoder_lr[0] if name == "text_encoder_lr" else getattr(config, name)
    assert kohya_metadata(config, summary)[key] == str(recorded)
    with_dataset_config = config.model_copy(update={"dataset_config": "d.toml"})
    assert (key in kohya_metadata(with_dataset_config, summary)) is not folders_only
