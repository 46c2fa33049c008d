"""diffusers configs for an LDM single-file checkpoint, read from its tensor shapes and key names.

Each config starts from its family's real one (`configs/<family>/*.json`: SD1.5, SD2.1-base, SDXL base
1.0) and overrides what the shapes tell, so a real file and our tiny models go through the same code.
The inputs are one component's state dict without its file prefix (`input_blocks.1.0...`,
`encoder.down.0...`) and, for text encoders, in transformers' naming (`text_model.embeddings...`).

Fields shapes cannot tell keep the family's value when it fits, else the nearest value that does:
- UNet heads (`attention_head_dim`, which diffusers' SD configs use as the number of heads): SD1's one
  count for every block, 8, when it divides every width, else its largest divisor that does
  (`gcd(8, *widths)`); SD2's and SDXL's per-block counts, heads of 64 channels (width / 64), else the
  largest divisor of the width up to 8; GroupNorm groups like SD1's heads, from 32;
- CLIP heads: width / 64 (CLIP's and OpenCLIP's head width), else `gcd(family's heads, width)`;
- SDXL's size embedding width: what the add-embedding input leaves after TE2's pooled output, over the
  six size values (original height/width, crop top/left, target height/width);
- VAE groups like the UNet's; scaling factor and sample sizes the family's.
A file whose real values differ carries them as metadata (`config_metadata.py`), which wins over these.
"""

import json
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import torch

from loracraft.errors import UserError
from loracraft.models.config_metadata import overrides_from_metadata
from loracraft.models.family import FAMILY_NAMES

CLIP_HEAD_WIDTH = 64
UNET_HEAD_WIDTH = 64  # SD2's and SDXL's attention heads
MAX_FALLBACK_HEADS = 8
SDXL_SIZE_VALUES = 6


def base_config(family: str, component: str) -> dict[str, Any]:
    """A shipped diffusers config: component is "unet", "vae", "text_encoder" or "scheduler"."""
    text = (
        resources.files("loracraft.models")
        .joinpath("configs", family, f"{component}.json")
        .read_text("utf-8")
    )
    return json.loads(text)


def model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without diffusers' bookkeeping entries (`_class_name`, ...), fit for a constructor."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def key_indices(keys: Iterable[str], prefix: str) -> list[int]:
    """Sorted distinct integers that follow `prefix` in `keys` (`input_blocks.` -> [0, 1, ..., 11])."""
    return sorted({int(key[len(prefix) :].split(".", 1)[0]) for key in keys if key.startswith(prefix)})


def infer_unet_config(
    ldm: Mapping[str, torch.Tensor], base: Mapping[str, Any], pooled_dim: int | None = None
) -> dict[str, Any]:
    """`pooled_dim`: the width of SDXL TE2's pooled output, which feeds the add-embedding with the sizes."""
    keys = list(ldm)
    last_input = key_indices(keys, "input_blocks.")[-1]
    samplers = [n for n in key_indices(keys, "input_blocks.") if f"input_blocks.{n}.0.op.weight" in ldm]
    layers = samplers[0] - 1 if samplers else last_input
    step = layers + 1
    widths, down_types, up_types, depths = [], [], [], []
    for i in range((last_input + 1) // step):
        first = 1 + i * step
        widths.append(ldm[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0])
        has_attention = f"input_blocks.{first}.1.proj_in.weight" in ldm
        down_types.append("CrossAttnDownBlock2D" if has_attention else "DownBlock2D")
        depths.append(len(key_indices(keys, f"input_blocks.{first}.1.transformer_blocks.")) or 1)
        up_has_attention = f"output_blocks.{i * step}.1.proj_in.weight" in ldm
        up_types.append("CrossAttnUpBlock2D" if up_has_attention else "UpBlock2D")
    attention_widths = [w for w, kind in zip(widths, down_types, strict=True) if kind != "DownBlock2D"]
    proj_in = ldm["middle_block.1.proj_in.weight"]
    config = {
        **base,
        "in_channels": ldm["input_blocks.0.0.weight"].shape[1],
        "out_channels": ldm["out.2.weight"].shape[0],
        "block_out_channels": widths,
        "layers_per_block": layers,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else depths,
        "cross_attention_dim": ldm["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1],
        "use_linear_projection": proj_in.ndim == 2,
        "attention_head_dim": _unet_heads(
            base["attention_head_dim"], widths, [*attention_widths, proj_in.shape[0]]
        ),
        "norm_num_groups": math.gcd(base["norm_num_groups"], *widths),
    }
    if "label_emb.0.0.weight" in ldm:
        config |= _addition_embedding(ldm["label_emb.0.0.weight"].shape[1], base, pooled_dim)
    return config


def _unet_heads(base_heads: int | list[int], widths: list[int], attention_widths: list[int]) -> Any:
    if isinstance(base_heads, int):
        return math.gcd(base_heads, *attention_widths)
    return [
        width // UNET_HEAD_WIDTH
        if width % UNET_HEAD_WIDTH == 0
        else max(n for n in range(1, MAX_FALLBACK_HEADS + 1) if width % n == 0)
        for width in widths
    ]


def _addition_embedding(input_dim: int, base: Mapping[str, Any], pooled_dim: int | None) -> dict[str, Any]:
    time_dim = base["addition_time_embed_dim"]
    sizes = input_dim - pooled_dim if pooled_dim is not None else 0
    if sizes > 0 and sizes % SDXL_SIZE_VALUES == 0:
        time_dim = sizes // SDXL_SIZE_VALUES
    return {
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_dim,
        "projection_class_embeddings_input_dim": input_dim,
    }


def infer_vae_config(ldm: Mapping[str, torch.Tensor], base: Mapping[str, Any]) -> dict[str, Any]:
    keys = list(ldm)
    blocks = key_indices(keys, "encoder.down.")
    layers = len(key_indices(keys, "encoder.down.0.block."))
    widths = [ldm[f"encoder.down.{i}.block.{layers - 1}.conv2.weight"].shape[0] for i in blocks]
    return {
        **base,
        "in_channels": ldm["encoder.conv_in.weight"].shape[1],
        "out_channels": ldm["decoder.conv_out.weight"].shape[0],
        "latent_channels": ldm["decoder.conv_in.weight"].shape[1],
        "block_out_channels": widths,
        "layers_per_block": layers,
        "down_block_types": ["DownEncoderBlock2D"] * len(blocks),
        "up_block_types": ["UpDecoderBlock2D"] * len(blocks),
        "norm_num_groups": math.gcd(base["norm_num_groups"], *widths),
        "use_quant_conv": "quant_conv.weight" in ldm,
        "use_post_quant_conv": "post_quant_conv.weight" in ldm,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in ldm,
    }


def infer_text_encoder_config(ldm: Mapping[str, torch.Tensor], base: Mapping[str, Any]) -> dict[str, Any]:
    vocab_size, width = ldm["text_model.embeddings.token_embedding.weight"].shape
    heads = (
        width // CLIP_HEAD_WIDTH
        if width % CLIP_HEAD_WIDTH == 0
        else math.gcd(base["num_attention_heads"], width)
    )
    config = {
        **base,
        "vocab_size": vocab_size,
        "hidden_size": width,
        "intermediate_size": ldm["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": len(key_indices(ldm, "text_model.encoder.layers.")),
        "num_attention_heads": heads,
        "max_position_embeddings": ldm["text_model.embeddings.position_embedding.weight"].shape[0],
    }
    if "text_projection.weight" in ldm:
        config["projection_dim"] = ldm["text_projection.weight"].shape[0]
    return config


_INFER = {
    "unet": infer_unet_config,
    "vae": infer_vae_config,
    "text_encoder": infer_text_encoder_config,
    "text_encoder_2": infer_text_encoder_config,
}


def infer_config(
    component: str,
    ldm: Mapping[str, torch.Tensor],
    family: str,
    metadata: Mapping[str, str],
    source: object,
    *,
    base: Mapping[str, Any] | None = None,
    pooled_dim: int | None = None,
) -> dict[str, Any]:
    """`base` (the family's shipped config for `component` unless given), the shapes of `ldm` and the
    file's metadata on top."""
    base = base_config(family, component) if base is None else base
    hints = {"pooled_dim": pooled_dim} if component == "unet" else {}
    try:
        config = _INFER[component](ldm, base, **hints)
    except KeyError as missing:
        raise UserError(
            f"{source}: its {component} lacks tensor {missing}; it is not a complete {FAMILY_NAMES[family]} model"
        ) from None
    return {**config, **overrides_from_metadata(metadata, component)}
