"""What the base model's family changes in a run's settings.

kohya has one script per family and trusts the user's `--v2` / `--v_parameterization`; loracraft reads
the family (and, where the checkpoint says so, its prediction type) from the model, so:

- SD2 turns `v2` on; `--v2` with an SD1 or SDXL model is refused (kohya asserts the SDXL case).
- A checkpoint that declares v-prediction (NoobAI-XL's `v_pred` key, modelspec, a scheduler config, an
  SD2 `.yaml`) turns on `v_parameterization` (and `zero_terminal_snr` where it declares that too),
  unless the user set those flags: the flags always win.
- SDXL without `--resolution` trains at 1024x1024 with buckets up to 2048 (SD1's 512 default would
  train SDXL far below its native size); a command line that names the resolution trains as in kohya.
- `--bucket_reso_steps` must be a multiple of 64 for SD1/SD2 and of 32 for SDXL, as kohya's two
  scripts assert (`verify_bucket_reso_steps`), for every dataset of a dataset config.
- clip_skip does not apply to SDXL (its conditioning is fixed to both encoders' penultimate layer);
  kohya warns and ignores it, and so does loracraft.

The family is known before the model loads (`family_hint`), so the dataset is planned with the right
resolution before the minutes a large model takes to load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from loracraft.config.load import updated_config
from loracraft.config.schema import TrainConfig
from loracraft.data.plan import DatasetPlan
from loracraft.errors import UserError
from loracraft.models.bundle import Prediction
from loracraft.models.family import FAMILY_NAMES

SDXL_RESOLUTION = (1024, 1024)
SDXL_MAX_BUCKET_RESO = 2048


@dataclass(frozen=True)
class FamilySettings:
    config: TrainConfig
    notes: tuple[str, ...]


def family_hint(model: str | Path | None) -> str | None:
    """ "sdxl" when the model's index or tensor names say SDXL, else None (read without loading any
    weights; a pickled checkpoint is not opened here)."""
    if model is None:
        return None
    path = Path(model)
    if path.is_dir():
        try:
            index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return "sdxl" if isinstance(index, dict) and "text_encoder_2" in index else None
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as file:
            keys = list(file.keys())
    except (SafetensorError, OSError):
        return None  # the loader names the problem
    return "sdxl" if any(key.startswith("conditioner.embedders.") for key in keys) else None


def dataset_defaults(config: TrainConfig, family: str | None) -> FamilySettings:
    """SDXL's resolution and bucket range where the user chose neither."""
    if family != "sdxl" or "resolution" in config.model_fields_set:
        return FamilySettings(config, ())
    updates: dict[str, Any] = {"resolution": SDXL_RESOLUTION}
    if "max_bucket_reso" not in config.model_fields_set:
        updates["max_bucket_reso"] = SDXL_MAX_BUCKET_RESO
    width, height = SDXL_RESOLUTION
    note = f"SDXL: training at {width}x{height}"
    if config.enable_bucket and "max_bucket_reso" in updates:
        note += f" with buckets from {config.min_bucket_reso} to {SDXL_MAX_BUCKET_RESO}"
    note += " (SDXL's defaults; --resolution chooses another)"
    return FamilySettings(_updated(config, updates), (note,))


def model_settings(
    config: TrainConfig, family: str, prediction: Prediction, source: str | Path
) -> FamilySettings:
    """The run's settings once the model is loaded: `v2`, the prediction type, clip_skip's relevance."""
    if config.v2 and family != "sd2":
        raise UserError(f"--v2 is for SD2.x models, but {source} is {FAMILY_NAMES[family]}: drop --v2")
    updates: dict[str, Any] = {}
    notes = []
    if family == "sd2" and not config.v2:
        updates["v2"] = True
    if (
        family == "sd2"
        and prediction.v_parameterization is None
        and "v_parameterization" not in config.model_fields_set
    ):
        notes.append(
            f"{source} does not say whether it is SD2's 512 model (noise prediction) or a 768-v model "
            "(v-prediction), and its weights cannot tell; training with noise prediction: add "
            "--v_parameterization for a 768-v model"
        )
    if family == "sdxl" and config.clip_skip is not None:
        notes.append(
            "clip_skip does not apply to SDXL (it always uses both encoders' penultimate layer); "
            "ignored, as kohya does"
        )
    for flag, declared in (
        ("v_parameterization", prediction.v_parameterization),
        ("zero_terminal_snr", prediction.zero_terminal_snr),
    ):
        if declared is None or declared == getattr(config, flag):
            continue
        if flag in config.model_fields_set:
            notes.append(
                f"{source} declares {flag}={declared} ({prediction.found_in}), but --{flag} "
                f"{getattr(config, flag)} was given; the flag wins"
            )
        else:
            updates[flag] = declared
            notes.append(
                f"{flag} {'on' if declared else 'off'}: {source} declares it ({prediction.found_in})"
            )
    return FamilySettings(_updated(config, updates), tuple(notes))


def _updated(config: TrainConfig, updates: dict[str, Any]) -> TrainConfig:
    # Validated again: a detected v-prediction can meet a flag that contradicts it.
    return updated_config(config, updates, "with the model's own settings: ") if updates else config


# kohya's `verify_bucket_reso_steps` in train_network.py (64) and sdxl_train_network.py (32).
BUCKET_STEP_MULTIPLE = {"sd1": 64, "sd2": 64, "sdxl": 32}


def check_bucket_steps(plan: DatasetPlan, family: str) -> None:
    """Every dataset's bucket step is a multiple of what the family's U-Net needs."""
    multiple = BUCKET_STEP_MULTIPLE[family]
    for dataset in plan.datasets:
        steps = dataset.options.bucket_reso_steps
        if steps % multiple:
            where = f" ({dataset.label})" if dataset.label else ""
            raise UserError(
                f"--bucket_reso_steps {steps}{where}: {FAMILY_NAMES[family]} models need a multiple of {multiple} "
                f"(kohya's check; SDXL takes multiples of 32); use {steps // multiple * multiple or multiple}"
            )
