"""diffusers -> original LDM (CompVis/SGM) names for the Stable Diffusion UNet, VAE and text encoders.

The UNet mapping is reference/lora-format.md §5, written in terms of `layers_per_block` and the block
types so SD1, SD2 and SDXL share it; the LoRA writer uses `unet_module_to_ldm` for SDXL's LDM-style
names. Everything here is the exact inverse of diffusers' `single_file_utils.convert_ldm_*_checkpoint`
and `convert_open_clip_checkpoint`, which the interop tests use as the oracle.

Where each part lives in a family's single file:
- SD1:  `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.text_model.*`
  (CLIP ViT-L in transformers' naming);
- SD2:  the same UNet and VAE, `cond_stage_model.model.*` (OpenCLIP ViT-H in OpenCLIP's naming);
- SDXL: the same UNet and VAE, `conditioner.embedders.0.transformer.text_model.*` (CLIP ViT-L) and
  `conditioner.embedders.1.model.*` (OpenCLIP ViT-bigG with its projection).
"""

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from loracraft.models.open_clip_convert import text_encoder_to_open_clip

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_ENCODER_PREFIX = "cond_stage_model.model."
SDXL_TEXT_ENCODER_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT_ENCODER_2_PREFIX = "conditioner.embedders.1.model."

_UNET_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_BLOCK = re.compile(
    r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.+))?"
)
_UNET_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.+))?")

_VAE_RESNET_PARTS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP_LEVEL = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
_VAE_BLOCK = re.compile(
    r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)"
)
_VAE_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _layers_per_block(unet_config: Mapping[str, Any]) -> int:
    layers = unet_config["layers_per_block"]
    if isinstance(layers, int):
        return layers
    if len(set(layers)) == 1:
        return layers[0]
    raise ValueError(f"LDM names need the same layers_per_block in every block, got {layers}")


def _rename_head(rest: str | None, table: Mapping[str, str], path: str) -> str | None:
    """Rename the first name of `rest` (e.g. `conv1.weight` -> `in_layers.2.weight`) through `table`."""
    if rest is None:
        return None
    for name, new_name in table.items():
        if rest == name or rest.startswith(name + "."):
            return new_name + rest[len(name) :]
    raise ValueError(f"no LDM name for diffusers module {path!r}")


def _join(block: str, rest: str | None) -> str:
    return block if rest is None else f"{block}.{rest}"


def unet_module_to_ldm(path: str, unet_config: Mapping[str, Any]) -> str:
    """The LDM path of a diffusers UNet module (or parameter) path, per lora-format.md §5.

    `up_blocks.0.upsamplers.0.conv` -> `output_blocks.2.1.conv` for SD1, `output_blocks.2.2.conv` for SDXL
    (the up-sampler sits after the attention in LDM, so its index is 2 when the up block has attentions).
    """
    for name, ldm_name in _UNET_TOP_LEVEL.items():
        if path == name or path.startswith(name + "."):
            return ldm_name + path[len(name) :]
    if match := _UNET_MID.fullmatch(path):
        kind, index, rest = match.groups()
        if kind == "attentions":
            return _join(f"middle_block.{2 * int(index) + 1}", rest)
        return _join(f"middle_block.{2 * int(index)}", _rename_head(rest, _UNET_RESNET_PARTS, path))
    match = _UNET_BLOCK.fullmatch(path)
    if match is None:
        raise ValueError(f"no LDM name for diffusers module {path!r}")
    side, block_index, kind, layer_index, rest = match.groups()
    i, j = int(block_index), int(layer_index)
    layers = _layers_per_block(unet_config)
    step = layers + 1  # LDM counts the down-/up-sampler as one more layer of the block
    if kind == "resnets":
        rest = _rename_head(rest, _UNET_RESNET_PARTS, path)
    if side == "down_blocks":
        if kind == "downsamplers":
            return _join(f"input_blocks.{(i + 1) * step}.0", _rename_head(rest, {"conv": "op"}, path))
        return _join(f"input_blocks.{1 + i * step + j}.{0 if kind == 'resnets' else 1}", rest)
    if kind == "upsamplers":
        has_attention = "Attn" in unet_config["up_block_types"][i]
        return _join(f"output_blocks.{i * step + layers}.{2 if has_attention else 1}", rest)
    return _join(f"output_blocks.{i * step + j}.{0 if kind == 'resnets' else 1}", rest)


def unet_state_dict_to_ldm(
    state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """diffusers UNet state dict -> LDM `diffusion_model` keys (without the `model.diffusion_model.` prefix)."""
    return {unet_module_to_ldm(key, unet_config): tensor for key, tensor in state_dict.items()}


def _vae_key_to_ldm(key: str, num_up_blocks: int) -> str:
    for name, ldm_name in _VAE_TOP_LEVEL.items():
        for part in ("encoder", "decoder"):
            if key.startswith(f"{part}.{name}."):
                return f"{part}.{ldm_name}{key[len(part) + 1 + len(name) :]}"
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    if match := _VAE_MID.fullmatch(key):
        part, kind, index, rest = match.groups()
        if kind == "attentions":
            return f"{part}.mid.attn_{int(index) + 1}.{_rename_head(rest, _VAE_ATTENTION_PARTS, key)}"
        return f"{part}.mid.block_{int(index) + 1}.{_rename_head(rest, _VAE_RESNET_PARTS, key)}"
    match = _VAE_BLOCK.fullmatch(key)
    if match is None:
        raise ValueError(f"no LDM name for diffusers VAE key {key!r}")
    side, block_index, kind, layer_index, rest = match.groups()
    if side == "encoder.down_blocks":
        block = f"encoder.down.{block_index}"
    else:
        # LDM numbers decoder blocks from the lowest resolution up; diffusers in execution order.
        block = f"decoder.up.{num_up_blocks - 1 - int(block_index)}"
    if kind == "resnets":
        return f"{block}.block.{layer_index}.{_rename_head(rest, _VAE_RESNET_PARTS, key)}"
    sampler = "downsample" if kind == "downsamplers" else "upsample"
    return f"{block}.{sampler}.{rest}"


def vae_state_dict_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> LDM keys (without the `first_stage_model.` prefix).

    LDM's mid-block attention uses 1x1 convolutions for q/k/v/proj_out, so those weights become 4-D.
    """
    up_blocks = {key.split(".")[2] for key in state_dict if key.startswith("decoder.up_blocks.")}
    converted = {}
    for key, tensor in state_dict.items():
        ldm_key = _vae_key_to_ldm(key, len(up_blocks))
        if ".mid.attn_" in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        converted[ldm_key] = tensor
    return converted


def text_encoder_state_dict_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> LDM keys `text_model.*` (without `cond_stage_model.transformer.`).

    transformers 4 names CLIPTextModel's parameters `text_model.*`, transformers 5 drops that prefix;
    LDM checkpoints always have it.
    """
    return {
        key if key.startswith("text_model.") else f"text_model.{key}": tensor
        for key, tensor in state_dict.items()
    }


def to_ldm_checkpoint(
    unet: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    text_encoder_2: nn.Module | None = None,
    family: str = "sd1",
) -> dict[str, torch.Tensor]:
    """A single-file checkpoint state dict in `family`'s original layout (what A1111, ComfyUI and kohya
    load); SDXL needs `text_encoder_2`."""
    checkpoint = _prefixed(UNET_PREFIX, unet_state_dict_to_ldm(unet.state_dict(), unet.config))
    checkpoint |= _prefixed(VAE_PREFIX, vae_state_dict_to_ldm(vae.state_dict()))
    if family == "sd1":
        checkpoint |= _prefixed(
            TEXT_ENCODER_PREFIX, text_encoder_state_dict_to_ldm(text_encoder.state_dict())
        )
    elif family == "sd2":
        open_clip = text_encoder_to_open_clip(text_encoder.state_dict(), unused_last_block=True)
        checkpoint |= _prefixed(SD2_TEXT_ENCODER_PREFIX, open_clip)
    elif family == "sdxl" and text_encoder_2 is not None:
        first = text_encoder_state_dict_to_ldm(text_encoder.state_dict())
        checkpoint |= _prefixed(SDXL_TEXT_ENCODER_PREFIX, first)
        open_clip = text_encoder_to_open_clip(text_encoder_2.state_dict(), unused_last_block=False)
        checkpoint |= _prefixed(SDXL_TEXT_ENCODER_2_PREFIX, open_clip)
    else:
        raise ValueError(f"no single-file layout for family {family!r} with these text encoders")
    return checkpoint


def _prefixed(prefix: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor for key, tensor in state_dict.items()}
