"""A ModelBundle from a diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/, and for SDXL text_encoder_2/ and tokenizer_2/), read with `from_pretrained`."""

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ModelMixin, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from loracraft.errors import UserError
from loracraft.models.bundle import ModelBundle
from loracraft.models.config_inference import base_config
from loracraft.models.family import detect_folder_family, refuse_other_pipeline
from loracraft.models.prediction import prediction_of_folder
from loracraft.models.tokenizer_source import load_tokenizers
from loracraft.models.vae_source import load_vae

SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"


def bundle_from_folder(
    folder: Path,
    vae: Path | None,
    tokenizer_path: str | os.PathLike | None,
    tokenizer_2_path: str | os.PathLike | None,
) -> ModelBundle:
    model_index = _read_json(folder / "model_index.json", f"{folder} is a folder but not a diffusers model")
    refuse_other_pipeline(model_index, folder)
    unet_config = _read_json(folder / "unet" / "config.json", f"{folder} has no UNet")
    family = detect_folder_family(model_index, unet_config, folder)
    scheduler_file = folder / SCHEDULER_CONFIG
    scheduler_config = _read_json(scheduler_file, "") if scheduler_file.is_file() else None
    tokenizer, tokenizer_2 = load_tokenizers(family, folder, tokenizer_path, tokenizer_2_path)
    return ModelBundle(
        family=family,
        unet=_pretrained(UNet2DConditionModel, folder, "unet"),
        text_encoder=_pretrained(CLIPTextModel, folder, "text_encoder"),
        tokenizer=tokenizer,
        vae=load_vae(vae, family) if vae is not None else _pretrained(AutoencoderKL, folder, "vae"),
        scheduler_config=scheduler_config or base_config(family, "scheduler"),
        source=folder,
        vae_source=vae,
        text_encoder_2=(
            _pretrained(CLIPTextModelWithProjection, folder, "text_encoder_2") if family == "sdxl" else None
        ),
        tokenizer_2=tokenizer_2,
        prediction=prediction_of_folder(scheduler_config, SCHEDULER_CONFIG.as_posix()),
    )


def _read_json(file: Path, problem: str) -> dict[str, Any]:
    if not file.is_file():
        raise UserError(f"{problem} (no {file.name} in {file.parent})")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{file}: not readable JSON ({error})") from error


def _pretrained(cls: Any, folder: Path, subfolder: str) -> Any:
    # diffusers casts while loading (and warns about a later .to()); transformers >= 5 keeps the file's
    # dtype unless told, and its `dtype` argument is `torch_dtype` in 4.x, so it is cast afterwards.
    is_diffusers = issubclass(cls, ModelMixin)
    try:
        model = cls.from_pretrained(
            folder,
            subfolder=subfolder,
            local_files_only=True,
            **({"torch_dtype": torch.float32} if is_diffusers else {}),
        )
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{folder / subfolder}: the diffusers {subfolder} does not load ({first_line})"
        ) from error
    if not is_diffusers:
        model = model.to(torch.float32)
    return model.eval().requires_grad_(False)
