"""kohya module names: the part of every key in a LoRA file before the first dot.

A name is a prefix plus a module path with every `.` replaced by `_`. Consumers match these strings
exactly (reference/lora-format.md §1, §6), so they are built from fixed templates, never from whatever
path the installed library version happens to use.

SD1/SD2 U-Net names use the diffusers module path. SDXL will use the LDM path instead (via
`loracraft.models.ldm_convert.unet_module_to_ldm`) and the prefixes `lora_te1`/`lora_te2`; that is a
second U-Net naming function and other prefixes passed to the same target functions.
"""

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"


def unet_lora_name(diffusers_path: str) -> str:
    """SD1/SD2 name: `lora_unet_` + the diffusers module path, e.g. `lora_unet_mid_block_attentions_0_proj_in`."""
    return f"{UNET_PREFIX}_{diffusers_path.replace('.', '_')}"


def text_encoder_lora_name(layer: int, container: str, leaf: str, prefix: str = TEXT_ENCODER_PREFIX) -> str:
    """CLIP encoder-layer name, e.g. `lora_te_text_model_encoder_layers_3_self_attn_q_proj`.

    The `text_model_` part is written even though transformers 5 `CLIPTextModel` has no `text_model`
    submodule: A1111 and ComfyUI only recognise the template with it.
    """
    return f"{prefix}_text_model_encoder_layers_{layer}_{container}_{leaf.replace('.', '_')}"
