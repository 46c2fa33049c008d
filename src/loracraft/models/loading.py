"""`load_model_bundle`: the base model from a single-file checkpoint or a diffusers folder, local only.

Both routes give the same modules: a single file's configs are inferred from its shapes
(`config_inference.py`) and its tensors converted by diffusers' own LDM converters; a folder is read with
`from_pretrained`. The tokenizer is found as `tokenizer_source.py` describes.
"""

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ModelMixin, UNet2DConditionModel
from transformers import CLIPTextModel

from loracraft.errors import UserError
from loracraft.models.bundle import ModelBundle
from loracraft.models.checkpoint_file import CheckpointFile, read_checkpoint
from loracraft.models.config_inference import base_config, infer_config
from loracraft.models.family import detect_family, detect_folder_family
from loracraft.models.ldm_convert import (
    TEXT_ENCODER_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    text_encoder_state_dict_to_ldm,
)
from loracraft.models.ldm_load import text_encoder_from_ldm, unet_from_ldm, vae_from_ldm
from loracraft.models.tokenizer_source import load_tokenizer, tokenizer_beside
from loracraft.models.vae_source import load_vae

TRAINABLE_FAMILIES = ("sd1",)
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


def load_model_bundle(
    path: str | os.PathLike,
    vae: str | os.PathLike | None = None,
    tokenizer_path: str | os.PathLike | None = None,
) -> ModelBundle:
    """Load `path` (a .safetensors/.ckpt file or a diffusers folder); `vae` replaces its VAE."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--pretrained_model_name_or_path {path}: no such file or folder")
    vae_path = Path(vae) if vae is not None else None
    bundle = (
        _from_folder(path, vae_path, tokenizer_path)
        if path.is_dir()
        else _from_file(path, vae_path, tokenizer_path)
    )
    _check_fit(bundle)
    return bundle


def _require_trainable(family: str, source: Path) -> None:
    if family not in TRAINABLE_FAMILIES:
        raise UserError(
            f"{source} is an {FAMILY_NAMES[family]} checkpoint; loracraft trains SD1.x only so far "
            "(SD2/SDXL support is coming)"
        )


def _from_file(path: Path, vae: Path | None, tokenizer_path: str | os.PathLike | None) -> ModelBundle:
    checkpoint = read_checkpoint(path)
    family = detect_family(checkpoint.tensors, path)
    _require_trainable(family, path)
    tokenizer = load_tokenizer(tokenizer_beside(path), tokenizer_path, path)
    unet_ldm = _component(checkpoint, UNET_PREFIX, "UNet")
    unet_config = infer_config("unet", unet_ldm, family, checkpoint.metadata, path)
    # Some older files lack the `text_model.` level; the LDM form has it.
    text_ldm = text_encoder_state_dict_to_ldm(_component(checkpoint, TEXT_ENCODER_PREFIX, "text encoder"))
    text_config = {
        **infer_config("text_encoder", text_ldm, family, checkpoint.metadata, path),
        # The special-token ids are the tokenizer's (SD1.5's config has placeholder ids 0, 1, 2).
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return ModelBundle(
        family=family,
        unet=unet_from_ldm(checkpoint.tensors, unet_config, path),
        text_encoder=text_encoder_from_ldm(checkpoint.tensors, text_config, path),
        tokenizer=tokenizer,
        vae=load_vae(vae, family) if vae is not None else _own_vae(checkpoint, family),
        scheduler_config=base_config(family, "scheduler"),
        source=path,
        vae_source=vae,
    )


def _component(
    checkpoint: CheckpointFile, prefix: str, what: str, fix: str = "use a complete SD1 checkpoint"
) -> dict[str, torch.Tensor]:
    tensors = {
        key.removeprefix(prefix): value for key, value in checkpoint.tensors.items() if key.startswith(prefix)
    }
    if not tensors:
        raise UserError(f"{checkpoint.path} has no {what} (no {prefix}* tensors); {fix}")
    return tensors


def _own_vae(checkpoint: CheckpointFile, family: str) -> AutoencoderKL:
    ldm = _component(checkpoint, VAE_PREFIX, "VAE", "pass one with --vae")
    config = infer_config("vae", ldm, family, checkpoint.metadata, checkpoint.path)
    return vae_from_ldm(ldm, config, checkpoint.path)


def _from_folder(folder: Path, vae: Path | None, tokenizer_path: str | os.PathLike | None) -> ModelBundle:
    model_index = _read_json(folder / "model_index.json", f"{folder} is a folder but not a diffusers model")
    family = detect_folder_family(
        model_index, _read_json(folder / "unet" / "config.json", f"{folder} has no UNet")
    )
    _require_trainable(family, folder)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    tokenizer_folder = folder / "tokenizer"
    return ModelBundle(
        family=family,
        unet=_pretrained(UNet2DConditionModel, folder, "unet"),
        text_encoder=_pretrained(CLIPTextModel, folder, "text_encoder"),
        tokenizer=load_tokenizer(
            tokenizer_folder if tokenizer_folder.is_dir() else None, tokenizer_path, folder
        ),
        vae=load_vae(vae, family) if vae is not None else _pretrained(AutoencoderKL, folder, "vae"),
        scheduler_config=_read_json(scheduler_file, "")
        if scheduler_file.is_file()
        else base_config(family, "scheduler"),
        source=folder,
        vae_source=vae,
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


def _check_fit(bundle: ModelBundle) -> None:
    """Mismatches that would otherwise fail deep inside the first training step."""
    if len(bundle.tokenizer) > bundle.text_encoder.config.vocab_size:
        raise UserError(
            f"the tokenizer {bundle.tokenizer.name_or_path} has {len(bundle.tokenizer)} tokens but the text encoder "
            f"of {bundle.source} knows {bundle.text_encoder.config.vocab_size}; pass its own tokenizer with --tokenizer_path"
        )
    latent, expected = bundle.vae.config.latent_channels, bundle.unet.config.out_channels
    if latent != expected:
        raise UserError(
            f"the VAE {bundle.vae_source or bundle.source} makes {latent}-channel latents but the UNet of "
            f"{bundle.source} uses {expected}; pass a VAE made for this model with --vae"
        )
