"""A LoRA file a run reads (--network_weights, --base_weights): its modules, their rank and alpha, and
whether its names are for the base model's family.

kohya names SD1/SD2 modules by their diffusers path (`lora_te_`, `lora_unet_down_blocks_`) and SDXL ones
by their LDM path (`lora_te1_`/`lora_te2_`, `lora_unet_input_blocks_`), so a file made for the other
family is recognised by its names alone and refused in one line before any module is matched. SD1 and
SD2 share their names; a file of one on the other is caught by its shapes.
"""

from __future__ import annotations

from torch import Tensor

from loracraft.errors import UserError
from loracraft.models.family import FAMILY_NAMES
from loracraft.networks.lora_file import read_lora_file

LoRAModules = dict[str, dict[str, Tensor]]
"""kohya module name -> its parts ("lora_down.weight", "lora_up.weight", "alpha")."""

PLAIN_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
_NAME_PREFIXES = {
    "sdxl": ("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_middle_block_",
             "lora_unet_output_blocks_", "lora_unet_label_emb_"),
    "sd": ("lora_te_", "lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_"),
}  # fmt: skip
_NAMING_FAMILIES = {"sdxl": "SDXL", "sd": "SD1.x/SD2.x"}


def read_lora_modules(path: str, flag: str) -> LoRAModules:
    """The plain-LoRA modules of the file `--flag` names; one line naming the flag and file otherwise."""
    try:
        tensors, _ = read_lora_file(path)
    except UserError as error:
        raise UserError(f"--{flag} {error}") from None
    modules: LoRAModules = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        modules.setdefault(name, {})[part] = tensor
    if not modules:
        raise UserError(f"--{flag} {path}: the file holds no tensors; give a kohya LoRA file")
    for name, parts in modules.items():
        if set(parts) - set(PLAIN_PARTS) or not {"lora_down.weight", "lora_up.weight"} <= set(parts):
            raise UserError(
                f"--{flag} {path}: {name} is not a plain LoRA module (parts: {', '.join(sorted(parts))}); "
                "only kohya LoRA files (lora_down.weight, lora_up.weight, alpha) can be used here"
            )
    return modules


def module_rank(parts: dict[str, Tensor]) -> int:
    return int(parts["lora_down.weight"].shape[0])


def module_alpha(parts: dict[str, Tensor]) -> float:
    """The module's alpha as every consumer applies it: a missing or zero alpha means alpha = rank (scale 1)."""
    alpha = float(parts["alpha"].item()) if "alpha" in parts else 0.0
    return alpha or float(module_rank(parts))


def check_naming_family(modules: LoRAModules, family: str, flag: str, path: str) -> None:
    """Refuse a file whose names are all another family's (SD1/SD2 names on SDXL, or the reverse)."""
    base = "sdxl" if family == "sdxl" else "sd"
    other = "sd" if base == "sdxl" else "sdxl"
    own = [name for name in modules if name.startswith(_NAME_PREFIXES[base])]
    foreign = sorted(name for name in modules if name.startswith(_NAME_PREFIXES[other]))
    if foreign and not own:
        raise UserError(
            f"--{flag} {path} is a LoRA for {_NAMING_FAMILIES[other]} models (its names are like {foreign[0]}), "
            f"but the base model is {FAMILY_NAMES[family]}: use a LoRA made for an {FAMILY_NAMES[family]} model"
        )
