"""The prediction type a base model declares: marker tensors, modelspec metadata, a yaml beside a
single file, a folder's scheduler config."""

from pathlib import Path

import pytest
import torch

from loracraft.errors import UserError
from loracraft.models.bundle import Prediction
from loracraft.models.checkpoint_file import CheckpointFile
from loracraft.models.prediction import prediction_of_file, prediction_of_folder, with_prediction


def checkpoint(tmp_path: Path, *keys: str, metadata: dict | None = None) -> CheckpointFile:
    tensors = {key: torch.zeros(0) for key in ("model.diffusion_model.out.2.weight", *keys)}
    return CheckpointFile(tmp_path / "m.safetensors", tensors, metadata or {})


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["v_pred"], Prediction(True, None, "its v_pred key")),
        (["v_pred", "ztsnr"], Prediction(True, True, "its v_pred and ztsnr keys")),
        (["ztsnr"], Prediction(None, True, "its ztsnr key")),
        ([], Prediction()),
    ],
)
def test_noobai_markers(tmp_path, keys, expected):
    assert prediction_of_file(checkpoint(tmp_path, *keys)) == expected


@pytest.mark.parametrize(("value", "v"), [("v", True), ("epsilon", False), ("flow", None)])
def test_modelspec_metadata(tmp_path, value, v):
    found = prediction_of_file(checkpoint(tmp_path, metadata={"modelspec.prediction_type": value}))
    expected = Prediction() if v is None else Prediction(v, None, "its modelspec.prediction_type metadata")
    assert found == expected


def test_markers_win_over_metadata(tmp_path):
    found = prediction_of_file(
        checkpoint(tmp_path, "v_pred", metadata={"modelspec.prediction_type": "epsilon"})
    )
    assert found.v_parameterization is True


SGM = """model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    denoiser_config:
      params:
        scaling_config:
          target: sgm.modules.diffusionmodules.denoiser_scaling.{scaling}
"""


@pytest.mark.parametrize(
    ("text", "v"),
    [
        ('model:\n  params:\n    parameterization: "v"\n    unet_config: {}\n', True),
        ("model:\n  params:\n    unet_config: {}\n", False),  # LDM's default, epsilon
        (SGM.format(scaling="VScaling"), True),
        (SGM.format(scaling="EpsScaling"), False),
        ("something: else\n", None),
    ],
)
def test_yaml_beside_the_file(tmp_path, text, v):
    (tmp_path / "m.yaml").write_text(text)
    expected = Prediction() if v is None else Prediction(v, None, "m.yaml beside it")
    assert prediction_of_file(checkpoint(tmp_path)) == expected


def test_unreadable_yaml_is_one_line(tmp_path):
    (tmp_path / "m.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError) as error:
        prediction_of_file(checkpoint(tmp_path))
    message = str(error.value)
    assert message.startswith(
        f"{tmp_path / 'm.yaml'}: the model config beside m.safetensors is not readable YAML"
    )
    assert message.endswith("fix or remove it")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
            Prediction(True, True, "s.json"),
        ),
        ({"prediction_type": "epsilon"}, Prediction(False, None, "s.json")),
        ({"beta_schedule": "scaled_linear"}, Prediction()),
        (None, Prediction()),
    ],
)
def test_folder_scheduler_config(config, expected):
    assert prediction_of_folder(config, "s.json") == expected


def test_with_prediction():
    base = {"prediction_type": "epsilon", "beta_end": 0.012}
    assert with_prediction(base, Prediction()) == base
    assert with_prediction(base, Prediction(True, True, "x")) == {
        "prediction_type": "v_prediction",
        "beta_end": 0.012,
        "rescale_betas_zero_snr": True,
    }
