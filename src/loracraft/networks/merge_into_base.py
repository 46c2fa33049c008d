"""--base_weights: LoRA files merged into the base model's weights before training (kohya's
"differential training": the new LoRA learns what is left beyond them).

Each named module's weight W becomes W + multiplier * (alpha / rank) * up @ down, computed in float32 and
cast back to W's dtype: the fused weight A1111 and diffusers' fuse_lora compute. A file's modules are
found under their kohya names for the model's family: every Linear and Conv2d of the U-Net (1x1 and
3x3 convolutions too, which kohya's conv_dim LoRAs reach in the ResNet blocks) and the text encoders'
CLIP-layer Linear modules, the only ones kohya's LoRA targets there.

Every file is read and checked before any weight changes, so a file for another family, a name no
module has or a shape that does not fit stops the run in one line with the model untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor, nn

from loracraft.errors import UserError
from loracraft.models.family import FAMILY_NAMES
from loracraft.networks.kohya_names import UNET_PREFIX, text_encoder_prefixes, unet_namer
from loracraft.networks.lora_input import (
    LoRAModules,
    check_naming_family,
    module_alpha,
    module_rank,
    read_lora_modules,
)
from loracraft.networks.targets import text_encoder_targets

FLAG = "base_weights"


def base_modules(unet: nn.Module, text_encoders: Sequence[nn.Module], family: str) -> dict[str, nn.Module]:
    """Every module a kohya LoRA file can name in this base model, by its kohya name."""
    name = unet_namer(family, unet.config)
    modules = {
        name(path): module
        for path, module in unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    }
    for model, prefix in zip(text_encoders, text_encoder_prefixes(family), strict=True):
        modules |= {target.name: target.module for target in text_encoder_targets(model, prefix)}
    return modules


def lora_delta(parts: dict[str, Tensor]) -> Tensor:
    """(alpha / rank) * up @ down in float32, shaped as the weight it applies to.

    A Conv2d LoRA's down is (rank, in, kh, kw) and its up (out, rank, 1, 1): multiplying the flattened
    matrices and restoring (out, in, kh, kw) is the convolution of the two kernels."""
    up, down = parts["lora_up.weight"].float(), parts["lora_down.weight"].float()
    delta = up.flatten(1) @ down.flatten(1)
    return delta.reshape(up.shape[0], *down.shape[1:]) * (module_alpha(parts) / module_rank(parts))


@dataclass(frozen=True)
class BaseLoRA:
    """One --base_weights file, matched to the base model's modules."""

    path: str
    multiplier: float
    modules: LoRAModules
    targets: dict[str, nn.Module]
    """The base module each of the file's modules changes."""


@dataclass(frozen=True)
class BaseMerge:
    """Every --base_weights file, read and checked; `apply` changes the model."""

    loras: tuple[BaseLoRA, ...]

    @classmethod
    def read(
        cls,
        unet: nn.Module,
        text_encoders: Sequence[nn.Module],
        family: str,
        files: Sequence[str],
        multipliers: Sequence[float],
    ) -> BaseMerge:
        """`text_encoders` are the base model's, in kohya's TE1, TE2 order; `multipliers` one per file
        (config.base_weights_multipliers; the config refuses any other count)."""
        modules = base_modules(unet, text_encoders, family)
        return cls(
            tuple(
                _matched(path, multiplier, modules, family)
                for path, multiplier in zip(files, multipliers, strict=True)
            )
        )

    def text_encoder_modules(self) -> list[tuple[str, str]]:
        """(file, module name) of every module inside a text encoder."""
        return [
            (lora.path, name)
            for lora in self.loras
            for name in sorted(lora.modules)
            if not name.startswith(UNET_PREFIX)
        ]

    def apply(self, echo: Callable[[str], None]) -> None:
        """Add each file's LoRA into the weights of the base model's modules, file by file."""
        with torch.no_grad():
            for lora in self.loras:
                for name, parts in lora.modules.items():
                    weight = lora.targets[name].weight
                    delta = lora.multiplier * lora_delta(parts).to(weight.device).reshape(weight.shape)
                    weight.copy_((weight.float() + delta).to(weight.dtype))
                echo(
                    f"merged --base_weights {lora.path} at multiplier {lora.multiplier:g} ({len(lora.modules)} modules)"
                )


def _matched(path: str, multiplier: float, modules: dict[str, nn.Module], family: str) -> BaseLoRA:
    lora = read_lora_modules(path, FLAG)
    check_naming_family(lora, family, FLAG, path)
    targets = {}
    for name, parts in lora.items():
        module = modules.get(name)
        if module is None:
            raise UserError(
                f"--base_weights {path}: {name} matches no module of this {FAMILY_NAMES[family]} model; use a "
                "kohya LoRA made for this base model"
            )
        _check_shape(path, name, parts, module.weight)
        targets[name] = module
    return BaseLoRA(path, multiplier, lora, targets)


def _check_shape(path: str, name: str, parts: dict[str, Tensor], weight: Tensor) -> None:
    up, down = parts["lora_up.weight"], parts["lora_down.weight"]
    if up.dim() < 2 or up.shape[1] != down.shape[0] or prod(up.shape[2:]) != 1:
        raise UserError(
            f"--base_weights {path}: {name}'s lora_up {tuple(up.shape)} does not fit its lora_down "
            f"{tuple(down.shape)}; the file is damaged: re-download or re-save it"
        )
    # Compared flattened: a 1x1 convolution's LoRA may be stored as Linear matrices, as consumers accept.
    made_for = (up.shape[0], *down.shape[1:])
    if (made_for[0], prod(made_for[1:])) != (weight.shape[0], prod(weight.shape[1:])):
        raise UserError(
            f"--base_weights {path}: {name} changes a weight of shape {made_for}, but this model's is "
            f"{tuple(weight.shape)}; the LoRA was made for another base model: use one made for this model"
        )
