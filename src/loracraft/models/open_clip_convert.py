"""transformers CLIP text model -> OpenCLIP names: how SD2 and SDXL files store their OpenCLIP encoders.

The exact inverse of diffusers' `convert_open_clip_checkpoint` (the interop tests' oracle). OpenCLIP
keeps q, k and v as one `in_proj` of a MultiheadAttention, stacked in that order, and its
`text_projection` as a bare matrix applied as `x @ P` (a Linear's weight is `P.T`).

SD2 conditions on the penultimate of OpenCLIP ViT-H's 24 blocks, through `ln_final`; diffusers' (and
kohya's) CLIPTextModel therefore holds 23 layers, and the file 24. Writing SD2 adds the unused 24th
block as a copy of the 23rd and an identity `text_projection`, as kohya writes dummies there, so the
file has the layout A1111 and ComfyUI expect; loading drops them again.
"""

import math
import re
from collections.abc import Mapping

import torch

# CLIP's learned temperature is clamped at 100; real SD2/SDXL files hold log(100).
LOGIT_SCALE = math.log(100)

_TOP_LEVEL = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_LAYER_PARTS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_QKV = ("q_proj", "k_proj", "v_proj")


def open_clip_layer_weight(index: int, part: str) -> tuple[str, int | None]:
    """Where an OpenCLIP file holds the weight of CLIP layer `index`'s Linear `part` (`self_attn.q_proj`,
    `mlp.fc1`, ...): its key without the file's prefix, and for q, k and v which third of the stacked
    in_proj rows (0, 1, 2; None for the others)."""
    name = part.removeprefix("self_attn.")
    if name in _QKV:
        return f"transformer.resblocks.{index}.attn.in_proj_weight", _QKV.index(name)
    return f"transformer.resblocks.{index}.{_LAYER_PARTS[part]}.weight", None


def text_encoder_to_open_clip(
    state_dict: Mapping[str, torch.Tensor], *, unused_last_block: bool
) -> dict[str, torch.Tensor]:
    """A CLIPTextModel(WithProjection) state dict -> OpenCLIP keys (without the file's prefix)."""
    bare = {
        key.removeprefix("text_model."): tensor
        for key, tensor in state_dict.items()
        if not key.endswith("position_ids")
    }
    converted = {"logit_scale": torch.tensor(LOGIT_SCALE)}
    layers = set()
    for key, tensor in bare.items():
        if key == "text_projection.weight":
            converted["text_projection"] = tensor.T.contiguous()
        elif key in _TOP_LEVEL:
            converted[_TOP_LEVEL[key]] = tensor
        elif match := _LAYER.fullmatch(key):
            index, part, kind = match.groups()
            layers.add(int(index))
            if part.removeprefix("self_attn.") not in _QKV:
                converted[f"transformer.resblocks.{index}.{_LAYER_PARTS[part]}.{kind}"] = tensor
        else:
            raise ValueError(f"no OpenCLIP name for text encoder key {key!r}")
    for index in sorted(layers):
        for kind in ("weight", "bias"):
            parts = [bare[f"encoder.layers.{index}.self_attn.{name}.{kind}"] for name in _QKV]
            converted[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(parts)
    if unused_last_block:
        _add_unused_block(converted, len(layers))
    return converted


def _add_unused_block(converted: dict[str, torch.Tensor], layers: int) -> None:
    last = f"transformer.resblocks.{layers - 1}."
    for key in [key for key in converted if key.startswith(last)]:
        # A copy, not a view: safetensors refuses tensors that share memory.
        converted[f"transformer.resblocks.{layers}.{key[len(last) :]}"] = converted[key].clone()
    width = converted["token_embedding.weight"].shape[1]
    converted["text_projection"] = torch.eye(width, dtype=converted["token_embedding.weight"].dtype)
