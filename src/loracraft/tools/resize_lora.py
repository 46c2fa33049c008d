"""`loracraft resize`: a LoRA at a lower rank, by SVD of each module's delta (kohya's networks/resize_lora.py,
with its flags and defaults).

    loracraft resize --model big.safetensors --save_to small.safetensors --new_rank 8
        [--new_conv_rank 4] [--dynamic_method sv_fro --dynamic_param 0.9] [--save_precision fp16]

Each LoRA/LoCon module's product up @ down (without alpha, as kohya) is factored again at the new rank
(networks/low_rank.py: kohya's fixed and dynamic rank rules), and its alpha becomes old_alpha / old_rank *
new_rank, so the delta a consumer applies, (alpha / rank) * up @ down, is the best approximation of the
old one at that rank. The retained Frobenius norm of each module is reported (kohya's --verbose figures).

Where we differ from kohya, on purpose:
- A module whose rank is not above its target is copied unchanged (kohya pads it with zero singular
  values up to the new rank), and a fixed --new_rank that reduces nothing is refused.
- --new_conv_rank applies to convolutions larger than 1x1, as kohya's help says and as training gives
  conv_dim to them; kohya's code gives it to 1x1 convolutions too (SD1's proj_in/proj_out).
- `ss_network_dim` / `ss_network_alpha` of a fixed resize are the ranks and alphas the modules now have
  (network_dim's modules, not the 3x3 convolutions), or "Dynamic" where they differ; a dynamic resize
  writes "Dynamic", as kohya.
- The product is factored through a QR of each factor (low_rank.factorize_product), exact, instead of a
  full SVD of the out x in matrix: the same factors, much faster on the CPU.
Only kohya-format files (lora_down/lora_up/alpha) are read; LoHa, LoKr, IA3, OFT, full and LyCORIS'
Tucker/DoRA/scalar LoRA modules are refused in one line: their deltas are not one up @ down product.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from loracraft.errors import UserError
from loracraft.networks.lora_file import read_lora_metadata, save_lora_file
from loracraft.networks.lora_input import (
    PLAIN_PARTS,
    TYPE_NAMES,
    LoRAModules,
    module_alpha,
    module_rank,
    module_type,
    read_modules,
)
from loracraft.networks.low_rank import (
    DYNAMIC_METHODS,
    Factored,
    factorize_product,
    is_conv_3x3,
    retention_summary,
)
from loracraft.tools.tool_parser import (
    PRECISIONS,
    ToolParser,
    add_overwrite_flag,
    check_dynamic,
    check_lora_output,
    compute_device,
)


@dataclass(frozen=True)
class ResizeSettings:
    """kohya's resize flags, checked."""

    new_rank: int = 4
    new_conv_rank: int | None = None
    """Rank of convolutions larger than 1x1; None: new_rank."""
    dynamic_method: str | None = None
    dynamic_param: float | None = None
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        for flag, value in (("--new_rank", self.new_rank), ("--new_conv_rank", self.conv_rank)):
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        check_dynamic(self.dynamic_method, self.dynamic_param)

    @property
    def conv_rank(self) -> int:
        return self.new_rank if self.new_conv_rank is None else self.new_conv_rank

    def target_rank(self, down: Tensor) -> int:
        """The rank a module may keep: --new_conv_rank for a convolution larger than 1x1."""
        return self.conv_rank if is_conv_3x3(down) else self.new_rank


@dataclass(frozen=True)
class ModuleResize:
    """What resize did to one module."""

    name: str
    old_rank: int
    new_rank: int
    new_alpha: float
    conv_3x3: bool
    factored: Factored | None
    """None: the module was copied unchanged (its rank was not above its target)."""


@dataclass(frozen=True)
class ResizedLoRA:
    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    modules: list[ModuleResize]

    @property
    def old_rank(self) -> int:
        return max(module.old_rank for module in self.modules)

    @property
    def reduced(self) -> list[ModuleResize]:
        return [module for module in self.modules if module.factored is not None]


def read_lora_for_resize(path: str | Path) -> LoRAModules:
    """The file's modules, refused in one line unless every one is a plain LoRA/LoCon module."""
    modules = read_modules(str(path), "model")
    for name in sorted(modules):
        check_resizable(path, name, modules[name])
    return modules


def check_resizable(path: str | Path, name: str, parts: Mapping[str, Tensor]) -> None:
    algo = module_type(name, dict(parts))
    if algo is None:
        raise UserError(
            f"--model {path} is not a LoRA: {name} has parts of no LoRA type ({', '.join(sorted(parts))}); "
            "give a kohya LoRA file (lora_down.weight, lora_up.weight, alpha)"
        )
    if algo != "lora":
        raise UserError(
            f"--model {path} is a {TYPE_NAMES[algo]} file ({name}); resize reduces LoRA/LoCon files only, "
            f"whose modules are one up @ down product an SVD can shorten"
        )
    extra = sorted(set(parts) - set(PLAIN_PARTS))
    if extra:
        raise UserError(
            f"--model {path}: {name} has {', '.join(extra)} besides lora_down/lora_up/alpha (LyCORIS' Tucker, "
            "DoRA or scalar form); resize reduces plain LoRA/LoCon modules only"
        )


def resize_modules(
    modules: LoRAModules, settings: ResizeSettings
) -> tuple[dict[str, Tensor], list[ModuleResize]]:
    """Every module at its new rank (tensors on the CPU, float32 where factored) and what was done."""
    tensors: dict[str, Tensor] = {}
    results = []
    for name in sorted(modules):
        parts = modules[name]
        result, new_parts = _resize_module(name, parts, settings)
        tensors |= {f"{name}.{part}": tensor for part, tensor in new_parts.items()}
        results.append(result)
    return tensors, results


def _resize_module(
    name: str, parts: dict[str, Tensor], settings: ResizeSettings
) -> tuple[ModuleResize, dict[str, Tensor]]:
    down, up = parts["lora_down.weight"], parts["lora_up.weight"]
    old_rank, alpha = module_rank(parts), module_alpha(parts)
    target = settings.target_rank(down)
    copied = ModuleResize(name, old_rank, old_rank, alpha, is_conv_3x3(down), None)
    if settings.dynamic_method is None and old_rank <= target:
        return copied, parts
    factored = factorize_product(
        up.to(settings.device),
        down.to(settings.device),
        target,
        settings.dynamic_method,
        settings.dynamic_param,
    )
    if factored.rank >= old_rank:  # a dynamic method that keeps every singular value: nothing to gain
        return copied, parts
    new_alpha = alpha / old_rank * factored.rank
    new_parts = {
        "lora_down.weight": factored.down.cpu().contiguous(),
        "lora_up.weight": factored.up.cpu().contiguous(),
        "alpha": torch.tensor(new_alpha),
    }
    return ModuleResize(name, old_rank, factored.rank, new_alpha, is_conv_3x3(down), factored), new_parts


def resized_metadata(
    metadata: Mapping[str, str], settings: ResizeSettings, results: list[ModuleResize]
) -> dict[str, str]:
    """The file's metadata with kohya's resize note and the new dim/alpha; every other key kept (the
    hashes are recomputed when the file is written)."""
    old_rank = max(result.old_rank for result in results)
    comment = metadata.get("ss_training_comment", "")
    if settings.dynamic_method is None:
        conv = "" if settings.conv_rank == settings.new_rank else f" (conv: {settings.conv_rank})"
        note = f"dimension is resized from {old_rank} to {settings.new_rank}{conv}"
        linear = [result for result in results if not result.conv_3x3]
        dim = _one_value(str(result.new_rank) for result in linear)
        alpha = _one_value(str(float(result.new_alpha)) for result in linear)
    else:
        note = f"Dynamic resize with {settings.dynamic_method}: {settings.dynamic_param} from {old_rank}"
        dim = alpha = "Dynamic"
    return {
        **metadata,
        "ss_training_comment": f"{note}; {comment}",
        "ss_network_dim": dim,
        "ss_network_alpha": alpha,
    }


def _one_value(values: Iterable[str]) -> str:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else "Dynamic"


def resize_lora(path: str | Path, settings: ResizeSettings) -> ResizedLoRA:
    """Read `path`, check it and resize every module; nothing is written."""
    modules = read_lora_for_resize(path)
    if settings.dynamic_method is None:
        check_something_to_reduce(path, modules, settings)
    tensors, results = resize_modules(modules, settings)
    return ResizedLoRA(tensors, resized_metadata(read_lora_metadata(path), settings, results), results)


def check_something_to_reduce(path: str | Path, modules: LoRAModules, settings: ResizeSettings) -> None:
    if any(
        module_rank(parts) > settings.target_rank(parts["lora_down.weight"]) for parts in modules.values()
    ):
        return
    largest = max(module_rank(parts) for parts in modules.values())
    conv = f" and --new_conv_rank {settings.conv_rank}" if settings.conv_rank != settings.new_rank else ""
    raise UserError(
        f"--new_rank {settings.new_rank}{conv}: every module of {path} already has a rank that low "
        f"(largest {largest}); nothing to reduce: give a smaller --new_rank"
    )


def report(result: ResizedLoRA, verbose: bool) -> list[str]:
    """kohya's per-module figures (with --verbose) and a summary: ranks, Frobenius norm retained."""
    lines = [_module_line(module) for module in result.modules] if verbose else []
    reduced = result.reduced
    ranks = Counter(module.new_rank for module in result.modules)
    lines.append(
        f"{len(reduced)} of {len(result.modules)} modules reduced (largest rank was {result.old_rank}); "
        "ranks now: " + ", ".join(f"{rank} x{count}" for rank, count in sorted(ranks.items(), reverse=True))
    )
    lines.extend(
        retention_summary([(module.name, module.factored) for module in reduced], "the reduced modules")
    )
    return lines


def _module_line(module: ModuleResize) -> str:
    if module.factored is None:
        return f"{module.name:75} | rank {module.old_rank} kept"
    factored = module.factored
    return (
        f"{module.name:75} | sum(S) retained: {factored.sum_retained:.1%}, fro retained: "
        f"{factored.fro_retained:.1%}, max(S) ratio: {factored.max_ratio:0.1f} | dim: {module.new_rank}, "
        f"alpha: {module.new_alpha:g}"
    )


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft resize",
        description="Reduce a LoRA's rank by SVD, keeping each module's strength (kohya's resize_lora.py).",
    )
    parser.add_argument("--model", required=True, help="The LoRA to resize (.safetensors, .ckpt or .pt).")
    parser.add_argument("--save_to", required=True, help="The new file (.safetensors, .ckpt or .pt).")
    parser.add_argument(
        "--new_rank", type=int, default=4, help="Rank of the new LoRA, the cap of a dynamic one [4]."
    )
    parser.add_argument(
        "--new_conv_rank", type=int, help="Rank of convolutions larger than 1x1 (LoCon); default: --new_rank."
    )
    parser.add_argument(
        "--dynamic_method",
        choices=DYNAMIC_METHODS,
        help="Choose each module's rank: sv_ratio (largest/smallest kept singular value), sv_fro (share of the "
        "Frobenius norm kept), sv_cumulative (share of the sum of singular values kept); --new_rank caps it.",
    )
    parser.add_argument(
        "--dynamic_param", type=float, help="The target of --dynamic_method (e.g. sv_fro 0.9)."
    )
    parser.add_argument(
        "--save_precision", choices=tuple(PRECISIONS), help="Precision of the new file [float]."
    )
    parser.add_argument("--device", help="Where to compute: cpu (default) or cuda.")
    parser.add_argument(
        "--verbose", action="store_true", help="One line per module: ranks and retained norms."
    )
    parser.add_argument(
        "--svd_lowrank_niter",
        type=int,
        help="Accepted from kohya_ss command lines and unused: loracraft's SVD of a LoRA's product is exact.",
    )
    add_overwrite_flag(parser)
    return parser


def main(argv: list[str], echo: Callable[[str], None] = print) -> int:
    args = make_parser().parse_args(argv)
    settings = ResizeSettings(
        args.new_rank,
        args.new_conv_rank,
        args.dynamic_method,
        args.dynamic_param,
        compute_device(args.device),
    )
    save_to = check_lora_output(args.save_to, args.overwrite, {"--model": args.model})
    result = resize_lora(args.model, settings)
    save_lora_file(result.tensors, save_to, result.metadata, PRECISIONS[args.save_precision or "float"])
    echo("\n".join(report(result, args.verbose)))
    echo(f"wrote {save_to}")
    return 0
