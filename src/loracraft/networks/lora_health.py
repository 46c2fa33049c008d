"""What a LoRA file's numbers say about its training: modules that change nothing, values flushed to
exactly 0.0, NaN and Inf, and how much each module changes its layer.

kohya starts every LoRA with lora_up at zero (LyCORIS starts one factor of each type at zero), so a
module whose zero factor never moved changes nothing: it got no gradient, or its updates were too small
for the precision it trained in (fp16 underflow; seed 000 and kohya's check_lora_weights.py, sd-scripts
#821, look for these zeros). A module the run could not train is no fault: with clip_skip N the last N-1
layers of the text encoder never reach the U-Net, and SDXL always reads its first text encoder's
penultimate layer. A NaN or Inf anywhere breaks every image the module touches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from loracraft.networks.module_delta import module_delta, weight_free

NOTABLE_ZERO_FRACTION = 0.01
"""A trained tensor's values are almost never exactly 0.0 in fp32; from 1% on, they were flushed."""
_SCALAR_PARTS = ("alpha", "on_input")
# The factors whose product is the module's change, by type: one of them all zero makes it zero.
_PRODUCT_FACTORS = {
    "lora": ("lora_up.weight", "lora_down.weight", "lora_mid.weight"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
}
_TE_LAYER = re.compile(r"^(lora_te[12]?)_text_model_encoder_layers_(\d+)_")


@dataclass(frozen=True)
class ZeroValues:
    """A tensor with many values exactly 0.0 (but not all)."""

    key: str
    zeros: int
    size: int

    @property
    def fraction(self) -> float:
        return self.zeros / self.size


@dataclass(frozen=True)
class NonFinite:
    key: str
    nan: int
    inf: int


@dataclass(frozen=True)
class Unchanged:
    """A module that changes nothing, and why (e.g. "lora_up all zero")."""

    module: str
    why: str
    by_design: str | None = None
    """Why the run could not train it (clip_skip, SDXL's first text encoder), or None: then it is a fault."""


def module_norm(name: str, algo: str, parts: Mapping[str, Tensor]) -> tuple[float, str]:
    """(Frobenius norm, of what): of the module's change at strength 1 ("delta") where it needs no base
    weight, else of its own tensors ("tensors")."""
    if weight_free(parts, name):
        return float(torch.linalg.vector_norm(module_delta(parts, None, name))), "delta"
    squares = sum(
        float(tensor.float().square().sum()) for part, tensor in parts.items() if part not in _SCALAR_PARTS
    )
    return math.sqrt(squares), "tensors"


def unchanged_reason(algo: str, parts: Mapping[str, Tensor]) -> str | None:
    """Why the module changes nothing (a zero factor, every tensor zero), or None when it changes its layer."""
    factors = _PRODUCT_FACTORS.get(algo)
    if factors is not None:
        zero = next((part for part in factors if part in parts and not parts[part].any()), None)
        return None if zero is None else f"{zero.removesuffix('.weight')} all zero"
    tensors = [tensor for part, tensor in parts.items() if part not in (*_SCALAR_PARTS, "rescale")]
    return "every tensor all zero" if tensors and not any(tensor.any() for tensor in tensors) else None


def zero_alpha(parts: Mapping[str, Tensor]) -> bool:
    """An alpha of 0: A1111 and ComfyUI apply the module at strength 0 (kohya and LyCORIS read it as the
    rank)."""
    return "alpha" in parts and float(parts["alpha"]) == 0.0


def unused_layers(names: list[str], family: str | None, clip_skip: int | None) -> dict[str, str]:
    """Module name -> why the run could not train it: the text-encoder layers after the one the U-Net
    reads (clip_skip N: the last N-1 of SD1/SD2's encoder; SDXL: always TE1's last)."""
    last: dict[str, int] = {}
    for name in names:
        if match := _TE_LAYER.match(name):
            last[match[1]] = max(last.get(match[1], -1), int(match[2]))
    skipped = {}
    if family == "sdxl" and "lora_te1" in last:
        skipped["lora_te1"] = (1, "SDXL: the U-Net never sees its first text encoder's last layer")
    elif clip_skip and clip_skip > 1:
        layers = "last layer" if clip_skip == 2 else f"last {clip_skip - 1} layers"
        for prefix in ("lora_te", "lora_te1"):
            if prefix in last:
                skipped[prefix] = (
                    clip_skip - 1,
                    f"clip_skip {clip_skip}: the U-Net never sees the text encoder's {layers}",
                )
    unused = {}
    for name in names:
        match = _TE_LAYER.match(name)
        if match and match[1] in skipped:
            count, why = skipped[match[1]]
            if int(match[2]) > last[match[1]] - count:
                unused[name] = why
    return unused


def unchanged_modules(
    modules: Mapping[str, Mapping[str, Tensor]], types: Mapping[str, str], unused: Mapping[str, str]
) -> list[Unchanged]:
    """Every module that changes nothing, with the reason the run could not train it where there is one."""
    found = []
    for name, parts in modules.items():
        why = unchanged_reason(types[name], parts)
        if why is not None:
            found.append(Unchanged(name, why, unused.get(name)))
    return found


def zero_values(modules: Mapping[str, Mapping[str, Tensor]]) -> list[ZeroValues]:
    """Tensors with at least NOTABLE_ZERO_FRACTION of their values exactly 0.0 but not all, most first."""
    found = []
    for name, parts in modules.items():
        for part, tensor in parts.items():
            if part in _SCALAR_PARTS or tensor.numel() < 2:
                continue
            zeros = int((tensor == 0).sum())
            if 0 < zeros < tensor.numel() and zeros >= NOTABLE_ZERO_FRACTION * tensor.numel():
                found.append(ZeroValues(f"{name}.{part}", zeros, tensor.numel()))
    return sorted(found, key=lambda item: (-item.fraction, item.key))


def non_finite(modules: Mapping[str, Mapping[str, Tensor]]) -> list[NonFinite]:
    """Tensors holding NaN or Inf."""
    found = []
    for name, parts in modules.items():
        for part, tensor in parts.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                nan = int(torch.isnan(tensor).sum())
                found.append(NonFinite(f"{name}.{part}", nan, int((~torch.isfinite(tensor)).sum()) - nan))
    return sorted(found, key=lambda item: item.key)
