"""The noise, timestep and loss settings as kohya command lines give them: values, rules, notes."""

import pytest

from loracraft.config.cli_args import make_train_parser, parse_train_flags
from loracraft.config.load import build_config
from loracraft.errors import UserError


def parse(*argv: str):
    _, flags = parse_train_flags(make_train_parser(), list(argv))
    return build_config({}, flags)


def test_a_kohya_noise_and_loss_command_line_parses():
    config = parse(
        "--noise_offset", "0.05", "--adaptive_noise_scale", "0.01", "--multires_noise_iterations", "6",
        "--multires_noise_discount", "0.25", "--ip_noise_gamma", "0.1", "--min_snr_gamma", "5",
        "--loss_type", "smooth_l1", "--huber_schedule", "exponential", "--huber_c", "0.2",
        "--min_timestep", "100", "--max_timestep", "900", "--v_parameterization", "--zero_terminal_snr",
        "--scale_v_pred_loss_like_noise_pred", "--debiased_estimation_loss", "--masked_loss",
    )  # fmt: skip
    assert (config.noise_offset, config.adaptive_noise_scale) == (0.05, 0.01)
    assert config.multires_noise_iterations == 6
    assert (config.loss_type, config.huber_schedule, config.huber_c) == ("smooth_l1", "exponential", 0.2)
    assert config.timestep_range == (100, 900)
    assert config.v_parameterization and config.zero_terminal_snr and config.masked_loss


def test_defaults_are_off_and_the_full_timestep_range():
    config = parse()
    assert config.timestep_range == (0, 1000)
    assert (config.loss_type, config.noise_offset, config.min_snr_gamma) == ("l2", None, None)
    assert config.loss_notes == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--adaptive_noise_scale", "0.1"], "--adaptive_noise_scale adds to --noise_offset"),
        (["--scale_v_pred_loss_like_noise_pred"], "add --v_parameterization"),
        (["--v_pred_like_loss", "0.1", "--v_parameterization"], "--v_pred_like_loss is for noise prediction"),
        (["--min_timestep", "600", "--max_timestep", "500"], "--min_timestep 600 is above --max_timestep"),
        (["--max_timestep", "1001"], "max_timestep"),
        (["--loss_type", "l3"], "loss_type"),
        (["--huber_c", "0"], "huber_c"),
    ],
)
def test_rules_are_one_line_errors_naming_the_flags(argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        parse(*argv)


@pytest.mark.parametrize(
    ("argv", "note"),
    [
        (["--noise_offset", "0.1", "--multires_noise_iterations", "6"], "shrinks the offset"),
        (["--noise_offset_random_strength"], "does nothing without noise_offset"),
        (["--ip_noise_gamma_random_strength"], "does nothing without ip_noise_gamma"),
        (["--zero_terminal_snr"], "zero_terminal_snr without v_parameterization"),
        (["--min_snr_gamma", "5", "--debiased_estimation_loss"], "their product applies"),
    ],
)
def test_combinations_that_mislead_get_one_note(argv, note):
    notes = parse(*argv).loss_notes
    assert len(notes) == 1 and note in notes[0]


def test_help_lists_the_group_and_the_fixes():
    help_text = " ".join(make_train_parser().format_help().split())
    assert "Noise, timesteps and loss:" in help_text
    assert "kohya averages over every pixel" in help_text
    assert "not 0/0" in help_text
