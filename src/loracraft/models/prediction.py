"""What a base model says about its training target (`ModelBundle.prediction`), and where it says it.

A single file, first match wins:
1. NoobAI-XL's marker tensors: `v_pred` (v-prediction) and `ztsnr` (zero terminal SNR), which ComfyUI
   reads the same way;
2. `modelspec.prediction_type` metadata (`epsilon` or `v`, SAI's model spec, written by kohya);
3. `NAME.yaml` beside `NAME.safetensors`, the original config A1111 reads: LDM's
   `model.params.parameterization: "v"` (SD2's 768-v models), or SGM's VScaling denoiser (SDXL).
A diffusers folder: its scheduler config's `prediction_type` and `rescale_betas_zero_snr`.

The model's scheduler config (`ModelBundle.scheduler_config`) follows what was found; the trainer decides
what to train with, as the user's flags win.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from loracraft.errors import UserError
from loracraft.models.bundle import Prediction
from loracraft.models.checkpoint_file import CheckpointFile

V_MARKER, ZTSNR_MARKER = "v_pred", "ztsnr"
MODELSPEC_KEY = "modelspec.prediction_type"
_MODELSPEC_VALUES = {"v": True, "v_prediction": True, "v-prediction": True, "epsilon": False, "eps": False}
_SCHEDULER_VALUES = {"v_prediction": True, "epsilon": False}


def prediction_of_file(checkpoint: CheckpointFile) -> Prediction:
    return (
        _markers(checkpoint.tensors.keys())
        or _modelspec(checkpoint.metadata)
        or _yaml_beside(checkpoint.path)
        or Prediction()
    )


def prediction_of_folder(scheduler_config: Mapping[str, Any] | None, where: str) -> Prediction:
    """`where`: the scheduler config's path as the user sees it (e.g. "scheduler/scheduler_config.json")."""
    if scheduler_config is None:
        return Prediction()
    v = _SCHEDULER_VALUES.get(scheduler_config.get("prediction_type"))
    ztsnr = scheduler_config.get("rescale_betas_zero_snr")
    if v is None and ztsnr is None:
        return Prediction()
    return Prediction(v, None if ztsnr is None else bool(ztsnr), where)


def with_prediction(scheduler_config: Mapping[str, Any], prediction: Prediction) -> dict[str, Any]:
    """A family's scheduler config saying what `prediction` says, as the model's own folder would."""
    config = dict(scheduler_config)
    if prediction.v_parameterization is not None:
        config["prediction_type"] = "v_prediction" if prediction.v_parameterization else "epsilon"
    if prediction.zero_terminal_snr:
        config["rescale_betas_zero_snr"] = True
    return config


def _markers(keys) -> Prediction | None:
    found = [marker for marker in (V_MARKER, ZTSNR_MARKER) if marker in keys]
    if not found:
        return None
    return Prediction(
        True if V_MARKER in found else None,
        True if ZTSNR_MARKER in found else None,
        f"its {' and '.join(found)} key{'s' if len(found) > 1 else ''}",
    )


def _modelspec(metadata: Mapping[str, str]) -> Prediction | None:
    value = _MODELSPEC_VALUES.get(metadata.get(MODELSPEC_KEY, "").strip().lower())
    return None if value is None else Prediction(value, None, f"its {MODELSPEC_KEY} metadata")


def _yaml_beside(model: Path) -> Prediction | None:
    config_file = model.with_suffix(".yaml")
    if not config_file.is_file():
        return None
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{config_file}: the model config beside {model.name} is not readable YAML ({reason}); fix or remove it"
        ) from error
    params = _nested(config, "model", "params")
    where = f"{config_file.name} beside it"
    if "parameterization" in params:
        return Prediction(params["parameterization"] == "v", None, where)
    scaling = _nested(params, "denoiser_config", "params", "scaling_config").get("target", "")
    if scaling.endswith(("VScaling", "EpsScaling")):
        return Prediction(scaling.endswith("VScaling"), None, where)
    # An LDM config without `parameterization` means LDM's default, epsilon.
    return Prediction(False, None, where) if "unet_config" in params else None


def _nested(config: Any, *keys: str) -> dict[str, Any]:
    """`config[k1][k2]...`, or {} where a level is missing or no mapping."""
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None
    return config if isinstance(config, dict) else {}
