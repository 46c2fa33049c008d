"""LoRA files merged into a base model's weights (`loracraft merge --sd_model`, kohya's merge_lora.py and
sdxl_merge_lora.py): every type whose change is a weight delta (networks/module_delta.py).

Each module's weight becomes W + ratio × ΔW, its bias b + ratio × Δb for the types that change one
(full, norm). Files are merged one after the other, each onto the weights the previous left, as A1111 and
ComfyUI patch several LoRAs: for the types whose change depends on W (OFT, IA3, GLoRA, DoRA) the order
counts. The arithmetic is in the working precision (float32 unless --precision says otherwise), and each
changed tensor is cast back to its own dtype at the end (or to --save_precision).

Two kinds of base:
- a single file's own tensor dict (`CheckpointWeights`): only the tensors a LoRA names change, found
  through models/ldm_keys.py (OpenCLIP's q, k, v as rows of one in_proj); every other key, EMA weights
  included, and every dtype stay as they were;
- a loaded model's modules (`ModuleWeights`), for a diffusers folder written out again.
A module name the model does not have, a file for another family or parts that do not fit their layer
stop the merge in one line naming the file; the output is written only after every file merged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from loracraft.errors import UserError
from loracraft.models.family import FAMILY_NAMES
from loracraft.models.ldm_keys import LdmWeight, module_key_name
from loracraft.networks.lora_input import LoRAModules, check_naming_family
from loracraft.networks.module_delta import PartsDoNotFit, module_bias_delta, module_delta

FLAG = "--models"


@dataclass(frozen=True)
class LoRAInput:
    """One LoRA file to merge, read, at its ratio."""

    path: str
    ratio: float
    modules: LoRAModules
    metadata: Mapping[str, str]


class BaseWeights(Protocol):
    """The weights a merge changes, by kohya module name, as working tensors changed in place."""

    family: str

    def has(self, name: str) -> bool:
        """Whether the model has the module."""

    def weight(self, name: str) -> Tensor:
        """The module's working weight."""

    def bias(self, name: str) -> Tensor | None:
        """The module's working bias (None: it has none)."""


class CheckpointWeights:
    """A single file's tensors: a working copy (in the working dtype, on the device) of each tensor a
    LoRA changes, made when first asked for; `merged()` gives the file's tensors with the changes."""

    def __init__(
        self,
        tensors: Mapping[str, Tensor],
        locations: Mapping[str, LdmWeight],
        family: str,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.tensors, self.locations, self.family = tensors, locations, family
        self.dtype, self.device = dtype, device
        self.working: dict[str, Tensor] = {}

    def has(self, name: str) -> bool:
        return module_key_name(name) in self.locations

    def weight(self, name: str) -> Tensor:
        where = self.locations[module_key_name(name)]
        return where.rows(self._working(where.key))

    def bias(self, name: str) -> Tensor | None:
        where = self.locations[module_key_name(name)]
        return where.rows(self._working(where.bias_key)) if where.bias_key in self.tensors else None

    def _working(self, key: str) -> Tensor:
        if key not in self.working:
            self.working[key] = self.tensors[key].to(device=self.device, dtype=self.dtype, copy=True)
        return self.working[key]

    def merged(self, save_dtype: torch.dtype | None) -> dict[str, Tensor]:
        """Every tensor of the file: the changed ones cast back to their own dtype, every floating one to
        `save_dtype` when given; the others are the file's own tensors."""
        merged = dict(self.tensors)
        for key, tensor in self.working.items():
            merged[key] = tensor.to(device="cpu", dtype=self.tensors[key].dtype)
        if save_dtype is not None:
            merged = {
                key: tensor.to(save_dtype) if tensor.is_floating_point() else tensor
                for key, tensor in merged.items()
            }
        return merged


class ModuleWeights:
    """A loaded model's layers by kohya name; their weights change in place."""

    def __init__(self, modules: Mapping[str, nn.Module], family: str):
        self.modules, self.family = modules, family

    def has(self, name: str) -> bool:
        return module_key_name(name) in self.modules

    def weight(self, name: str) -> Tensor:
        return self.modules[module_key_name(name)].weight.data

    def bias(self, name: str) -> Tensor | None:
        bias = self.modules[module_key_name(name)].bias
        return None if bias is None else bias.data


def check_inputs(inputs: Sequence[LoRAInput], base: BaseWeights) -> None:
    """Before any arithmetic: every file is for the base model's family and names only its modules."""
    for lora in inputs:
        check_naming_family(lora.modules, base.family, FLAG.removeprefix("--"), lora.path)
        missing = sorted(name for name in lora.modules if not base.has(name))
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(
                f"{FLAG} {lora.path}: {missing[0]}{more} matches no module of this {FAMILY_NAMES[base.family]} "
                "model; it is a LoRA for another model: use one made for this model"
            )


def merge_into(base: BaseWeights, inputs: Sequence[LoRAInput], echo: Callable[[str], None]) -> None:
    """Merge every file, in order, into `base`'s weights (checked with `check_inputs` first)."""
    check_inputs(inputs, base)
    with torch.no_grad():
        for lora in inputs:
            for name, parts in lora.modules.items():
                _merge_module(base, lora, name, parts)
            echo(f"merged {lora.path} at ratio {lora.ratio:g}: {len(lora.modules)} modules")


def _merge_module(base: BaseWeights, lora: LoRAInput, name: str, parts: Mapping[str, Tensor]) -> None:
    weight = base.weight(name)
    try:
        change = module_delta(parts, weight, name)
    except PartsDoNotFit as error:
        raise UserError(
            f"{FLAG} {lora.path}: {error}; the LoRA was made for another base model: use one made for this model"
        ) from None
    except ValueError as error:  # parts of no known type
        raise UserError(f"{FLAG} {lora.path}: {error}; give a kohya LoRA or LyCORIS file") from None
    weight.add_(change.to(weight.dtype), alpha=lora.ratio)
    bias_change = module_bias_delta(parts)
    if bias_change is None:
        return
    bias = base.bias(name)
    if bias is None or bias.shape != bias_change.shape:
        raise UserError(
            f"{FLAG} {lora.path}: {name} changes a bias of shape {tuple(bias_change.shape)}, which this "
            "model's layer does not have; the LoRA was made for another base model: use one made for this model"
        )
    bias.add_(bias_change.to(device=bias.device, dtype=bias.dtype), alpha=lora.ratio)
