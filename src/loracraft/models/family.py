"""Which Stable Diffusion family a model is ("sd1", "sd2" or "sdxl"), from a single file's keys or a
diffusers folder's configs, and the one-line refusals for everything that is no LoRA base we train.

Refused with a reason: the SDXL refiner (LoRAs are trained on SDXL base), inpainting models (9-channel
UNet input; a LoRA trained on the base model applies to its inpainting variant too), other UNet inputs
(instruct-pix2pix, upscalers), and the other architectures people keep beside their SD models: SD3/3.5,
Flux, Stable Cascade, PixArt, AuraFlow, Hunyuan-DiT, Kolors and Playground v2.5.
"""

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from loracraft.errors import UserError
from loracraft.models.ldm_convert import UNET_PREFIX

FAMILIES = ("sd1", "sd2", "sdxl")
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
SD2_CONTEXT_DIM = 1024  # OpenCLIP ViT-H width; SD1's CLIP ViT-L gives 768
LATENT_CHANNELS = 4
INPAINTING_CHANNELS = 9  # latents + mask + masked-image latents
TRAINED_FAMILIES = "loracraft trains LoRAs for SD1.x, SD2.x and SDXL"

# Key endings that identify an architecture loracraft does not train; files store them with or without
# a `model.diffusion_model.` / `model.` prefix, so they are matched as suffixes.
_OTHER_ARCHITECTURES = (
    ("joint_blocks.0.context_block.adaLN_modulation.1.bias", "an SD3/SD3.5 model"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "a Flux model"),
    ("clip_txt_mapper.weight", "a Stable Cascade (stage C) model"),
    ("down_blocks.1.0.channelwise.0.weight", "a Stable Cascade (stage B) model"),
    ("double_layers.0.attn.w1q.weight", "an AuraFlow model"),
    ("mlp_t5.0.weight", "a Hunyuan-DiT model"),
    ("blocks.0.cross_attn.q_linear.weight", "a PixArt model"),
    ("encoder_hid_proj.weight", "a Kolors model"),
    ("edm_mean", "Playground v2.5 (an SDXL-shaped EDM model, not trained with SDXL's noise schedule)"),
)
# diffusers pipeline class-name prefixes in model_index.json, for the same architectures.
_OTHER_PIPELINES = (
    ("StableDiffusion3", "an SD3/SD3.5 model"),
    ("Flux", "a Flux model"),
    ("StableCascade", "a Stable Cascade model"),
    ("PixArt", "a PixArt model"),
    ("AuraFlow", "an AuraFlow model"),
    ("HunyuanDiT", "a Hunyuan-DiT model"),
    ("Kolors", "a Kolors model"),
)


def detect_family(tensors: Mapping[str, torch.Tensor], source: str | os.PathLike) -> str:
    """The family of an LDM single-file checkpoint; UserError naming `source` when it is none we train."""
    keys = tensors.keys()
    for suffix, what in _OTHER_ARCHITECTURES:
        if any(key == suffix or key.endswith("." + suffix) for key in keys):
            raise UserError(f"{source} is {what} (it has {suffix}); {TRAINED_FAMILIES}")
    if not any(key.startswith(UNET_PREFIX) for key in keys):
        raise UserError(f"{source} is not a Stable Diffusion checkpoint ({_what_else(keys)})")
    if any(key.startswith("conditioner.embedders.0.model.") for key in keys):
        raise UserError(_refiner(source))
    family = _file_family(tensors)
    conv_in = tensors.get(f"{UNET_PREFIX}input_blocks.0.0.weight")
    if conv_in is not None and conv_in.ndim == 4:
        _check_unet_input(conv_in.shape[1], family, source)
    return family


def _file_family(tensors: Mapping[str, torch.Tensor]) -> str:
    keys = tensors.keys()
    if any(key.startswith("conditioner.embedders.") for key in keys):
        return "sdxl"
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        return "sd2"
    if f"{UNET_PREFIX}label_emb.0.0.weight" in keys:
        return "sdxl"
    # SD2 files whose text encoder was saved in transformers' naming: SD2's UNet attends to 1024-wide
    # OpenCLIP states through Linear projections, SD1's to 768-wide CLIP states through 1x1 convolutions.
    return "sd2" if _linear_projection(tensors) or _context_dim(tensors) == SD2_CONTEXT_DIM else "sd1"


def _linear_projection(tensors: Mapping[str, torch.Tensor]) -> bool:
    proj_in = tensors.get(f"{UNET_PREFIX}middle_block.1.proj_in.weight")
    return proj_in is not None and proj_in.ndim == 2


def _context_dim(tensors: Mapping[str, torch.Tensor]) -> int | None:
    to_k = next(
        (
            tensor
            for key, tensor in tensors.items()
            if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")
        ),
        None,
    )
    return to_k.shape[1] if to_k is not None and to_k.ndim == 2 else None


def detect_folder_family(
    model_index: Mapping[str, Any], unet_config: Mapping[str, Any], source: str | os.PathLike
) -> str:
    """The family of a diffusers pipeline folder from its model_index.json and unet/config.json."""
    if unet_config.get("addition_embed_type") == "text_time":
        if not _has_component(model_index, "text_encoder"):
            raise UserError(_refiner(source))
        family = "sdxl"
    elif unet_config.get("cross_attention_dim") == SD2_CONTEXT_DIM or unet_config.get(
        "use_linear_projection"
    ):
        family = "sd2"
    else:
        family = "sd1"
    _check_unet_input(unet_config.get("in_channels", LATENT_CHANNELS), family, source)
    return family


def refuse_other_pipeline(model_index: Mapping[str, Any], source: str | os.PathLike) -> None:
    """UserError when model_index.json names a pipeline of an architecture loracraft does not train."""
    name = str(model_index.get("_class_name", ""))
    for prefix, what in _OTHER_PIPELINES:
        if name.startswith(prefix):
            raise UserError(f"{source} is {what} (its pipeline is {name}); {TRAINED_FAMILIES}")


def _has_component(model_index: Mapping[str, Any], name: str) -> bool:
    # A pipeline without a component lists it as [null, null] (the SDXL refiner's text_encoder).
    entry = model_index.get(name)
    return bool(entry) and any(part is not None for part in entry)


def _refiner(source: str | os.PathLike) -> str:
    return (
        f"{source} is the SDXL refiner, which is not a LoRA base: SDXL LoRAs are trained on SDXL base 1.0 "
        "or a model made from it; pass one of those"
    )


def _check_unet_input(channels: int, family: str, source: str | os.PathLike) -> None:
    if channels == LATENT_CHANNELS:
        return
    name = FAMILY_NAMES[family]
    if channels == INPAINTING_CHANNELS:
        raise UserError(
            f"{source} is an {name} inpainting model (its UNet takes 9 channels); train on the {name} base "
            "model instead: a LoRA trained on the base model applies to its inpainting variant too"
        )
    raise UserError(
        f"{source} is an {name} model whose UNet takes {channels} input channels, not 4 "
        "(instruct-pix2pix, an upscaler or a similar variant); train on a text-to-image base model"
    )


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
