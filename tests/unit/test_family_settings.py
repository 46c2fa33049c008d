"""What the base model's family changes in a run's settings (training/family_settings.py)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.models.bundle import Prediction
from loracraft.training.family_settings import dataset_defaults, family_hint, model_settings


def config(**values) -> TrainConfig:
    return TrainConfig.model_validate(values)


def test_sdxl_without_a_resolution_trains_at_1024_with_buckets_to_2048():
    settings = dataset_defaults(config(enable_bucket=True), "sdxl")
    assert settings.config.resolution == (1024, 1024)
    assert (settings.config.min_bucket_reso, settings.config.max_bucket_reso) == (256, 2048)
    assert settings.notes == (
        "SDXL: training at 1024x1024 with buckets from 256 to 2048 (SDXL's defaults; --resolution chooses another)",
    )


def test_a_kohya_command_line_with_a_resolution_trains_as_in_kohya():
    given = config(resolution="1024", enable_bucket=True)
    settings = dataset_defaults(given, "sdxl")
    assert settings.config is given and settings.config.max_bucket_reso == 1024 and not settings.notes


def test_sdxl_keeps_a_given_bucket_maximum():
    settings = dataset_defaults(config(max_bucket_reso=1536), "sdxl")
    assert settings.config.resolution == (1024, 1024) and settings.config.max_bucket_reso == 1536


@pytest.mark.parametrize("family", ["sd1", "sd2", None])
def test_other_families_keep_the_kohya_defaults(family):
    given = config()
    assert dataset_defaults(given, family).config is given


@pytest.mark.parametrize(("family", "name"), [("sd1", "SD1.x"), ("sdxl", "SDXL")])
def test_v2_with_a_model_that_is_not_sd2_is_refused(family, name):
    with pytest.raises(
        UserError, match=rf"^--v2 is for SD2.x models, but m.safetensors is {name}: drop --v2$"
    ):
        model_settings(config(v2=True), family, Prediction(), "m.safetensors")


def test_an_sd2_model_turns_v2_on():
    settings = model_settings(config(), "sd2", Prediction(v_parameterization=False), "m")
    assert settings.config.v2 and not settings.notes


def test_an_sd2_file_that_does_not_declare_its_prediction_gets_a_note():
    settings = model_settings(config(), "sd2", Prediction(), "sd21.safetensors")
    assert not settings.config.v_parameterization
    assert settings.notes == (
        "sd21.safetensors does not say whether it is SD2's 512 model (noise prediction) or a 768-v model "
        "(v-prediction), and its weights cannot tell; training with noise prediction: add "
        "--v_parameterization for a 768-v model",
    )
    assert not model_settings(config(v_parameterization=True), "sd2", Prediction(), "m").notes


def test_a_declared_v_prediction_turns_both_flags_on_with_a_note():
    declared = Prediction(v_parameterization=True, zero_terminal_snr=True, found_in="its v_pred key")
    settings = model_settings(config(), "sdxl", declared, "noob.safetensors")
    assert settings.config.v_parameterization and settings.config.zero_terminal_snr
    assert settings.notes == (
        "v_parameterization on: noob.safetensors declares it (its v_pred key)",
        "zero_terminal_snr on: noob.safetensors declares it (its v_pred key)",
    )


def test_the_users_flag_wins_over_what_the_model_declares():
    declared = Prediction(v_parameterization=True, found_in="modelspec.prediction_type")
    settings = model_settings(config(v_parameterization=False), "sdxl", declared, "m")
    assert not settings.config.v_parameterization
    assert settings.notes == (
        "m declares v_parameterization=True (modelspec.prediction_type), but --v_parameterization False was "
        "given; the flag wins",
    )


def test_a_declared_v_prediction_that_contradicts_a_flag_is_one_line():
    declared = Prediction(v_parameterization=True, found_in="its scheduler config")
    with pytest.raises(UserError, match=r"^with the model's own settings: .*v_pred_like_loss"):
        model_settings(config(v_pred_like_loss=0.1), "sd1", declared, "m")


def test_clip_skip_is_ignored_for_sdxl_with_a_note():
    settings = model_settings(config(clip_skip=2), "sdxl", Prediction(), "m")
    assert "clip_skip does not apply to SDXL" in settings.notes[0]
    assert not model_settings(config(clip_skip=2), "sd1", Prediction(), "m").notes


def test_family_hint_reads_names_only(tmp_path):
    sdxl = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.0.transformer.x": torch.zeros(1)}, str(sdxl))
    sd1 = tmp_path / "sd1.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(sd1))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"text_encoder_2": ["transformers", "X"]}))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    assert [family_hint(p) for p in (sdxl, sd1, folder, broken, tmp_path / "absent.ckpt", None)] == [
        "sdxl",
        None,
        "sdxl",
        None,
        None,
        None,
    ]


def test_updated_configs_are_validated_like_any_other():
    from loracraft.config.load import updated_config

    updated = updated_config(config(resolution="512"), {"text_encoder_lr": 5e-4})
    assert updated.text_encoder_lr == [5e-4] and updated.effective_text_encoder_lrs == (5e-4,)
    assert {"resolution", "text_encoder_lr"} <= updated.model_fields_set
    with pytest.raises(UserError, match=r"^demo: --network_dim: "):
        updated_config(config(), {"network_dim": "many"}, "demo: ")


@pytest.mark.parametrize(
    ("family", "steps", "refused"),
    [("sd1", 32, True), ("sd2", 96, True), ("sdxl", 32, False), ("sd1", 128, False)],
)
def test_bucket_steps_follow_kohyas_rule_per_family(tmp_path, family, steps, refused):
    """kohya: multiples of 64 for SD1/SD2 (train_network.py), of 32 for SDXL (sdxl_train_network.py)."""
    from data_helpers import make_kohya_dataset
    from loracraft.data.plan import build_epoch_plan
    from loracraft.data.scan import scan_dreambooth_root
    from loracraft.training.family_settings import check_bucket_steps

    tree = make_kohya_dataset(tmp_path, reg_count=0)
    subsets = scan_dreambooth_root(tree.train_dir, is_reg=False, caption_extension=".txt").subsets
    plan = build_epoch_plan(
        subsets, seed=0, max_train_epochs=1, max_train_steps=None, enable_bucket=True,
        resolution=(256, 256), bucket_reso_steps=steps, min_bucket_reso=128, max_bucket_reso=512,
    )  # fmt: skip
    if not refused:
        check_bucket_steps(plan, family)
        return
    with pytest.raises(UserError) as error:
        check_bucket_steps(plan, family)
    names = {"sd1": "SD1.x", "sd2": "SD2.x"}
    assert str(error.value) == (
        f"--bucket_reso_steps {steps}: {names[family]} models need a multiple of 64 (kohya's check; SDXL takes "
        f"multiples of 32); use {steps // 64 * 64 or 64}"
    )
