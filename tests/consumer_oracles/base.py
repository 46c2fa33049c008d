"""The base model as the consumers see it: every module they can patch, and the parts of a module's
keys they all speak of (lora-format.md §2)."""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

CLIP_LAYER = re.compile(r"(?:text_model\.)?encoder\.layers\.(\d+)\.(.+)")
OPEN_CLIP_ENCODERS = {("sd2", "te1"), ("sdxl", "te2")}
"""(family, text encoder) pairs that SD checkpoints, and so A1111, hold in open_clip's naming."""
ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
PROGRAM = {"a1111": "A1111", "comfyui": "ComfyUI", "forge": "Forge"}

LORA_PARTS = frozenset(
    {"lora_up.weight", "lora_down.weight", "lora_mid.weight", "lora_A.weight", "lora_B.weight"}
)
LOHA_PARTS = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
LOKR_PARTS = frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
GLORA_PARTS = frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight"})


def us(path: str) -> str:
    return path.replace(".", "_")


def has_lokr_factors(parts: set[str]) -> bool:
    """Both Kronecker factors, each whole or as its two low-rank halves."""
    return ("lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts) and (
        "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts
    )


@dataclass(frozen=True)
class BaseModule:
    name: str
    component: str  # "unet", "te1" or "te2"
    path: str
    kind: str  # "linear", "conv" or "norm"
    weight_shape: tuple[int, ...]
    has_bias: bool

    @property
    def clip_layer(self) -> tuple[int, str]:
        """(layer, part such as `self_attn.q_proj`) of a text-encoder module."""
        match = CLIP_LAYER.fullmatch(self.path)
        return int(match[1]), match[2]


@dataclass(frozen=True)
class BaseModel:
    family: str
    modules: Mapping[str, BaseModule]
    unet_config: Mapping[str, Any]
    names_by_id: Mapping[int, str]

    def name_of(self, module: nn.Module) -> str:
        return self.names_by_id[id(module)]


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
        return "norm"
    return None


def base_model(family: str, unet: nn.Module, text_encoders: Sequence[nn.Module]) -> BaseModel:
    """Every Linear, Conv2d and affine norm of a diffusers U-Net and of each CLIP encoder layer of its text
    encoders (kohya's TE1, TE2 order)."""
    assert len(text_encoders) == (2 if family == "sdxl" else 1), (family, len(text_encoders))
    components = [("unet", unet, None)] + [
        (f"te{index}", model, CLIP_LAYER) for index, model in enumerate(text_encoders, 1)
    ]
    modules, names_by_id = {}, {}
    for component, model, only in components:
        for path, module in model.named_modules():
            kind = _kind(module)
            if kind is None or (only is not None and not only.fullmatch(path)):
                continue
            name = f"{component}.{path}"
            modules[name] = BaseModule(
                name, component, path, kind, tuple(module.weight.shape), module.bias is not None
            )
            names_by_id[id(module)] = name
    return BaseModel(family, modules, dict(unet.config), names_by_id)


def dora_on_output(dora_scale: Tensor, module: BaseModule) -> bool:
    """LyCORIS' default layout, [out, 1(, 1, 1)] (wd_on_output); [1, in(, 1, 1)] is the other."""
    return dora_scale.shape[0] == module.weight_shape[0] != 1
