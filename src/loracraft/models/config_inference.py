"""diffusers configs for an SD1-layout LDM checkpoint, read from its tensor shapes and key names.

Each config starts from SD1.5's real one (`configs/sd1/*.json`) and overrides what the shapes tell, so a
real SD1.5 file and our tiny model go through the same code. The inputs are one component's LDM state
dict without its prefix (`input_blocks.1.0...`, `encoder.down.0...`, `text_model.embeddings...`).

Fields shapes cannot tell keep SD1.5's value when it fits, else the nearest value that does:
- UNet heads (`attention_head_dim`, which diffusers' SD1 configs use as the number of heads) and GroupNorm
  groups: SD1.5's 8 heads / 32 groups when they divide every width, else their largest divisor that does
  (`gcd(8, *widths)`), so any width builds a valid model;
- CLIP heads: width / 64 (CLIP ViT-L's head width), else `gcd(12, width)`;
- VAE groups like the UNet's; scaling factor 0.18215; sample sizes SD1.5's.
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

CLIP_HEAD_WIDTH = 64


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


def _indices(keys: Iterable[str], prefix: str) -> list[int]:
    """Sorted distinct integers that follow `prefix` in `keys` (`input_blocks.` -> [0, 1, ..., 11])."""
    return sorted({int(key[len(prefix) :].split(".", 1)[0]) for key in keys if key.startswith(prefix)})


def infer_unet_config(ldm: Mapping[str, torch.Tensor], base: Mapping[str, Any]) -> dict[str, Any]:
    keys = list(ldm)
    last_input = _indices(keys, "input_blocks.")[-1]
    samplers = [n for n in _indices(keys, "input_blocks.") if f"input_blocks.{n}.0.op.weight" in ldm]
    layers = samplers[0] - 1 if samplers else last_input
    step = layers + 1
    widths, down_types, up_types, depths = [], [], [], []
    for i in range((last_input + 1) // step):
        first = 1 + i * step
        widths.append(ldm[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0])
        has_attention = f"input_blocks.{first}.1.proj_in.weight" in ldm
        down_types.append("CrossAttnDownBlock2D" if has_attention else "DownBlock2D")
        depths.append(len(_indices(keys, f"input_blocks.{first}.1.transformer_blocks.")) or 1)
        up_has_attention = f"output_blocks.{i * step}.1.proj_in.weight" in ldm
        up_types.append("CrossAttnUpBlock2D" if up_has_attention else "UpBlock2D")
    attention_widths = [w for w, kind in zip(widths, down_types, strict=True) if kind != "DownBlock2D"]
    proj_in = ldm["middle_block.1.proj_in.weight"]
    return {
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
        "attention_head_dim": math.gcd(base["attention_head_dim"], *attention_widths, proj_in.shape[0]),
        "norm_num_groups": math.gcd(base["norm_num_groups"], *widths),
    }


def infer_vae_config(ldm: Mapping[str, torch.Tensor], base: Mapping[str, Any]) -> dict[str, Any]:
    keys = list(ldm)
    blocks = _indices(keys, "encoder.down.")
    layers = len(_indices(keys, "encoder.down.0.block."))
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
    return {
        **base,
        "vocab_size": vocab_size,
        "hidden_size": width,
        "intermediate_size": ldm["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": len(_indices(ldm, "text_model.encoder.layers.")),
        "num_attention_heads": heads,
        "max_position_embeddings": ldm["text_model.embeddings.position_embedding.weight"].shape[0],
    }


_INFER = {"unet": infer_unet_config, "vae": infer_vae_config, "text_encoder": infer_text_encoder_config}


def infer_config(
    component: str, ldm: Mapping[str, torch.Tensor], family: str, metadata: Mapping[str, str], source: object
) -> dict[str, Any]:
    """The family's shipped config for `component`, the shapes of `ldm` and the file's metadata on top."""
    try:
        config = _INFER[component](ldm, base_config(family, component))
    except KeyError as missing:
        raise UserError(
            f"{source}: its {component} lacks tensor {missing}; it is not a complete SD1 model"
        ) from None
    return {**config, **overrides_from_metadata(metadata, component)}
