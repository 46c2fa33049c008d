"""A ModelBundle from a single-file checkpoint in its family's original layout (see `ldm_convert.py`).

Configs come from the shapes (`config_inference.py`), tensors go through diffusers' own LDM converters
(`ldm_load.py`), the tokenizers are found as `tokenizer_source.py` describes and the prediction type as
`prediction.py` describes.
"""

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from loracraft.errors import UserError
from loracraft.models.bundle import ModelBundle
from loracraft.models.checkpoint_file import CheckpointFile, read_checkpoint
from loracraft.models.config_inference import base_config, infer_config
from loracraft.models.family import FAMILY_NAMES, detect_family
from loracraft.models.ldm_convert import (
    SD2_TEXT_ENCODER_PREFIX,
    SDXL_TEXT_ENCODER_2_PREFIX,
    SDXL_TEXT_ENCODER_PREFIX,
    TEXT_ENCODER_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from loracraft.models.ldm_load import (
    clip_state_dict,
    open_clip_state_dict,
    text_encoder_from_state_dict,
    unet_from_ldm,
    vae_from_ldm,
)
from loracraft.models.prediction import prediction_of_file, with_prediction
from loracraft.models.tokenizer_source import load_tokenizers
from loracraft.models.vae_source import load_vae

# SD2's 768-v models (stable-diffusion-2, -2-1) are 2-base's configs with 768-pixel samples; their
# v-prediction reaches the scheduler config through `with_prediction`.
SD2_768_V_UNET = {"sample_size": 96}


def bundle_from_file(
    path: Path,
    vae: Path | None,
    tokenizer_path: str | os.PathLike | None,
    tokenizer_2_path: str | os.PathLike | None,
) -> ModelBundle:
    checkpoint = read_checkpoint(path)
    family = detect_family(checkpoint.tensors, path)
    prediction = prediction_of_file(checkpoint)
    tokenizer, tokenizer_2 = load_tokenizers(family, path, tokenizer_path, tokenizer_2_path)
    text_encoder = _text_encoder(checkpoint, family, tokenizer)
    text_encoder_2 = _text_encoder_2(checkpoint, tokenizer_2) if tokenizer_2 is not None else None
    unet_base = base_config(family, "unet")
    if family == "sd2" and prediction.v_parameterization:
        unet_base |= SD2_768_V_UNET
    unet_config = infer_config(
        "unet",
        _component(checkpoint, UNET_PREFIX, "UNet", family),
        family,
        checkpoint.metadata,
        path,
        base=unet_base,
        pooled_dim=text_encoder_2.config.projection_dim if text_encoder_2 is not None else None,
    )
    return ModelBundle(
        family=family,
        unet=unet_from_ldm(checkpoint.tensors, unet_config, path, family),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        vae=load_vae(vae, family) if vae is not None else _own_vae(checkpoint, family),
        scheduler_config=with_prediction(base_config(family, "scheduler"), prediction),
        source=path,
        vae_source=vae,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        prediction=prediction,
    )


def _text_encoder(checkpoint: CheckpointFile, family: str, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """SD1's and SDXL's CLIP ViT-L, or SD2's OpenCLIP ViT-H (which a few tools save in transformers'
    naming under SD1's prefix)."""
    if family == "sd2" and any(key.startswith(SD2_TEXT_ENCODER_PREFIX) for key in checkpoint.tensors):
        prefix = SD2_TEXT_ENCODER_PREFIX
        state_dict = open_clip_state_dict(checkpoint.tensors, prefix, sd2=True)
    else:
        prefix = SDXL_TEXT_ENCODER_PREFIX if family == "sdxl" else TEXT_ENCODER_PREFIX
        state_dict = clip_state_dict(checkpoint.tensors)
    _require(state_dict, checkpoint.path, "text encoder", prefix, family)
    config = infer_config("text_encoder", state_dict, family, checkpoint.metadata, checkpoint.path)
    return text_encoder_from_state_dict(state_dict, config | _token_ids(tokenizer), checkpoint.path, family)


def _text_encoder_2(checkpoint: CheckpointFile, tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    """SDXL's OpenCLIP ViT-bigG with its projection."""
    state_dict = open_clip_state_dict(checkpoint.tensors, SDXL_TEXT_ENCODER_2_PREFIX, sd2=False)
    _require(state_dict, checkpoint.path, "second text encoder", SDXL_TEXT_ENCODER_2_PREFIX, "sdxl")
    config = infer_config("text_encoder_2", state_dict, "sdxl", checkpoint.metadata, checkpoint.path)
    return text_encoder_from_state_dict(
        state_dict,
        config | _token_ids(tokenizer),
        checkpoint.path,
        "sdxl",
        "second text encoder",
        with_projection=True,
    )


def _token_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    # The special-token ids are the tokenizer's (the shipped configs hold placeholder ids 0, 1, 2).
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _require(state_dict: dict, path: Path, what: str, prefix: str, family: str) -> None:
    if not state_dict:
        raise UserError(
            f"{path} has no {what} (no {prefix}* tensors); use a complete {FAMILY_NAMES[family]} checkpoint"
        )


def _component(checkpoint: CheckpointFile, prefix: str, what: str, family: str) -> dict[str, torch.Tensor]:
    tensors = {
        key.removeprefix(prefix): value for key, value in checkpoint.tensors.items() if key.startswith(prefix)
    }
    _require(tensors, checkpoint.path, what, prefix, family)
    return tensors


def _own_vae(checkpoint: CheckpointFile, family: str) -> AutoencoderKL:
    ldm = {
        key.removeprefix(VAE_PREFIX): value
        for key, value in checkpoint.tensors.items()
        if key.startswith(VAE_PREFIX)
    }
    if not ldm:
        raise UserError(f"{checkpoint.path} has no VAE (no {VAE_PREFIX}* tensors); pass one with --vae")
    config = infer_config("vae", ldm, family, checkpoint.metadata, checkpoint.path)
    return vae_from_ldm(ldm, config, checkpoint.path, family)
