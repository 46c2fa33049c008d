"""kohya ss_* and modelspec metadata: spellings, JSON fields, minimum keys, base-model hashes."""

import dataclasses
import datetime
import hashlib
import json
from pathlib import Path

import pytest

from loracraft.config.schema import TrainConfig
from loracraft.networks import metadata as metadata_module
from loracraft.networks.metadata import SDXL_IMPLEMENTATION, ModelSource, RunSummary, kohya_metadata

STARTED = 1_700_000_000.25
FINISHED = 1_700_000_600.5
SETTINGS = dict(
    output_name="mychar",
    learning_rate=1e-4,
    unet_lr=1e-4,
    text_encoder_lr=None,
    network_dim=32,
    network_alpha=16.0,
    resolution=(512, 512),
    train_batch_size=2,
    optimizer_args=["weight_decay=0.01"],
    enable_bucket=True,
    clip_skip=None,
)


def config(**changes) -> TrainConfig:
    return TrainConfig(**{**SETTINGS, **changes})


def run_info(**changes) -> RunSummary:
    info = RunSummary(
        session_id=123456,
        training_started_at=STARTED,
        num_train_images=200,
        num_reg_images=0,
        num_batches_per_epoch=100,
        num_epochs=10,
        max_train_steps=1000,
        seed=42,
        total_batch_size=2,
        optimizer="torch.optim.adamw.AdamW(weight_decay=0.01)",
        dataset_dirs={"10_mychar": {"n_repeats": 10, "img_count": 20}},
        tag_frequency={"10_mychar": {"mychar": 20, "smile": 3}},
        bucket_info={"buckets": {"0": {"resolution": [512, 512], "count": 200}}, "mean_img_ar_error": 0.0},
        training_finished_at=FINISHED,
        steps=1000,
        epoch=10,
    )
    return dataclasses.replace(info, **changes)


def test_values_are_kohya_spellings() -> None:
    metadata = kohya_metadata(config(), run_info())
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    expected = {
        "ss_session_id": "123456",
        "ss_training_started_at": "1700000000.25",
        "ss_output_name": "mychar",
        "ss_learning_rate": "0.0001",
        "ss_text_encoder_lr": "None",
        "ss_unet_lr": "0.0001",
        "ss_network_module": "networks.lora",
        "ss_network_dim": "32",
        "ss_network_alpha": "16.0",
        "ss_network_dropout": "None",
        "ss_v2": "False",
        "ss_base_model_version": "sd_v1",
        "ss_clip_skip": "None",
        "ss_max_token_length": "None",
        "ss_gradient_checkpointing": "False",
        "ss_enable_bucket": "True",
        "ss_resolution": "(512, 512)",
        "ss_seed": "42",
        "ss_optimizer": "torch.optim.adamw.AdamW(weight_decay=0.01)",
        "ss_training_comment": "None",
        "ss_training_finished_at": "1700000600.5",
        "ss_steps": "1000",
        "ss_epoch": "10",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": "mychar",
        "modelspec.resolution": "512x512",
        "modelspec.prediction_type": "epsilon",
        "modelspec.date": datetime.datetime.fromtimestamp(int(FINISHED)).isoformat(),
    }
    assert {key: metadata[key] for key in expected} == expected
    assert "ss_sd_model_name" not in metadata and "ss_network_args" not in metadata
    assert "modelspec.encoder_layer" not in metadata and "modelspec.author" not in metadata


def test_json_fields_parse() -> None:
    metadata = kohya_metadata(config(), run_info(network_args={"conv_dim": "8"}))
    assert json.loads(metadata["ss_dataset_dirs"]) == {"10_mychar": {"n_repeats": 10, "img_count": 20}}
    assert json.loads(metadata["ss_reg_dataset_dirs"]) == {}
    assert json.loads(metadata["ss_tag_frequency"])["10_mychar"]["smile"] == 3
    assert json.loads(metadata["ss_bucket_info"])["buckets"]["0"]["resolution"] == [512, 512]
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "8"}


def test_no_metadata_keeps_minimum_and_modelspec() -> None:
    metadata = kohya_metadata(config(no_metadata=True), run_info(network_args={"conv_dim": "8"}))
    ss_keys = {key for key in metadata if key.startswith("ss_")}
    assert ss_keys == {
        "ss_v2",
        "ss_base_model_version",
        "ss_network_module",
        "ss_network_dim",
        "ss_network_alpha",
        "ss_network_args",
    }
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_before_first_save_there_are_no_save_time_keys() -> None:
    metadata = kohya_metadata(config(), run_info(training_finished_at=None))
    assert not {"ss_training_finished_at", "ss_steps", "ss_epoch"} & metadata.keys()
    assert metadata["modelspec.date"] == datetime.datetime.fromtimestamp(int(STARTED)).isoformat()


@pytest.mark.parametrize(
    ("family", "v_pred", "version", "architecture", "implementation", "prediction"),
    [
        ("sd1", False, "sd_v1", "stable-diffusion-v1/lora", "diffusers", "epsilon"),
        ("sd2", False, "sd_v2", "stable-diffusion-v2-512/lora", "diffusers", "epsilon"),
        ("sd1", True, "sd_v1_v", "stable-diffusion-v1/lora", "diffusers", "v"),
        ("sd2", True, "sd_v2_v", "stable-diffusion-v2-768-v/lora", "diffusers", "v"),
        ("sdxl", False, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", SDXL_IMPLEMENTATION, "epsilon"),
        # NoobAI-XL v-pred: kohya keeps SDXL's version and architecture, only the prediction type says v
        ("sdxl", True, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", SDXL_IMPLEMENTATION, "v"),
    ],
)
def test_model_version(family, v_pred, version, architecture, implementation, prediction) -> None:
    metadata = kohya_metadata(config(v_parameterization=v_pred), run_info(family=family))
    assert metadata["ss_v2"] == str(family == "sd2")
    assert metadata["ss_base_model_version"] == version
    assert metadata["modelspec.architecture"] == architecture
    assert metadata["modelspec.implementation"] == implementation
    assert metadata["modelspec.prediction_type"] == prediction


def test_no_metadata_keeps_the_family() -> None:
    metadata = kohya_metadata(config(no_metadata=True), run_info(family="sdxl"))
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0" and metadata["ss_v2"] == "False"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model family 'sd3'"):
        kohya_metadata(config(), run_info(family="sd3"))


@pytest.mark.parametrize(
    ("given", "family", "recorded"),
    [
        (None, "sdxl", "None"),
        (5e-5, "sd1", "5e-05"),
        ([5e-5], "sdxl", "5e-05"),
        # the kohya_ss GUI writes one value per text encoder; networks.lora records the first
        ([5e-5, 5e-5], "sdxl", "5e-05"),
        ([5e-5, 2e-5], "sd1", "5e-05"),
        # SDXL training TE2 at its own rate records both, as kohya's trainers with a rate per encoder do
        ([5e-5, 2e-5], "sdxl", "[5e-05, 2e-05]"),
    ],
)
def test_text_encoder_lr_as_kohya_records_it(given, family: str, recorded: str) -> None:
    metadata = kohya_metadata(config(text_encoder_lr=given), run_info(family=family))
    assert metadata["ss_text_encoder_lr"] == recorded


def test_timestep_range() -> None:
    assert "modelspec.timestep_range" not in kohya_metadata(config(), run_info())
    for changes, expected in (({"min_timestep": 200}, "200,1000"), ({"max_timestep": 800}, "0,800")):
        assert kohya_metadata(config(**changes), run_info())["modelspec.timestep_range"] == expected


@pytest.mark.parametrize(
    ("family", "v_pred", "expected"),
    [("sd1", False, "512x512"), ("sd2", True, "768x768"), ("sdxl", False, "1024x1024")],
)
def test_dataset_config_without_resolution_records_the_native_size(family, v_pred, expected) -> None:
    """kohya's --resolution is unset when a dataset config sets the sizes; modelspec then says the
    family's native size."""
    settings = {key: value for key, value in SETTINGS.items() if key != "resolution"}
    run = TrainConfig(**settings, dataset_config="d.toml", v_parameterization=v_pred)
    assert kohya_metadata(run, run_info(family=family))["modelspec.resolution"] == expected
    given = config(dataset_config="d.toml", resolution=(640, 640))
    assert kohya_metadata(given, run_info(family=family))["modelspec.resolution"] == "640x640"


def test_settings_shape_modelspec() -> None:
    metadata = kohya_metadata(config(clip_skip=2, resolution=(768, 512)), run_info())
    assert metadata["ss_clip_skip"] == "2"
    assert metadata["modelspec.encoder_layer"] == "2"
    assert metadata["modelspec.title"] == "mychar"
    assert metadata["modelspec.resolution"] == "768x512"
    assert metadata["ss_resolution"] == "(768, 512)"


def test_base_model_file_and_vae_hashes(tmp_path: Path) -> None:
    model = tmp_path / "base.safetensors"
    content = bytes(range(256)) * 5000  # 1.2 MiB: the old hash window holds real bytes
    model.write_bytes(content)
    vae = tmp_path / "vae.pt"
    vae.write_bytes(b"vae")
    metadata = kohya_metadata(config(), run_info(sd_model=ModelSource(str(model)), vae=ModelSource(str(vae))))
    assert metadata["ss_sd_model_name"] == "base.safetensors"
    assert metadata["ss_sd_model_hash"] == hashlib.sha256(content[0x100000:0x110000]).hexdigest()[:8]
    assert metadata["ss_new_sd_model_hash"] == hashlib.sha256(content).hexdigest()
    assert metadata["ss_vae_name"] == "vae.pt"
    assert metadata["ss_vae_hash"] == hashlib.sha256(b"").hexdigest()[:8]
    assert metadata["ss_new_vae_hash"] == hashlib.sha256(b"vae").hexdigest()


def test_folders_and_hub_ids_are_named_without_hashes(tmp_path: Path) -> None:
    folder = tmp_path / "my-diffusers-model"
    folder.mkdir()
    for source, name in ((str(folder) + "/", "my-diffusers-model"), ("runwayml/stable-diffusion-v1-5", None)):
        metadata = kohya_metadata(config(), run_info(sd_model=ModelSource(source)))
        assert metadata["ss_sd_model_name"] == (name or source)
        assert "ss_sd_model_hash" not in metadata and "ss_new_sd_model_hash" not in metadata


def test_base_model_hashes_are_computed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "base.ckpt"
    model.write_bytes(b"weights")
    calls = []
    real = metadata_module.file_sha256
    monkeypatch.setattr(metadata_module, "file_sha256", lambda path: calls.append(path) or real(path))
    info = run_info(sd_model=ModelSource(str(model)))
    kohya_metadata(config(), info)
    kohya_metadata(
        config(), dataclasses.replace(info, steps=2000, epoch=20, training_finished_at=FINISHED + 1)
    )
    assert len(calls) == 1
    assert kohya_metadata(config(no_metadata=True), info).keys().isdisjoint({"ss_sd_model_hash"})
