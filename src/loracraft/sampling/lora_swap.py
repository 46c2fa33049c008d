"""Saved LoRA files on a base model for `loracraft sample`: added into its weights for a drawing, then the
weights put back exactly.

Each named module's weight W becomes W + multiplier * (alpha / rank) * up @ down in float32 (what A1111
and diffusers' fuse_lora compute; networks/merge_into_base.py), and the original tensor is copied back
afterwards, so the next LoRA starts from the untouched base. Every file is read, and matched to the base
model's modules, before anything is drawn: a missing file, a LoRA of another family or for another base
model is one line naming --lora (or the flag that chose the file).
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
from loracraft.networks.lora_input import LoRAModules, check_naming_family, read_lora_modules
from loracraft.networks.merge_into_base import lora_delta

FLAG = "lora"


@dataclass(frozen=True)
class LoRAFile:
    path: Path
    modules: LoRAModules
    flag: str = FLAG
    """The flag that chose the file, named in its errors."""

    @classmethod
    def read(cls, path: str | Path, flag: str = FLAG) -> LoRAFile:
        """The file's plain LoRA modules (no model needed yet: a bad file fails before the model loads)."""
        return cls(Path(path), read_lora_modules(str(path), flag), flag)

    def targets(self, base: dict[str, nn.Module], family: str) -> dict[str, nn.Module]:
        """The base model's module each of the file's modules changes (`base`: merge_into_base.base_modules)."""
        check_naming_family(self.modules, family, self.flag, str(self.path))
        targets = {}
        for name, parts in self.modules.items():
            module = base.get(name)
            if module is None:
                raise UserError(
                    f"--{self.flag} {self.path}: {name} matches no module of this {FAMILY_NAMES[family]} model; use a "
                    "LoRA made for this base model"
                )
            up, down = parts["lora_up.weight"], parts["lora_down.weight"]
            if up.dim() < 2 or up.shape[1] != down.shape[0]:
                raise UserError(
                    f"--{self.flag} {self.path}: {name}'s lora_up {tuple(up.shape)} does not fit its lora_down "
                    f"{tuple(down.shape)}; the file is damaged: re-download or re-save it"
                )
            made_for = (up.shape[0], prod(down.shape[1:]))
            if made_for != (module.weight.shape[0], prod(module.weight.shape[1:])):
                raise UserError(
                    f"--{self.flag} {self.path}: {name} changes a weight of shape {made_for}, but this model's is "
                    f"{tuple(module.weight.shape)}; the LoRA was made for another base model"
                )
            targets[name] = module
        return targets


@contextmanager
def lora_applied(lora: LoRAFile, targets: dict[str, nn.Module], multiplier: float) -> Iterator[None]:
    """The base model with `lora` added at `multiplier` inside the block, exactly as before after it."""
    originals = {name: module.weight.detach().clone() for name, module in targets.items()}
    try:
        with torch.no_grad():
            for name, module in targets.items():
                weight = module.weight
                delta = lora_delta(lora.modules[name]).to(weight.device).reshape(weight.shape)
                weight.copy_((weight.float() + multiplier * delta).to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, module in targets.items():
                module.weight.copy_(originals[name])
