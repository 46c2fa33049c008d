"""Saved LoRA and LyCORIS files on a base model for `loracraft sample` and `loracraft grid`: added into its
weights for a drawing, then the weights put back exactly.

Each named layer's weight W becomes W + multiplier x ΔW in float32, ΔW being the change the module was
trained to make at strength 1 (networks/module_delta.py: (alpha / rank) up @ down for LoRA/LoCon, and
LoHa, LoKr, IA3, GLoRA, Diag-OFT, BOFT, full, DoRA and kohya's OFT as LyCORIS trains them); full
fine-tuning and norm adapters change the bias the same way. The multiplier scales the whole change, as
AUTOMATIC1111 applies it (reference/lora-format.md §3.1). The original tensors are copied back
afterwards, so the next file starts from the untouched base. Every file is read, and matched to the base
model's layers, before anything is drawn: a missing file, parts of no known type, a file of another
family or for another base model is one line naming --lora (or the flag that chose the file).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch
from torch import nn

from loracraft.errors import UserError
from loracraft.models.family import FAMILY_NAMES
from loracraft.networks.lora_input import (
    KOHYA_OFT_PREFIX,
    PLAIN_PARTS,
    LoRAModules,
    check_naming_family,
    module_type,
    read_modules,
)
from loracraft.networks.module_delta import PartsDoNotFit, module_bias_delta, module_delta

FLAG = "lora"


@dataclass(frozen=True)
class LoRAFile:
    path: Path
    modules: LoRAModules
    flag: str = FLAG
    """The flag that chose the file, named in its errors."""

    @classmethod
    def read(cls, path: str | Path, flag: str = FLAG) -> LoRAFile:
        """The file's modules, each of a known type (no model needed yet: a bad file fails before the
        model loads)."""
        modules = read_modules(str(path), flag)
        for name, parts in modules.items():
            if module_type(name, parts) is None:
                raise UserError(
                    f"--{flag} {path}: {name} has parts of no LoRA or LyCORIS type ({', '.join(sorted(parts))}); "
                    "give a kohya LoRA or LyCORIS file"
                )
        return cls(Path(path), modules, flag)

    def targets(self, base: dict[str, nn.Module], family: str) -> dict[str, nn.Module]:
        """The base model's layer each of the file's modules changes (`base`: its layers by kohya name,
        lora_columns.LoadedBase.modules)."""
        check_naming_family(self.modules, family, self.flag, str(self.path))
        targets = {}
        for name, parts in self.modules.items():
            # kohya's OFT names are its LoRA names with another prefix
            layer = base.get(
                "lora_unet_" + name.removeprefix(KOHYA_OFT_PREFIX)
                if name.startswith(KOHYA_OFT_PREFIX)
                else name
            )
            if layer is None:
                raise UserError(
                    f"--{self.flag} {self.path}: {name} matches no module of this {FAMILY_NAMES[family]} model; use a "
                    "LoRA made for this base model"
                )
            if set(parts) <= set(PLAIN_PARTS):
                self._check_lora_shapes(name, parts, layer)
            else:
                self._check_fit(name, parts, layer)
            targets[name] = layer
        return targets

    def _check_lora_shapes(self, name: str, parts: dict[str, torch.Tensor], layer: nn.Module) -> None:
        """A plain LoRA module: a misfit between its own factors, or with the layer, named as such."""
        up, down = parts["lora_up.weight"], parts["lora_down.weight"]
        if up.dim() < 2 or up.shape[1] != down.shape[0]:
            raise UserError(
                f"--{self.flag} {self.path}: {name}'s lora_up {tuple(up.shape)} does not fit its lora_down "
                f"{tuple(down.shape)}; the file is damaged: re-download or re-save it"
            )
        made_for = (up.shape[0], prod(down.shape[1:]))
        if made_for != (layer.weight.shape[0], prod(layer.weight.shape[1:])):
            raise UserError(
                f"--{self.flag} {self.path}: {name} changes a weight of shape {made_for}, but this model's is "
                f"{tuple(layer.weight.shape)}; the LoRA was made for another base model"
            )

    def _check_fit(self, name: str, parts: dict[str, torch.Tensor], layer: nn.Module) -> None:
        """Every other module: its change is computed once here, where a misfit is still one line."""
        try:
            module_delta(parts, layer.weight, name)
        except PartsDoNotFit as error:
            raise UserError(
                f"--{self.flag} {self.path}: {error}; the LoRA was made for another base model"
            ) from None
        bias = module_bias_delta(parts)
        if bias is not None and (layer.bias is None or bias.numel() != layer.bias.numel()):
            raise UserError(
                f"--{self.flag} {self.path}: {name} changes a bias of {bias.numel()} values, but this model's "
                f"layer has {0 if layer.bias is None else layer.bias.numel()}; the LoRA was made for another base model"
            )


@contextmanager
def lora_applied(lora: LoRAFile, targets: dict[str, nn.Module], multiplier: float) -> Iterator[None]:
    """The base model with `lora` added at `multiplier` inside the block, exactly as before after it."""
    originals = {
        name: [None if tensor is None else tensor.detach().clone() for tensor in _tensors(layer)]
        for name, layer in targets.items()
    }
    try:
        with torch.no_grad():
            for name, layer in targets.items():
                parts = lora.modules[name]
                _add(layer.weight, multiplier * module_delta(parts, layer.weight, name))
                bias_change = module_bias_delta(parts)
                if bias_change is not None:
                    _add(layer.bias, multiplier * bias_change)
        yield
    finally:
        with torch.no_grad():
            for name, layer in targets.items():
                for tensor, original in zip(_tensors(layer), originals[name], strict=True):
                    if tensor is not None:
                        tensor.copy_(original)


def _tensors(layer: nn.Module) -> list[torch.Tensor | None]:
    return [layer.weight, layer.bias]


def _add(tensor: torch.Tensor, change: torch.Tensor) -> None:
    """`tensor` + `change` computed in float32, stored in the tensor's own dtype."""
    change = change.to(tensor.device).reshape(tensor.shape)
    tensor.copy_((tensor.float() + change).to(tensor.dtype))
