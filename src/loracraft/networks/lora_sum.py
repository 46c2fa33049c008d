"""LoRA files summed into one LoRA (`loracraft merge` without --sd_model; kohya's merge_lora.py and
svd_merge_lora.py in one).

Default (exact up to the truncation it reports): per module the change ΔW = Σ ratio_i × ΔW_i of every
file that has the module (module_delta: LoRA/LoCon, DyLoRA, LoHa, LoKr, full), factored again by SVD
(low_rank.factorize) to --new_rank (convolutions larger than 1x1: --new_conv_rank), or to the rank a
dynamic method chooses under it, with alpha = rank (scale 1). Each module reports the share of the sum's
Frobenius norm it keeps: 100% means the file computes exactly the sum. kohya's svd_merge_lora.py does the
same for LoRA/LoCon files only and also clamps the factors at a quantile, which loses more than it reports.

--concat: kohya's concatenation of the factors (the rank is the sum of the files' ranks), made exact: each
file's scale ratio × alpha / rank is folded into its factors (its square root into each, its sign into
down) and alpha = the summed rank. kohya's merge_lora.py keeps the first file's alpha over the summed rank
and scales the factors by sqrt(alpha_i / alpha_1) × ratio_i, so file i acts at ratio_i × alpha_i /
(r_1 + r_2 + ...) instead of ratio_i × alpha_i / r_i: weaker than asked as soon as the ranks add up.
--shuffle (kohya's) permutes each module's rank components, which changes nothing the file computes.

A module only some files have is kept. Types whose change depends on the base model's weight (IA3, GLoRA,
the OFT types, DoRA) cannot be summed without it, nor can a change a LoRA has no place for (a full
module's bias, a norm adapter): each is refused in one line that points to merging into a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from loracraft.errors import UserError
from loracraft.networks.checkpoint_merge import FLAG, LoRAInput
from loracraft.networks.lora_input import TYPE_NAMES, module_alpha, module_rank, module_size, module_type
from loracraft.networks.low_rank import Factored, factorize, is_conv_3x3
from loracraft.networks.module_delta import module_bias_delta, module_delta, weight_free

PLAIN_PARTS = frozenset({"lora_down.weight", "lora_up.weight", "alpha"})
INTO_CHECKPOINT = "merge it into a checkpoint instead (--sd_model)"


@dataclass(frozen=True)
class RankChoice:
    """The output ranks: --new_rank / --new_conv_rank (None: no cap, the sum's own rank), or a dynamic
    method's choice under them."""

    rank: int | None
    conv_rank: int | None
    method: str | None = None
    param: float | None = None


@dataclass(frozen=True)
class SummedModule:
    name: str
    rank: int
    factored: Factored | None
    """The SVD of the sum, with the share it keeps; None for a concatenation (exact)."""


@dataclass(frozen=True)
class SummedLoRA:
    tensors: dict[str, Tensor]
    """kohya LoRA tensors: `NAME.lora_down.weight`, `NAME.lora_up.weight`, `NAME.alpha`."""
    modules: list[SummedModule]

    def ranks(self, conv: bool) -> set[int]:
        """The ranks of the 3x3 convolutions (`conv`) or of every other module."""
        return {
            module.rank
            for module in self.modules
            if is_conv_3x3(self.tensors[f"{module.name}.lora_down.weight"]) == conv
        }


def largest_ranks(inputs: Sequence[LoRAInput]) -> tuple[int | None, int | None]:
    """The largest rank of the files' modules other than 3x3 convolutions, and of their 3x3 convolutions
    (None where no module has a rank: full modules only)."""
    ranks: dict[bool, list[int]] = {False: [], True: []}
    for lora in inputs:
        for name, parts in lora.modules.items():
            algo = module_type(name, parts)
            size = module_size(algo, parts) if algo is not None else None
            if size is not None and size.ranked:
                ranks[_is_conv_module(parts)].append(size.dim)
    return max(ranks[False], default=None), max(ranks[True], default=None)


def _is_conv_module(parts: Mapping[str, Tensor]) -> bool:
    """A 3x3 convolution's module, by the parts that show a kernel."""
    kernels = [
        tuple(tensor.shape[2:])
        for part, tensor in parts.items()
        if tensor.dim() == 4 and part not in ("lora_up.weight", "dora_scale", "rescale")
    ]
    return any(kernel != (1, 1) for kernel in kernels)


def check_summable(inputs: Sequence[LoRAInput]) -> None:
    """Every module's change is its own parts' (no base weight needed) and fits in a LoRA."""
    for lora in inputs:
        for name, parts in lora.modules.items():
            algo = module_type(name, parts)
            if algo is None:
                raise UserError(
                    f"{FLAG} {lora.path}: {name} has parts of no known network type "
                    f"({', '.join(sorted(parts))}); give a kohya LoRA or LyCORIS file"
                )
            if not weight_free(parts, name):
                kind = "DoRA" if "dora_scale" in parts else TYPE_NAMES[algo]
                raise UserError(
                    f"{FLAG} {lora.path}: {name} is a {kind} module, whose change depends on the base model's "
                    f"weight, so it cannot be summed into a LoRA; {INTO_CHECKPOINT}"
                )
            if algo == "norm" or module_bias_delta(parts) is not None:
                raise UserError(
                    f"{FLAG} {lora.path}: {name} changes a bias or a norm layer, which a LoRA cannot hold; "
                    f"{INTO_CHECKPOINT}"
                )


def sum_loras(inputs: Sequence[LoRAInput], ranks: RankChoice, device: torch.device) -> SummedLoRA:
    """The exact sum of the files' changes, factored again per module (checked with check_summable)."""
    check_summable(inputs)
    tensors: dict[str, Tensor] = {}
    modules = []
    for name in _module_names(inputs):
        total = _summed_change(inputs, name, device)
        conv = total.dim() == 4 and tuple(total.shape[2:]) != (1, 1)
        cap = ranks.conv_rank if conv else ranks.rank
        factored = factorize(total, cap or math.prod(total.shape), ranks.method, ranks.param)
        tensors |= _lora_tensors(name, factored.up, factored.down, float(factored.rank))
        modules.append(SummedModule(name, factored.rank, factored))
    return SummedLoRA(tensors, modules)


def concat_loras(inputs: Sequence[LoRAInput], shuffle: bool) -> SummedLoRA:
    """kohya's --concat with each file's scale folded into its factors: exact, rank = the sum of ranks."""
    _check_plain(inputs)
    tensors: dict[str, Tensor] = {}
    modules = []
    for name in _module_names(inputs):
        downs, ups = [], []
        for lora in inputs:
            parts = lora.modules.get(name)
            if parts is None:
                continue
            scale = lora.ratio * module_alpha(parts) / module_rank(parts)
            root = math.sqrt(abs(scale))
            downs.append(parts["lora_down.weight"].float() * math.copysign(root, scale))
            ups.append(parts["lora_up.weight"].float() * root)
        down, up = _joined(downs, ups, name)
        if shuffle:
            order = torch.randperm(down.shape[0])
            down, up = down[order], up[:, order]
        tensors |= _lora_tensors(name, up, down, float(down.shape[0]))
        modules.append(SummedModule(name, down.shape[0], None))
    return SummedLoRA(tensors, modules)


def _module_names(inputs: Sequence[LoRAInput]) -> list[str]:
    """Every module name, in the order the files first name them."""
    return list(dict.fromkeys(name for lora in inputs for name in lora.modules))


def _summed_change(inputs: Sequence[LoRAInput], name: str, device: torch.device) -> Tensor:
    """Σ ratio × ΔW in float32, in the most telling shape the files give (a 3x3 convolution's kernel
    where one file has it; LoHa and LoKr store convolution factors flattened)."""
    changes = [
        (lora, lora.ratio * module_delta(_on(lora.modules[name], device), None, name))
        for lora in inputs
        if name in lora.modules
    ]
    shape = max((change.shape for _, change in changes), key=len)
    for lora, change in changes:
        if change.numel() != math.prod(shape) or change.shape[0] != shape[0]:
            raise UserError(
                f"{FLAG} {lora.path}: {name} changes a weight of shape {tuple(change.shape)}, but "
                f"{changes[0][0].path} one of shape {tuple(shape)}; the LoRAs are for different base models: "
                "merge LoRAs made for one model"
            )
    return sum(change.reshape(shape) for _, change in changes)


def _on(parts: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {part: tensor.to(device) for part, tensor in parts.items()}


def _check_plain(inputs: Sequence[LoRAInput]) -> None:
    for lora in inputs:
        for name, parts in lora.modules.items():
            if not {"lora_down.weight", "lora_up.weight"} <= set(parts) or set(parts) - PLAIN_PARTS:
                raise UserError(
                    f"{FLAG} {lora.path}: {name} is not a plain LoRA module (parts: {', '.join(sorted(parts))}); "
                    "--concat joins lora_down/lora_up factors only: leave --concat out to sum any type exactly"
                )


def _joined(downs: list[Tensor], ups: list[Tensor], name: str) -> tuple[Tensor, Tensor]:
    if len({tuple(down.shape[1:]) for down in downs}) > 1 or len({up.shape[0] for up in ups}) > 1:
        shapes = ", ".join(
            f"{tuple(up.shape)} @ {tuple(down.shape)}" for up, down in zip(ups, downs, strict=True)
        )
        raise UserError(
            f"{FLAG}: {name} has factors of different shapes in the files ({shapes}); the LoRAs are for "
            "different base models, or store the layer differently: leave --concat out to sum them exactly"
        )
    up_dims = max(up.dim() for up in ups)
    ups = [up.reshape(*up.shape[:2], *[1] * (up_dims - 2)) for up in ups]
    return torch.cat(downs, dim=0), torch.cat(ups, dim=1)


def _lora_tensors(name: str, up: Tensor, down: Tensor, alpha: float) -> dict[str, Tensor]:
    return {
        f"{name}.lora_down.weight": down.contiguous().cpu(),
        f"{name}.lora_up.weight": up.contiguous().cpu(),
        f"{name}.alpha": torch.tensor(alpha),
    }
