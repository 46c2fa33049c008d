"""The base model's family for the form, read without loading the model.

A .safetensors file's header lists every tensor's name and shape, which is all family detection needs;
a diffusers folder says it in its JSON configs. A pickled .ckpt has no header: reading it means loading
it, so its family is left to the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from loracraft.errors import UserError
from loracraft.models.family import FAMILY_NAMES, detect_family, detect_folder_family, refuse_other_pipeline


def model_family(model: str | None) -> tuple[str | None, str]:
    """(the family of `model` or None, a line saying what was found) for --pretrained_model_name_or_path."""
    if not model:
        return None, "No base model chosen yet."
    path = Path(model)
    try:
        if path.is_dir():
            family = _folder_family(path)
        elif path.suffix.lower() == ".safetensors" and path.is_file():
            family = _file_family(path)
        elif path.is_file():
            return (
                None,
                f"{path.name}: the family is read when training starts (a {path.suffix} has no header).",
            )
        else:
            return (
                None,
                f"{model} is not a file or folder here; a Hugging Face id is loaded when training starts.",
            )
    except UserError as err:
        return None, str(err)
    return family, f"Model family: {FAMILY_NAMES[family]}"


def _file_family(path: Path) -> str:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            # Empty tensors of the right shapes on the meta device: no weights are read.
            shapes = {key: torch.empty(file.get_slice(key).get_shape(), device="meta") for key in file.keys()}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    return detect_family(shapes, path)


def _folder_family(folder: Path) -> str:
    try:
        model_index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{folder}: not a diffusers model folder ({err})") from None
    refuse_other_pipeline(model_index, folder)
    return detect_folder_family(model_index, unet_config, folder)
