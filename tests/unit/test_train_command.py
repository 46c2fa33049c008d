"""train_command(config): the `loracraft train` command line of a config (what the web UI's "Show command"
prints), only the values that differ from the defaults, and it parses back into the same config."""

import shlex

import pytest

from loracraft.config.cli_args import make_train_parser, parse_train_flags
from loracraft.config.load import build_config, train_command
from loracraft.config.presets import load_preset, preset_names

CONFIGS = [
    {},
    {"network_dim": 8, "resolution": "768,512", "output_name": "my lora", "learning_rate": 1e-4},
    {"sdpa": False, "xformers": True, "cache_latents": True, "shuffle_caption": True},
    {"text_encoder_lr": [1e-5, 0.0], "optimizer_args": ["weight_decay=0.01", "betas=0.9,0.99"]},
    {"lr_warmup_steps": "10%", "stop_text_encoder_training": "20%", "lr_scheduler": "cosine_with_restarts"},
    {"caption_prefix": "photo of 'sks', ", "caption_separator": ";", "keep_tokens_separator": "|||"},
    {"face_crop_aug_range": "2.0,4.0", "noise_offset": 0.0357, "min_snr_gamma": 5, "seed": 0},
    {"pretrained_model_name_or_path": "/models/sd v1.5.safetensors", "train_data_dir": "C:\\data\\img"},
    {"max_token_length": 225, "zero_stage": 3, "save_precision": "bf16", "lr_scheduler_power": 2.5},
]


def parsed(command: str):
    words = shlex.split(command)
    assert words[:2] == ["loracraft", "train"]
    return build_config(*parse_train_flags(make_train_parser(), words[2:])[1:], {})


@pytest.mark.parametrize("values", CONFIGS + [load_preset(name) for name in preset_names()])
def test_the_command_parses_back_into_the_same_config(values):
    config = build_config(values, {})
    assert parsed(train_command(config)) == config


def test_only_changed_values_in_help_group_order_quoted_for_a_shell():
    config = build_config(CONFIGS[1] | {"sdpa": False, "text_encoder_lr": [5e-5]}, {})
    assert train_command(config) == (
        "loracraft train --sdpa false --resolution 768,512 --network_dim 8 --learning_rate 0.0001 "
        "--text_encoder_lr 5e-05 --output_name 'my lora'"
    )
    assert train_command(build_config({}, {})) == "loracraft train"


def test_a_secret_never_appears():
    config = build_config({"log_with": "wandb", "wandb_api_key": "s3cret"}, {})
    assert train_command(config) == "loracraft train --log_with wandb"


def test_one_calls_own_progress_file_is_not_part_of_the_recipe():
    """--progress_file belongs to the job queue's call: NAME.toml and the command leave it out, so that
    training again from them never writes into a job's progress."""
    from loracraft.config.load import effective_config_toml

    config = build_config({"progress_file": "/jobs/1/progress.jsonl", "network_dim": 8}, {})
    assert train_command(config) == "loracraft train --network_dim 8"
    assert "progress_file" not in effective_config_toml(config)
    assert "network_dim = 8" in effective_config_toml(config)
