"""kohya module names: the part of every key in a LoRA file before the first dot.

A name is a prefix plus a module path with every `.` replaced by `_`. Consumers match these strings
exactly (reference/lora-format.md §1, §6), so they are built from fixed templates, never from whatever
path the installed library version happens to use.

U-Net: SD1/SD2 names use the diffusers module path (`lora_unet_down_blocks_0_attentions_0_proj_in`);
SDXL names use the LDM path kohya's own SDXL U-Net has (`lora_unet_input_blocks_4_1_proj_in`), which
A1111 needs for SDXL's `label_emb` and first up-sampler. Text encoders: `lora_te` for SD1/SD2's one,
`lora_te1` / `lora_te2` for SDXL's CLIP ViT-L and OpenCLIP ViT-bigG, in kohya's TE1, TE2 order.
"""

from collections.abc import Callable, Mapping
from typing import Any

from loracraft.models.ldm_convert import unet_module_to_ldm

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"
FAMILIES = ("sd1", "sd2", "sdxl")
_TEXT_ENCODER_PREFIXES = {"sd1": ("lora_te",), "sd2": ("lora_te",), "sdxl": ("lora_te1", "lora_te2")}


def unet_lora_name(module_path: str) -> str:
    """`lora_unet_` + a module path, e.g. `lora_unet_mid_block_attentions_0_proj_in`."""
    return f"{UNET_PREFIX}_{module_path.replace('.', '_')}"


def sdxl_unet_lora_name(diffusers_path: str, unet_config: Mapping[str, Any]) -> str:
    """SDXL name of a diffusers module: the LDM path, e.g. `down_blocks.1.attentions.0.proj_in` ->
    `lora_unet_input_blocks_4_1_proj_in`."""
    return unet_lora_name(unet_module_to_ldm(diffusers_path, unet_config))


def unet_namer(family: str, unet_config: Mapping[str, Any]) -> Callable[[str], str]:
    """The function from a diffusers U-Net module path to its kohya name, for a model family."""
    check_family(family)
    if family == "sdxl":
        return lambda path: sdxl_unet_lora_name(path, unet_config)
    return unet_lora_name


def text_encoder_prefixes(family: str) -> tuple[str, ...]:
    """One prefix per text encoder, in kohya's order: (`lora_te`,) or (`lora_te1`, `lora_te2`)."""
    check_family(family)
    return _TEXT_ENCODER_PREFIXES[family]


def text_encoder_lora_name(layer: int, container: str, leaf: str, prefix: str = TEXT_ENCODER_PREFIX) -> str:
    """CLIP encoder-layer name, e.g. `lora_te_text_model_encoder_layers_3_self_attn_q_proj`.

    The `text_model_` part is written even though transformers 5 `CLIPTextModel` has no `text_model`
    submodule: A1111 and ComfyUI only recognise the template with it.
    """
    return f"{prefix}_text_model_encoder_layers_{layer}_{container}_{leaf.replace('.', '_')}"


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
