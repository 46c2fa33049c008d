"""A LoRA or LyCORIS file a run reads (--network_weights, --base_weights): its modules, their type, rank
and alpha, and whether its names are for the base model's family.

kohya names SD1/SD2 modules by their diffusers path (`lora_te_`, `lora_unet_down_blocks_`) and SDXL ones
by their LDM path (`lora_te1_`/`lora_te2_`, `lora_unet_input_blocks_`), so a file made for the other
family is recognised by its names alone and refused in one line before any module is matched. SD1 and
SD2 share their names; a file of one on the other is caught by its shapes. kohya's OFT files use the same
names with `oft_unet_` for `lora_unet_`.

A module's type shows in its parts, as LyCORIS' own loader tells them apart (lycoris/modules, `algo_check`):
`lora_down`/`lora_up` (kohya's LoRA and LoCon, LyCORIS' LoRA/LoCon and DyLoRA, which write the same
parts), `hada_w1_a` (LoHa), `lokr_w1` or `lokr_w1_a` (LoKr), `on_input` (IA3), `a1.weight` (GLoRA),
`oft_blocks` (LyCORIS' Diag-OFT with 3 dimensions, BOFT with 4; kohya's OFT under `oft_unet_` names) and
`diff` (full fine-tuning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from loracraft.errors import UserError
from loracraft.models.family import FAMILY_NAMES
from loracraft.networks.key_styles import to_kohya
from loracraft.networks.lora_file import read_lora_file

LoRAModules = dict[str, dict[str, Tensor]]
"""kohya module name -> its parts ("lora_down.weight", "lora_up.weight", "alpha", or another type's)."""

PLAIN_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
_NAME_PREFIXES = {
    "sdxl": ("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_middle_block_",
             "lora_unet_output_blocks_", "lora_unet_label_emb_"),
    "sd": ("lora_te_", "lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_"),
}  # fmt: skip
_NAMING_FAMILIES = {"sdxl": "SDXL", "sd": "SD1.x/SD2.x"}
KOHYA_OFT_PREFIX = "oft_unet_"

TYPE_NAMES = {
    "lora": "LoRA/LoCon",
    "loha": "LoHa",
    "lokr": "LoKr",
    "ia3": "IA3",
    "glora": "GLoRA",
    "diag-oft": "Diag-OFT",
    "boft": "BOFT",
    "full": "full fine-tuning",
    "kohya-oft": "kohya OFT",
    "norm": "norm (train_norm)",
}
"""The types a file's parts tell apart, by the name of LyCORIS' algorithm ("lora": every file with
lora_down/lora_up, DyLoRA's too; "kohya-oft": networks.oft; "norm": LyCORIS' train_norm adapters of
LayerNorm/GroupNorm, which a file of any LyCORIS type may hold besides its own)."""
# The part that tells each type, as the file's modules hold it.
_TYPE_PARTS = (
    ("lora_up.weight", "lora"),
    ("hada_w1_a", "loha"),
    ("lokr_w1", "lokr"),
    ("lokr_w1_a", "lokr"),
    ("a1.weight", "glora"),
    ("on_input", "ia3"),
    ("diff", "full"),
    ("w_norm", "norm"),
)
TUCKER_PARTS = ("lora_mid.weight", "hada_t1", "hada_t2", "lokr_t1", "lokr_t2", "bm.weight")


def read_modules(path: str, flag: str) -> LoRAModules:
    """The modules of the file `--flag` names, whatever their type and key style (key_styles.py), under
    kohya's names: module name -> part -> tensor."""
    try:
        tensors, metadata = read_lora_file(path)
    except UserError as error:
        raise UserError(f"--{flag} {error}") from None
    if not tensors:
        raise UserError(f"--{flag} {path}: the file holds no tensors; give a kohya LoRA file")
    try:
        return to_kohya(tensors, metadata)[0]
    except UserError as error:
        raise UserError(f"--{flag} {path} {error}") from None


def read_lora_modules(path: str, flag: str) -> LoRAModules:
    """The plain-LoRA modules of the file `--flag` names; one line naming the flag and file otherwise."""
    modules = read_modules(path, flag)
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


def module_type(name: str, parts: dict[str, Tensor]) -> str | None:
    """The module's type (a key of TYPE_NAMES) from its parts; None for parts of no type loracraft trains."""
    if "oft_blocks" in parts:
        if name.startswith(KOHYA_OFT_PREFIX):
            return "kohya-oft"
        return {3: "diag-oft", 4: "boft"}.get(parts["oft_blocks"].dim())
    return next((algo for part, algo in _TYPE_PARTS if part in parts), None)


def file_type(modules: LoRAModules, flag: str, path: str) -> str:
    """The one type of every module of the file (its train_norm adapters aside); one line naming the flag
    and file otherwise."""
    types: dict[str, str] = {}
    for name in sorted(modules):
        algo = module_type(name, modules[name])
        if algo is None:
            raise UserError(
                f"--{flag} {path}: {name} has parts of no network type loracraft trains "
                f"({', '.join(sorted(modules[name]))}); give a kohya LoRA or LyCORIS file"
            )
        types.setdefault(algo, name)
    if len(types) > 1:
        types.pop("norm", None)
    if len(types) > 1:
        found = ", ".join(f"{name}: {TYPE_NAMES[algo]}" for algo, name in types.items())
        raise UserError(
            f"--{flag} {path} holds modules of several types ({found}); loracraft trains one type per "
            "network: start from a file of one type"
        )
    return next(iter(types))


@dataclass(frozen=True)
class ModuleSize:
    """What a module of a file was built with, read from its parts."""

    dim: int
    """The `lora_dim` LyCORIS (or kohya's module) rebuilds exactly this module's shapes from: the rank of
    ranked types, the block size of LyCORIS' OFT types (block count of kohya's OFT), 1 for IA3 and full."""
    alpha: float | None
    """Its alpha as consumers apply it (missing or 0: the rank); kohya OFT's constraint; None where the
    type has no alpha of its own (IA3, full, LyCORIS OFT's constraint, a LoKr module with no low-rank
    factor, whose scale LyCORIS fixes at 1)."""
    ranked: bool
    """Whether `dim` is what --network_dim (or conv_dim) set when the file was trained."""


def module_size(algo: str, parts: dict[str, Tensor]) -> ModuleSize:
    """The module's rank (or block size) and alpha, for a module of type `algo` (module_type)."""
    if algo == "lokr":
        return _lokr_size(parts)
    rank = {
        "lora": lambda: parts["lora_down.weight"].shape[0],
        "loha": lambda: parts["hada_w1_b"].shape[0],
        "glora": lambda: parts["a2.weight"].shape[0],
        "kohya-oft": lambda: parts["oft_blocks"].shape[0],
    }.get(algo)
    if rank is None:  # IA3, full, LyCORIS' OFT types, norms: no rank alpha
        block_size = parts["oft_blocks"].shape[-1] if "oft_blocks" in parts else 1
        return ModuleSize(int(block_size), None, ranked=False)
    dim = int(rank())
    return ModuleSize(dim, _alpha(parts, default=float(dim)), ranked=True)


def _alpha(parts: dict[str, Tensor], default: float) -> float:
    alpha = float(parts["alpha"].item()) if "alpha" in parts else 0.0
    return alpha or default


def _lokr_size(parts: dict[str, Tensor]) -> ModuleSize:
    """LoKr's rank is that of its low-rank factor (lokr_w1_a, lokr_w2_a or the Tucker core). With no such
    factor, LyCORIS trains both Kronecker factors in full at scale 1 and writes the rank it was built at as
    the alpha: that rank rebuilds the module (and keeps its scale 1 once the alpha is loaded)."""
    if "lokr_t2" in parts:
        rank = parts["lokr_t2"].shape[0]
    elif "lokr_w1_a" in parts:
        rank = parts["lokr_w1_a"].shape[1]
    elif "lokr_w2_a" in parts:
        rank = parts["lokr_w2_a"].shape[1]
    else:
        written = float(parts["alpha"].item()) if "alpha" in parts else 0.0
        if written > 0 and written == math.floor(written):
            return ModuleSize(int(written), None, ranked=True)
        # no rank recorded: any rank at least the factors' sizes builds them in full
        return ModuleSize(max(parts["lokr_w1"].shape[:2] + parts["lokr_w2"].shape[:2]), None, ranked=False)
    return ModuleSize(int(rank), _alpha(parts, default=float(rank)), ranked=True)


def check_naming_family(modules: LoRAModules, family: str, flag: str, path: str) -> None:
    """Refuse a file whose names are all another family's (SD1/SD2 names on SDXL, or the reverse)."""
    base = "sdxl" if family == "sdxl" else "sd"
    other = "sd" if base == "sdxl" else "sdxl"
    own = [name for name in modules if _lora_name(name).startswith(_NAME_PREFIXES[base])]
    foreign = sorted(name for name in modules if _lora_name(name).startswith(_NAME_PREFIXES[other]))
    if foreign and not own:
        raise UserError(
            f"--{flag} {path} is a LoRA for {_NAMING_FAMILIES[other]} models (its names are like {foreign[0]}), "
            f"but the base model is {FAMILY_NAMES[family]}: use a LoRA made for an {FAMILY_NAMES[family]} model"
        )


def _lora_name(name: str) -> str:
    """kohya's OFT names are its LoRA names with another prefix."""
    return "lora_unet_" + name.removeprefix(KOHYA_OFT_PREFIX) if name.startswith(KOHYA_OFT_PREFIX) else name
