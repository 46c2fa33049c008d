"""Where each module a LoRA file names lives in a single-file checkpoint (the original LDM layout): the
kohya module name -> the key of its weight (and bias) and, for OpenCLIP's stacked q/k/v, which rows.

A merge into a single file changes only these tensors, in the file's own tensor dict, so every other
key (EMA weights, the VAE, buffers) and every dtype stay as they were.

- U-Net: every Linear, Conv2d and affine norm of the diffusers U-Net, under the name kohya gives it
  (kohya_names.unet_namer: the diffusers path for SD1/SD2, the LDM path for SDXL), at its LDM path
  (ldm_convert.unet_module_to_ldm) under `model.diffusion_model.`. kohya's OFT names (`oft_unet_`) name
  the same modules as `lora_unet_`.
- Text encoders: the Linear layers of each CLIP encoder layer (q/k/v/out_proj, fc1, fc2: kohya's and
  LyCORIS' text-encoder targets), under `lora_te_` (SD1/SD2) or `lora_te1_`/`lora_te2_` (SDXL). CLIP
  ViT-L (SD1's, SDXL's first) is stored in transformers' naming, SD2's ViT-H and SDXL's bigG in
  OpenCLIP's, whose q, k and v are the three thirds of one `in_proj_weight` (open_clip_convert.py). An
  SD2 file in transformers' naming (a few tools write one) is read in that naming; SD2's unused last
  OpenCLIP block is no module of the model.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from loracraft.models.config_inference import key_indices, model_kwargs
from loracraft.models.ldm_convert import (
    SD2_TEXT_ENCODER_PREFIX,
    SDXL_TEXT_ENCODER_2_PREFIX,
    SDXL_TEXT_ENCODER_PREFIX,
    TEXT_ENCODER_PREFIX,
    UNET_PREFIX,
    unet_module_to_ldm,
)
from loracraft.models.open_clip_convert import open_clip_layer_weight
from loracraft.networks.kohya_names import text_encoder_lora_name, text_encoder_prefixes, unet_namer

CLIP_LINEAR_PARTS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
)
_UNET_LAYERS = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GroupNorm)
OFT_UNET_PREFIX = "oft_unet_"
LORA_UNET_PREFIX = "lora_unet_"


@dataclass(frozen=True)
class LdmWeight:
    """Where one module's weight is in a single file."""

    key: str
    """The weight's full key, e.g. `model.diffusion_model.input_blocks.1.1.proj_in.weight`."""
    third: int | None = None
    """OpenCLIP's stacked q/k/v: which third of the `in_proj_weight` rows is the module's (0, 1, 2)."""

    @property
    def bias_key(self) -> str:
        """`...weight` -> `...bias` (OpenCLIP: `in_proj_weight` -> `in_proj_bias`)."""
        return self.key.removesuffix("weight") + "bias"

    def rows(self, tensor: Tensor) -> Tensor:
        """The module's part of the file's weight (or bias) tensor: all of it, or its third; a view."""
        if self.third is None:
            return tensor
        size = tensor.shape[0] // 3
        return tensor[self.third * size : (self.third + 1) * size]


def module_key_name(name: str) -> str:
    """The name a module is found under here: kohya's OFT names are its LoRA names."""
    return LORA_UNET_PREFIX + name.removeprefix(OFT_UNET_PREFIX) if name.startswith(OFT_UNET_PREFIX) else name


def ldm_weights(keys: Collection[str], unet_config: Mapping[str, Any], family: str) -> dict[str, LdmWeight]:
    """kohya module name -> where its weight is, for every module a LoRA can name in a `family` single
    file with these tensor `keys`; `unet_config` is its U-Net's diffusers config (config_inference)."""
    weights = unet_ldm_weights(unet_config, family) | text_encoder_ldm_weights(keys, family)
    return {name: weight for name, weight in weights.items() if weight.key in keys}


def unet_ldm_weights(unet_config: Mapping[str, Any], family: str) -> dict[str, LdmWeight]:
    """Every U-Net Linear, Conv2d and affine norm, found on a U-Net of this config built without memory."""
    with init_empty_weights():
        unet = UNet2DConditionModel(**model_kwargs(unet_config))
    name = unet_namer(family, unet_config)
    return {
        name(path): LdmWeight(f"{UNET_PREFIX}{unet_module_to_ldm(path, unet_config)}.weight")
        for path, module in unet.named_modules()
        if isinstance(module, _UNET_LAYERS) and getattr(module, "weight", None) is not None
    }


def text_encoder_ldm_weights(keys: Collection[str], family: str) -> dict[str, LdmWeight]:
    """Every CLIP-layer Linear of the file's text encoders, in kohya's TE1, TE2 order."""
    weights = {}
    for kohya_prefix, (file_prefix, open_clip) in zip(
        text_encoder_prefixes(family), _text_encoder_layouts(keys, family), strict=True
    ):
        for index in _layers(keys, file_prefix, open_clip, drop_unused=family == "sd2"):
            for part in CLIP_LINEAR_PARTS:
                container, leaf = part.split(".", 1)
                name = text_encoder_lora_name(index, container, leaf, kohya_prefix)
                if open_clip:
                    key, third = open_clip_layer_weight(index, part)
                    weights[name] = LdmWeight(file_prefix + key, third)
                else:
                    weights[name] = LdmWeight(_clip_key(keys, file_prefix, f"encoder.layers.{index}.{part}"))
    return weights


def _text_encoder_layouts(keys: Collection[str], family: str) -> list[tuple[str, bool]]:
    """(file prefix, whether in OpenCLIP's naming) of each text encoder."""
    if family == "sdxl":
        return [(SDXL_TEXT_ENCODER_PREFIX, False), (SDXL_TEXT_ENCODER_2_PREFIX, True)]
    if family == "sd2" and any(key.startswith(SD2_TEXT_ENCODER_PREFIX) for key in keys):
        return [(SD2_TEXT_ENCODER_PREFIX, True)]
    return [(TEXT_ENCODER_PREFIX, False)]


def _layers(keys: Collection[str], prefix: str, open_clip: bool, drop_unused: bool) -> list[int]:
    if not open_clip:
        return key_indices(keys, f"{prefix}text_model.encoder.layers.") or key_indices(
            keys, f"{prefix}encoder.layers."
        )
    blocks = key_indices(keys, f"{prefix}transformer.resblocks.")
    return blocks[:-1] if drop_unused else blocks


def _clip_key(keys: Collection[str], prefix: str, path: str) -> str:
    """transformers' naming has `text_model.` before the encoder; some old SD1 files lack it."""
    key = f"{prefix}text_model.{path}.weight"
    return key if key in keys or f"{prefix}{path}.weight" not in keys else f"{prefix}{path}.weight"
