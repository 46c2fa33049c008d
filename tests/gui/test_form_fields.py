"""The form generated from the schema: a control per field by its type, every field on one tab, the
values round-trip to the same TrainConfig, relevance and search, and the CLI's validation messages."""

from __future__ import annotations

import pytest

from loracraft.config.fields import GROUPS, flag_infos
from loracraft.config.schema import TrainConfig
from loracraft.gui import form_fields as ff
from loracraft.gui.form_state import FIELD_NAMES, controls_of, controls_of_config, initial_controls, validate
from loracraft.gui.tabs import RELEVANCE, TABS, hidden_fields, matches_search, tab_fields, tab_of

FIELDS = ff.form_fields()


@pytest.mark.parametrize(
    ("name", "kind", "optional"),
    [
        ("enable_bucket", ff.CHECKBOX, False),
        ("lr_scheduler", ff.DROPDOWN, False),
        ("max_token_length", ff.DROPDOWN, True),
        ("network_dim", ff.INTEGER, True),
        ("train_batch_size", ff.INTEGER, False),
        ("learning_rate", ff.NUMBER, False),
        ("optimizer_args", ff.LIST, False),
        ("text_encoder_lr", ff.LIST, True),
        ("resolution", ff.TEXT, False),
        ("lr_warmup_steps", ff.TEXT, False),
        ("output_dir", ff.TEXT, True),
        ("optimizer_type", ff.OPEN_DROPDOWN, False),
    ],
)
def test_a_field_gets_the_control_of_its_type(name, kind, optional):
    assert (FIELDS[name].kind, FIELDS[name].optional) == (kind, optional)


def test_controls_start_at_the_kohya_ss_gui_default_else_the_cli_default():
    assert FIELDS["optimizer_type"].initial == "AdamW8bit"  # kohya_ss GUI; sd-scripts: AdamW
    assert FIELDS["max_bucket_reso"].initial == 2048
    assert FIELDS["max_token_length"].initial == "75"
    assert FIELDS["lr_warmup_steps"].initial == "0.1"
    assert FIELDS["train_batch_size"].initial == 1  # no GUI default: sd-scripts'
    assert FIELDS["resolution"].initial == "512,512"
    assert FIELDS["output_dir"].initial == ""


def test_labels_carry_the_kohya_flag_name_and_a_readable_title():
    assert ff.readable_title("unet_lr") == "Unet LR"
    assert ff.readable_title("max_train_epochs") == "Max train epochs"
    assert FIELDS["network_dim"].description == flag_infos(TrainConfig)["network_dim"].description


# A value of each kind that differs from the default, and what some fields need beside them to validate.
_SAMPLES = {
    "resolution": "768,512",
    "face_crop_aug_range": "2.0,4.0",
    "lr_warmup_steps": "10%",
    "lr_decay_steps": "0.2",
    "stop_text_encoder_training": "30",
    "min_bucket_reso": 128,
    "max_bucket_reso": 1536,
    "bucket_reso_steps": 128,
    "lr_scheduler_type": "CosineAnnealingLR",
    "lr_scheduler": "cosine_with_restarts",
    # Network args are checked key by key; a quoted list value must survive the text box too.
    "network_args": ["conv_dim=4", "exclude_patterns=['.*proj_in', 'two words']"],
}
_CONTEXT = {
    "conditioning_data_dir": {"masked_loss": True},
    "base_weights_multiplier": {"base_weights": ["a.safetensors", "b c.safetensors"]},
    "cache_text_encoder_outputs": {"network_train_unet_only": True},
    "cache_text_encoder_outputs_to_disk": {"network_train_unet_only": True},
    "dim_from_weights": {"network_weights": "w.safetensors"},
    "adaptive_noise_scale": {"noise_offset": 0.05},
    "scale_v_pred_loss_like_noise_pred": {"v_parameterization": True},
    "full_fp16": {"mixed_precision": "fp16"},
    "full_bf16": {"mixed_precision": "bf16"},
    "fp8_base": {"mixed_precision": "bf16"},
    "fp8_base_unet": {"mixed_precision": "bf16"},
    "log_with": {"logging_dir": "logs"},
    "sample_every_n_steps": {"sample_prompts": "prompts.txt"},
    "sample_every_n_epochs": {"sample_prompts": "prompts.txt"},
    "sample_at_first": {"sample_prompts": "prompts.txt"},
}


def _sample(field: ff.FormField):
    default = TrainConfig.model_fields[field.name].default
    if field.name in _SAMPLES:
        return _SAMPLES[field.name]
    if field.kind == ff.CHECKBOX:
        return not default
    if field.kind in (ff.DROPDOWN, ff.OPEN_DROPDOWN):
        return [choice for choice in field.choices if choice != default][-1]
    if field.kind == ff.INTEGER:
        return 3
    if field.kind == ff.NUMBER:
        return 0.25
    if field.kind == ff.LIST:
        return ["weight_decay=0.01", "note='two words'"] if field.item_type is str else [0.5, 0.25]
    return "my data/x"


@pytest.mark.parametrize("name", FIELD_NAMES)
def test_every_field_round_trips_through_its_control(name):
    config = TrainConfig.model_validate({name: _sample(FIELDS[name]), **_CONTEXT.get(name, {})})
    assert getattr(config, name) != TrainConfig.model_fields[name].default
    back = validate(controls_of_config(config))
    assert back.message == ""
    assert back.config == config


def test_the_initial_form_validates_and_a_loaded_file_shows_cli_defaults_for_missing_keys():
    assert validate(initial_controls()).config is not None
    controls = dict(zip(FIELD_NAMES, controls_of({"network_dim": 16}), strict=True))
    assert controls["network_dim"] == 16
    assert controls["optimizer_type"] == "AdamW"  # what `--config_file` gives for a missing key


def test_every_field_is_on_exactly_one_tab_and_every_group_has_a_tab():
    placed = [name for tab in TABS for name in tab_fields()[tab]]
    assert sorted(placed) == sorted(FIELD_NAMES)
    assert {flag_infos(TrainConfig)[name].group for name in FIELD_NAMES} <= set(GROUPS)
    assert tab_of("v_parameterization") == "Model"
    assert tab_of("sample_prompts") == "Samples"
    assert tab_of("network_dim") == "Network"
    assert all(tab_fields()[tab] for tab in TABS)


def test_relevance_names_real_fields_and_hides_by_option_and_family():
    for rule in RELEVANCE:
        assert {rule.controller, *rule.fields} <= set(FIELD_NAMES)
    hidden = hidden_fields(
        {"network_train_unet_only": True, "sample_prompts": None, "loss_type": "l2"}, "sdxl"
    )
    assert {"text_encoder_lr", "stop_text_encoder_training", "sample_sampler", "huber_c", "v2"} <= hidden
    assert "tokenizer_2_path" not in hidden
    shown = hidden_fields({"sample_prompts": "p.txt", "loss_type": "huber", "enable_bucket": True}, None)
    assert not {"sample_sampler", "huber_c", "max_bucket_reso", "v2", "tokenizer_2_path"} & shown


def test_search_matches_name_and_description_words():
    assert matches_search("network_dim", "network_dim")
    assert matches_search("network_dim", "rank")  # its description says "rank"
    assert matches_search("caption_dropout_rate", "caption dropout")
    assert not matches_search("network_dim", "kitten")


def _controls(**values):
    shown = dict(zip(FIELD_NAMES, initial_controls(), strict=True))
    shown.update(values)
    return [shown[name] for name in FIELD_NAMES]


def test_an_invalid_combination_shows_the_cli_message_and_names_its_field():
    result = validate(_controls(min_bucket_reso=1024, max_bucket_reso=512))
    assert result.config is None
    assert result.message == "--min_bucket_reso 1024 is larger than --max_bucket_reso 512"
    assert result.field == "min_bucket_reso"


def test_a_bad_value_shows_the_flag_and_the_value_given():
    result = validate(_controls(train_batch_size=0))
    assert result.message == "--train_batch_size: Input should be greater than or equal to 1 (got 0)"
    assert result.field == "train_batch_size"


def test_a_list_with_an_unclosed_quote_is_one_line_naming_the_flag():
    result = validate(_controls(optimizer_args="betas='0.9,0.99"))
    assert result.message == '--optimizer_args: No closing quotation in "betas=\'0.9,0.99"'
    assert result.field == "optimizer_args"
