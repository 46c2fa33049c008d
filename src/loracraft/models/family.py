"""Which Stable Diffusion family a model is: "sd1", "sd2" or "sdxl", from its keys or its diffusers configs."""

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from loracraft.errors import UserError
from loracraft.models.ldm_convert import UNET_PREFIX

FAMILIES = ("sd1", "sd2", "sdxl")
SD2_CONTEXT_DIM = 1024  # OpenCLIP ViT-H width; SD1's CLIP ViT-L gives 768


def detect_family(tensors: Mapping[str, torch.Tensor], source: str | os.PathLike) -> str:
    """The family of an LDM single-file checkpoint; UserError naming `source` when it is none."""
    keys = tensors.keys()
    if (
        any(key.startswith("conditioner.embedders.") for key in keys)
        or f"{UNET_PREFIX}label_emb.0.0.weight" in keys
    ):
        return "sdxl"
    if not any(key.startswith(UNET_PREFIX) for key in keys):
        raise UserError(f"{source} is not a Stable Diffusion checkpoint ({_what_else(keys)})")
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        return "sd2"
    context_dims = {
        tensor.shape[1]
        for key, tensor in tensors.items()
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")
    }
    return "sd2" if SD2_CONTEXT_DIM in context_dims else "sd1"


def detect_folder_family(model_index: Mapping[str, Any], unet_config: Mapping[str, Any]) -> str:
    """The family of a diffusers pipeline folder from its model_index.json and unet/config.json."""
    if "text_encoder_2" in model_index or unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if unet_config.get("cross_attention_dim") == SD2_CONTEXT_DIM else "sd1"


def _what_else(keys: Iterable[str]) -> str:
    keys = list(keys)
    if not keys:
        return "it holds no tensors"
    if any(key.startswith("lora_") or ".lora_" in key or key.startswith("lycoris_") for key in keys):
        return "it is a LoRA/LyCORIS file; give a base model such as SD1.5 as --pretrained_model_name_or_path"
    if all(
        key.startswith(("first_stage_model.", "encoder.", "decoder.", "quant_conv.", "post_quant_conv."))
        for key in keys
    ):
        return "it is a VAE alone; pass it as --vae together with a base model"
    if any(key.startswith(("down_blocks.", "mid_block.")) for key in keys):
        return "it holds diffusers-format UNet weights; pass the whole diffusers folder instead"
    return f"none of its {len(keys)} tensors is named model.diffusion_model.*"
