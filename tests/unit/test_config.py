"""TrainConfig, kohya flags and config files: values, precedence and one-line errors."""

import pytest

from loracraft.cli import main
from loracraft.config.cli_args import make_train_parser, parse_train_flags
from loracraft.config.load import build_config, effective_config_toml, read_config_file
from loracraft.errors import UserError


def parse(argv, file_values=None):
    config_file, flags = parse_train_flags(make_train_parser(), argv)
    return config_file, build_config(file_values or {}, flags)


def test_unset_values_mean_what_they_mean_in_kohya():
    """kohya's usual form `--learning_rate 3e-4` (no --unet_lr) trains every part at 3e-4: the part rates
    follow learning_rate when not given; an unset rank is networks.lora's 4, an unset length 75 tokens."""
    _, config = parse(["--learning_rate", "3e-4"])
    assert (config.effective_unet_lr, config.effective_text_encoder_lr) == (3e-4, 3e-4)
    assert (config.network_dim, config.network_rank, config.max_token_length, config.token_length) == (
        None, 4, None, 75
    )  # fmt: skip
    assert (config.output_name, config.output_stem) == (None, "last")
    _, config = parse(["--learning_rate", "3e-4", "--unet_lr", "1e-4", "--text_encoder_lr", "0"])
    assert (config.effective_unet_lr, config.train_text_encoder) == (1e-4, False)


def test_help_names_the_kohya_ss_gui_default_where_it_differs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--cache_latents [BOOL]" in out and "[default: False; kohya_ss GUI: True]" in out
    assert "[default: constant; kohya_ss GUI: cosine]" in out


def test_kohya_flags_parse_with_their_types():
    _, config = parse(
        [
            "--network_dim",
            "32",
            "--network_alpha",
            "16",
            "--resolution",
            "768,512",
            "--enable_bucket",
            "--optimizer_args",
            "weight_decay=0.01",
            "betas=0.9,0.99",
            "--lr_warmup_steps",
            "0.1",
            "--network_train_unet_only",
            "--clip_skip",
            "2",
            "--max_token_length",
            "225",
        ]
    )
    assert (config.network_dim, config.network_alpha) == (32, 16.0)
    assert config.resolution == (768, 512)
    assert config.optimizer_args == ["weight_decay=0.01", "betas=0.9,0.99"]
    assert config.optimizer_kwargs == {"weight_decay": 0.01, "betas": (0.9, 0.99)}  # parsed in one place
    assert config.warmup_steps(1000) == 100
    assert config.network_train_unet_only and not config.train_text_encoder
    assert config.clip_skip == 2 and config.max_token_length == 225


@pytest.mark.parametrize(
    ("raw", "total", "steps"), [("50", 1000, 50), ("0.05", 1000, 50), ("10%", 300, 30), ("0", 10, 0)]
)
def test_warmup_is_steps_or_ratio(raw, total, steps):
    _, config = parse(["--lr_warmup_steps", raw])
    assert config.warmup_steps(total) == steps


def test_boolean_flag_can_turn_off_a_default():
    _, config = parse(["--enable_bucket", "false", "--cache_latents", "no"])
    assert not config.enable_bucket and not config.cache_latents


def test_disk_cache_implies_memory_cache():
    _, config = parse(["--cache_latents", "false", "--cache_latents_to_disk"])
    assert config.cache_latents


def test_flags_override_config_file(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nnetwork_dim = 4\nlearning_rate = 0.001\n[out]\noutput_name = "from_file"\n')
    file_values = read_config_file(toml)
    config_file, config = parse(["--config_file", str(toml), "--network_dim", "16"], file_values)
    assert config_file == str(toml)
    assert config.network_dim == 16  # flag wins
    assert config.learning_rate == 0.001 and config.output_name == "from_file"


def test_effective_config_round_trips(tmp_path):
    _, config = parse(
        ["--resolution", "640,512", "--network_dim", "12", "--optimizer_args", "weight_decay=0.1"]
    )
    path = tmp_path / "eff.toml"
    path.write_text(effective_config_toml(config))
    assert build_config(read_config_file(path), {}) == config


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--netwrok_alpha", "4"], "unknown flag --netwrok_alpha (did you mean --network_alpha?)"),
        (["--network_dim", "abc"], "--network_dim: Input should be a valid integer"),
        (["--resolution", "500,x"], "--resolution: resolution '500,x' is not 'SIZE' or 'WIDTH,HEIGHT'"),
        (["--resolution", "500"], "--resolution sides must be multiples of 8"),
        (["--lr_scheduler", "cosine_annealing"], "--lr_scheduler: Input should be"),
        (["--optimizer_type", "AdamW9bit"], "unknown optimizer 'AdamW9bit' (did you mean AdamW8bit?)"),
        (["--optimizer_args", "momentum"], "optimizer_args 'momentum' is not key=value"),
        (["--min_bucket_reso", "1024", "--max_bucket_reso", "512"], "--min_bucket_reso 1024 is larger than"),
        (["--network_train_unet_only", "--network_train_text_encoder_only"], "exclude each other"),
        (["--max_token_length", "100"], "--max_token_length: Input should be 75, 150 or 225"),
    ],
)
def test_bad_flags_are_one_line(argv, message):
    with pytest.raises(UserError) as caught:
        parse(argv)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


def test_unknown_key_in_config_file_names_file_and_suggestion(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("network_dimm = 4\n")
    with pytest.raises(
        UserError, match=r"bad.toml: unknown key 'network_dimm' \(did you mean network_dim\?\)"
    ):
        read_config_file(toml)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="--config_file .*nope.toml does not exist"):
        read_config_file(tmp_path / "nope.toml")


def test_cli_prints_one_line_and_exits_2(capsys):
    assert main(["train", "--network_dimm", "4"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: unknown flag --network_dimm (did you mean --network_dim?)"
    assert "Traceback" not in err


def test_help_lists_groups_and_docs(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for group in ("Model:", "Dataset:", "Network:", "Optimizer and learning rate:", "Output and logging:"):
        assert group in out
    assert "LoRA rank" in out and "[kohya_ss GUI: 8]" in " ".join(out.split())


def test_kohyas_misspelt_caption_extention_is_read_with_a_note(tmp_path, capsys):
    _, config = parse(["--caption_extention", ".txt"])
    assert config.caption_extension == ".txt"
    assert (
        "note: --caption_extention is kohya's old spelling of --caption_extension" in capsys.readouterr().err
    )
    toml = tmp_path / "run.toml"
    toml.write_text('caption_extension = ".caption"\ncaption_extention = ".tags"\n')
    assert read_config_file(toml)["caption_extension"] == ".tags"  # as in kohya, the old spelling wins
    assert "caption_extention is kohya's old spelling" in capsys.readouterr().err
