"""LDM (single-file) state dicts -> diffusers/transformers modules, through diffusers' own converters.

Modules are built on the meta device and the converted tensors assigned in place, so an SDXL-sized
model is never randomly initialised first. Every tensor must fit: a missing or extra one is an error
naming the file, never a silently random weight.
"""

import os
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from loracraft.errors import UserError
from loracraft.models.config_inference import key_indices, model_kwargs
from loracraft.models.family import FAMILY_NAMES


def unet_from_ldm(
    checkpoint: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str | os.PathLike, family: str
) -> UNet2DConditionModel:
    """`checkpoint` holds `model.diffusion_model.*` keys."""
    with init_empty_weights():
        unet = UNet2DConditionModel(**model_kwargs(config))
    state_dict = convert_ldm_unet_checkpoint(checkpoint, dict(config))
    return _assign(unet, state_dict, source, "UNet", family)


def vae_from_ldm(
    checkpoint: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str | os.PathLike, family: str
) -> AutoencoderKL:
    """`checkpoint` holds LDM VAE keys, with or without the `first_stage_model.` prefix."""
    with init_empty_weights():
        vae = AutoencoderKL(**model_kwargs(config))
    return _assign(vae, convert_ldm_vae_checkpoint(checkpoint, dict(config)), source, "VAE", family)


def clip_state_dict(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The CLIP ViT-L under `cond_stage_model.transformer.` (SD1) or `conditioner.embedders.0.transformer.`
    (SDXL) in transformers' naming, every key under `text_model.`."""
    return {
        # Some old SD1 files lack the `text_model.` level.
        key if key.startswith("text_model.") else f"text_model.{key}": tensor
        for key, tensor in convert_ldm_clip_checkpoint(checkpoint).items()
        # Old transformers saved position_ids as a (sometimes float-corrupted) buffer; it is rebuilt anyway.
        if not key.endswith("position_ids")
    }


def open_clip_state_dict(
    checkpoint: Mapping[str, torch.Tensor], prefix: str, *, sd2: bool
) -> dict[str, torch.Tensor]:
    """The OpenCLIP encoder under `prefix` in transformers' naming. For SD2 (`sd2`) without the unused
    last block and the projection, which SD2 never applies (see `open_clip_convert.py`)."""
    tensors = {key: tensor for key, tensor in checkpoint.items() if key.startswith(prefix)}
    if sd2:
        blocks = key_indices(tensors, f"{prefix}transformer.resblocks.")
        unused = f"{prefix}transformer.resblocks.{blocks[-1]}." if blocks else None
        tensors = {
            key: value for key, value in tensors.items() if unused is None or not key.startswith(unused)
        }
    embedding = tensors.get(f"{prefix}token_embedding.weight")
    width = embedding.shape[1] if embedding is not None else 0
    # diffusers reads the width off the model only where the file lacks text_projection.
    shape = SimpleNamespace(config=SimpleNamespace(hidden_size=width, projection_dim=width))
    converted = convert_open_clip_checkpoint(shape, tensors, prefix=prefix)
    if sd2:
        converted.pop("text_projection.weight", None)
    return converted


def text_encoder_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    source: str | os.PathLike,
    family: str,
    what: str = "text encoder",
    with_projection: bool = False,
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """`state_dict` in transformers' naming (`clip_state_dict`, `open_clip_state_dict`); SDXL's TE2 is
    a CLIPTextModelWithProjection (`with_projection`)."""
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with init_empty_weights():
        text_encoder = cls(CLIPTextConfig(**model_kwargs(config)))
    expected = text_encoder.state_dict().keys()
    named = {}
    for key, tensor in state_dict.items():
        # transformers >= 5 dropped CLIPTextModel's `text_model.` level (CLIPTextModelWithProjection keeps it).
        bare = key.removeprefix("text_model.")
        named[bare if bare in expected else f"text_model.{bare}"] = tensor
    return _assign(text_encoder, named, source, what, family)


def _assign(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | os.PathLike, what: str, family: str
) -> Any:
    expected = set(model.state_dict())
    missing, extra = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    layout = f"{FAMILY_NAMES[family]}'s layout"
    if missing or extra:
        raise UserError(
            f"{source}: its {what} does not have {layout} ({len(missing)} tensors missing, e.g. "
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
        raise UserError(f"{source}: its {what} does not have {layout} ({detail})") from error
    return model.eval().requires_grad_(False)
