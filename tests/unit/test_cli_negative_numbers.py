"""A negative number after a flag is its value, so the schema's range check answers (argparse's own pattern
misses exponents: `--learning_rate -1e-4` was "expected one argument")."""

import pytest

from loracraft.config.cli_args import make_train_parser, parse_train_flags
from loracraft.config.load import build_config
from loracraft.errors import UserError

REQUIRED = {"pretrained_model_name_or_path": "model.safetensors", "train_data_dir": "img"}


def flags(*argv: str) -> dict:
    return parse_train_flags(make_train_parser(), list(argv))[1]


@pytest.mark.parametrize(
    ("argv", "flag", "value"),
    [
        (["--learning_rate", "-1e-4"], "learning_rate", "-1e-4"),
        (["--learning_rate", "-1.5E+2"], "learning_rate", "-1.5E+2"),
        (["--learning_rate", "-.5"], "learning_rate", "-.5"),
        (["--network_alpha", "-1"], "network_alpha", "-1"),
    ],
)
def test_a_negative_number_is_the_flags_value_and_the_range_check_names_the_flag(argv, flag, value):
    assert flags(*argv) == {flag: value}
    with pytest.raises(UserError) as err:
        build_config({}, {**REQUIRED, **flags(*argv)})
    assert str(err.value) == f"--{flag}: Input should be greater than or equal to 0 (got '{value}')"


def test_a_list_flag_takes_negative_values_too():
    assert flags("--text_encoder_lr", "-1e-4", "5e-5") == {"text_encoder_lr": ["-1e-4", "5e-5"]}
    with pytest.raises(UserError, match=r"^--text_encoder_lr: learning rates cannot be negative"):
        build_config({}, {**REQUIRED, **flags("--text_encoder_lr", "-1e-4", "5e-5")})


def test_positive_numbers_and_flags_still_parse():
    assert flags("--learning_rate", "1e-4", "--network_alpha", "16", "--gradient_checkpointing") == {
        "learning_rate": "1e-4",
        "network_alpha": "16",
        "gradient_checkpointing": True,
    }
    config = build_config({}, {**REQUIRED, **flags("--learning_rate", "1e-4", "--network_alpha", "16")})
    assert (config.learning_rate, config.network_alpha) == (1e-4, 16.0)


@pytest.mark.parametrize("after", ["--network_dim", "-x"])
def test_a_flag_or_a_dash_word_is_still_not_a_value(after):
    with pytest.raises(UserError, match=r"^argument --learning_rate: expected one argument$"):
        flags("--learning_rate", after, "4")
