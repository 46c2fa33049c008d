"""A secret setting (an API key) never reaches a file: NAME.toml and a state's config are written with
`effective_config_toml`, and a resume compares settings with `changed_settings`."""

from loracraft.config.fields import secret_names
from loracraft.config.load import effective_config_toml, read_config_file
from loracraft.config.schema import TrainConfig
from loracraft.training.resume import changed_settings

KEY = "0123456789abcdef-secret"


def test_the_wandb_key_is_the_secret_setting():
    assert secret_names(TrainConfig) == ("wandb_api_key",)


def test_the_saved_config_leaves_the_key_out_and_reloads(tmp_path):
    config = TrainConfig(output_dir=str(tmp_path), wandb_api_key=KEY, log_with="wandb")
    text = effective_config_toml(config)
    assert KEY not in text and "wandb_api_key" not in text
    saved = tmp_path / "run.toml"
    saved.write_text(text)
    assert read_config_file(saved)["log_with"] == "wandb"


def test_a_resume_neither_compares_nor_shows_the_key(tmp_path):
    saved = TrainConfig(output_dir=str(tmp_path))
    current = TrainConfig(output_dir=str(tmp_path), wandb_api_key=KEY, logging_dir=str(tmp_path / "logs"))
    refused, allowed = changed_settings(saved, current)
    assert refused == [] and len(allowed) == 1 and allowed[0].startswith("logging_dir (unset -> ")
    assert not any(KEY in line for line in allowed)


def test_a_key_on_the_command_line_is_warned_about_and_never_printed(tmp_path, capsys):
    from loracraft.cli import main

    assert main(["train", "--wandb_api_key", KEY, "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: --wandb_api_key on the command line stays in your shell history")
    assert err[-1] == "error: --pretrained_model_name_or_path is required"
    assert not any(KEY in line for line in err)
