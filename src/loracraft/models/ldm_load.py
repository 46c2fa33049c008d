"""LDM (single-file) state dicts -> diffusers/transformers modules, through diffusers' own converters.

Modules are built on the meta device and the converted tensors assigned in place, so an SD1.5-sized
model is never randomly initialised first. Every tensor must fit: a missing or extra one is an error
naming the file, never a silently random weight.
"""

import os
from collections.abc import Mapping
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from loracraft.errors import UserError
from loracraft.models.config_inference import model_kwargs


def unet_from_ldm(
    checkpoint: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str | os.PathLike
) -> UNet2DConditionModel:
    """`checkpoint` holds `model.diffusion_model.*` keys."""
    with init_empty_weights():
        unet = UNet2DConditionModel(**model_kwargs(config))
    return _assign(unet, convert_ldm_unet_checkpoint(checkpoint, dict(config)), source, "UNet")


def vae_from_ldm(
    checkpoint: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str | os.PathLike
) -> AutoencoderKL:
    """`checkpoint` holds LDM VAE keys, with or without the `first_stage_model.` prefix."""
    with init_empty_weights():
        vae = AutoencoderKL(**model_kwargs(config))
    return _assign(vae, convert_ldm_vae_checkpoint(checkpoint, dict(config)), source, "VAE")


def text_encoder_from_ldm(
    checkpoint: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str | os.PathLike
) -> CLIPTextModel:
    """`checkpoint` holds `cond_stage_model.transformer.text_model.*` keys."""
    with init_empty_weights():
        text_encoder = CLIPTextModel(CLIPTextConfig(**model_kwargs(config)))
    expected = text_encoder.state_dict().keys()
    state_dict = {}
    for key, tensor in convert_ldm_clip_checkpoint(checkpoint).items():
        # Old transformers saved position_ids as a (sometimes float-corrupted) buffer; it is rebuilt anyway.
        if key.endswith("position_ids"):
            continue
        # transformers >= 5 dropped CLIPTextModel's `text_model.` level, and so do some old SD1 files.
        bare = key.removeprefix("text_model.")
        state_dict[bare if bare in expected else f"text_model.{bare}"] = tensor
    return _assign(text_encoder, state_dict, source, "text encoder")


def _assign(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | os.PathLike, what: str
) -> Any:
    expected = set(model.state_dict())
    missing, extra = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or extra:
        raise UserError(
            f"{source}: its {what} does not have SD1's layout ({len(missing)} tensors missing, e.g. "
            f"{missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]})"
        )
    fp32 = {
        key: tensor.to(torch.float32) if tensor.is_floating_point() else tensor
        for key, tensor in state_dict.items()
    }
    try:
        model.load_state_dict(fp32, strict=True, assign=True)
    except RuntimeError as error:
        detail = next(
            (line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error)
        )
        raise UserError(f"{source}: its {what} does not have SD1's layout ({detail})") from error
    return model.eval().requires_grad_(False)
