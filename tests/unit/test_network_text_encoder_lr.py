"""--text_encoder_lr as kohya's train_network.py reads it: one value or two (SDXL's TE1, TE2), on the
command line (nargs="*") or in a TOML file (a number or a list), down to the network's parameter groups."""

from pathlib import Path

import pytest

from loracraft.config.cli_args import make_train_parser, parse_train_flags
from loracraft.config.load import build_config, effective_config_toml, read_config_file
from loracraft.errors import UserError
from loracraft.networks.lora_network import build_lora_network
from model_helpers import tiny_sdxl_text_encoders, tiny_sdxl_unet, tiny_text_encoder, tiny_unet


def parse(argv: list[str], file_values: dict | None = None):
    _, flags = parse_train_flags(make_train_parser(), ["--learning_rate", "1e-4", *argv])
    return build_config(file_values or {}, flags)


@pytest.mark.parametrize(
    ("argv", "file_values", "values", "rates"),
    [
        ([], None, None, (1e-4,)),
        (["--text_encoder_lr"], None, None, (1e-4,)),  # kohya: no value means learning_rate
        (["--text_encoder_lr", "5e-5"], None, [5e-5], (5e-5,)),
        (["--text_encoder_lr", "5e-5", "2e-5"], None, [5e-5, 2e-5], (5e-5, 2e-5)),
        ([], {"text_encoder_lr": 5e-5}, [5e-5], (5e-5,)),
        ([], {"text_encoder_lr": [5e-5, 0]}, [5e-5, 0.0], (5e-5, 0.0)),
        (["--text_encoder_lr", "3e-5"], {"text_encoder_lr": [5e-5, 2e-5]}, [3e-5], (3e-5,)),
    ],
)
def test_values_from_flags_and_files(argv, file_values, values, rates) -> None:
    config = parse(argv, file_values)
    assert config.text_encoder_lr == values
    assert config.effective_text_encoder_lrs == rates
    assert config.effective_text_encoder_lr == rates[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--text_encoder_lr", "1e-4", "1e-5", "1e-6"], "--text_encoder_lr: takes one learning rate, or two"),
        (["--text_encoder_lr", "1e-4", "-0.0001"], "--text_encoder_lr: learning rates cannot be negative"),
        (["--text_encoder_lr", "fast"], "--text_encoder_lr: "),
    ],
)
def test_bad_values_are_one_line_errors(argv, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        parse(argv)
    assert "\n" not in str(caught.value)


def test_text_encoders_train_when_any_rate_is_above_zero() -> None:
    assert not parse(["--text_encoder_lr", "0"]).train_text_encoder
    assert not parse(["--text_encoder_lr", "0", "0"]).train_text_encoder
    assert parse(["--text_encoder_lr", "0", "1e-5"]).train_text_encoder  # SDXL: TE2 only
    assert not parse(["--text_encoder_lr", "1e-5", "--network_train_unet_only"]).train_text_encoder


def test_two_rates_survive_the_effective_config(tmp_path: Path) -> None:
    config = parse(["--text_encoder_lr", "5e-5", "2e-5"])
    path = tmp_path / "run.toml"
    path.write_text(effective_config_toml(config), encoding="utf-8")
    assert build_config(read_config_file(path), {}) == config


def test_help_shows_the_values_it_takes() -> None:
    assert "--text_encoder_lr [TEXT_ENCODER_LR ...]" in make_train_parser().format_help()


@pytest.mark.parametrize(
    ("argv", "groups"),
    [
        ([], [("unet", 1e-4), ("textencoder 1", 1e-4), ("textencoder 2", 1e-4)]),
        (["--text_encoder_lr", "5e-5"], [("unet", 1e-4), ("textencoder 1", 5e-5), ("textencoder 2", 5e-5)]),
        (
            ["--text_encoder_lr", "5e-5", "2e-5"],
            [("unet", 1e-4), ("textencoder 1", 5e-5), ("textencoder 2", 2e-5)],
        ),
        (["--text_encoder_lr", "0", "2e-5"], [("unet", 1e-4), ("textencoder 2", 2e-5)]),
    ],
)
def test_sdxl_groups_from_the_flag(argv, groups) -> None:
    config = parse(argv)
    network = build_lora_network(tiny_sdxl_unet(), tiny_sdxl_text_encoders(), "sdxl", rank=2, alpha=1.0)
    found = network.param_groups(config.effective_unet_lr, config.effective_text_encoder_lrs)
    assert [(g["name"], g["lr"]) for g in found] == groups


def test_sd1_uses_the_first_rate() -> None:
    config = parse(["--text_encoder_lr", "5e-5", "2e-5"])  # what the kohya_ss GUI writes, one per encoder
    network = build_lora_network(tiny_unet(), [tiny_text_encoder()], "sd1", rank=2, alpha=1.0)
    found = network.param_groups(config.effective_unet_lr, config.effective_text_encoder_lrs)
    assert [(g["name"], g["lr"]) for g in found] == [("unet", 1e-4), ("textencoder", 5e-5)]
