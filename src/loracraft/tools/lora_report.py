"""Everything `loracraft inspect` says about one LoRA file, gathered as data (the web UI shows it too).

kohya's check_lora_weights.py prints each LoRA tensor's mean and minimum |w| so the user can spot
untrained modules; this report does the reading for them: the file's type, family and key style, its
ranks and alphas per module and per block (kohya's block numbering, networks/blocks.py), the run's
settings and dataset from its metadata, how much each block changes the model, the modules that change
nothing and why, values flushed to 0.0, NaN/Inf, the stored hashes against the bytes, and which programs
apply the file as trained.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from loracraft.errors import UserError
from loracraft.networks.blocks import block_index, block_names
from loracraft.networks.consumers import FileFacts, file_verdicts
from loracraft.networks.hash_check import HashCheck, check_hashes
from loracraft.networks.key_styles import BUNDLED_EMBEDDINGS, to_kohya
from loracraft.networks.lora_family import SD, FileFamily, file_family
from loracraft.networks.lora_file import read_lora_file
from loracraft.networks.lora_health import (
    NonFinite,
    Unchanged,
    ZeroValues,
    module_norm,
    non_finite,
    unchanged_modules,
    unused_layers,
    zero_alpha,
    zero_values,
)
from loracraft.networks.lora_input import (
    KOHYA_OFT_PREFIX,
    TUCKER_PARTS,
    LoRAModules,
    module_size,
    module_type,
)
from loracraft.networks.training_record import TrainingRecord, training_record

_TE_BLOCKS = {"lora_te_": "TE", "lora_te1_": "TE1", "lora_te2_": "TE2"}
OTHER_UNET = "U-Net (other)"
"""Where U-Net modules outside kohya's blocks go (conv_in, time embedding, conv_out)."""
_KOHYA_TARGET_BLOCKS = re.compile(
    r"^lora_unet_(?:(?:down|up)_blocks_\d+_(?:attentions|resnets|downsamplers|upsamplers)_|mid_block_"
    r"|(?:input_blocks_(?:[1-9]|1[01])|middle_block|output_blocks)_\d+_)"
)
_A1111_UNNAMED_SDXL = ("lora_unet_label_emb_", "lora_unet_output_blocks_2_2_conv")


@dataclass(frozen=True)
class ModuleRow:
    name: str
    type: str | None
    """A key of lora_input.TYPE_NAMES; None for parts of no type."""
    block: str
    rank: int | None
    """The rank (or block size) of ranked types; None for IA3, full, OFT's block size and unknown parts."""
    alpha: float | None
    norm: float
    norm_of: str
    """"delta": of the change the module makes at strength 1; "tensors": of its own tensors."""


@dataclass(frozen=True)
class BlockRow:
    block: str
    modules: int
    ranks: dict[int, int]
    """rank -> modules of the block with it."""
    alphas: dict[float, int]
    norm: float
    """Root of the sum of the modules' squared norms: the block's whole change."""
    unchanged: int


@dataclass(frozen=True)
class KeyStats:
    """kohya's check_lora_weights.py line of a tensor: key, shape, mean and minimum of |w|."""

    key: str
    shape: tuple[int, ...]
    mean_abs: float
    min_abs: float


@dataclass(frozen=True)
class LoRAReport:
    path: str
    key_style: str
    family: FileFamily
    modules: tuple[ModuleRow, ...]
    blocks: tuple[BlockRow, ...]
    training: TrainingRecord
    unchanged: tuple[Unchanged, ...]
    zero_alpha: tuple[str, ...]
    zero_values: tuple[ZeroValues, ...]
    non_finite: tuple[NonFinite, ...]
    hashes: tuple[HashCheck, ...]
    consumers: dict[str, str | None]
    embeddings: tuple[str, ...]
    """OneTrainer's bundled embeddings (bundle_emb.NAME...)."""
    metadata: dict[str, str]
    keys: tuple[KeyStats, ...]

    @property
    def types(self) -> dict[str | None, int]:
        """Type -> number of modules, most first."""
        return dict(Counter(row.type for row in self.modules).most_common())


def inspect_lora_file(path: str | Path) -> LoRAReport:
    """The report of one LoRA file; UserError (one line naming the file) when it is none."""
    tensors, metadata = read_lora_file(path)
    if not tensors:
        raise UserError(f"{path}: the file holds no tensors; give a LoRA file")
    try:
        converted, style = to_kohya(tensors, metadata)
    except UserError as error:
        raise UserError(f"{path} {error}") from None
    modules = dict(sorted(converted.items()))  # a file's tensors come in no fixed order
    types = {name: module_type(name, parts) for name, parts in modules.items()}
    family = file_family(modules, metadata)
    training = training_record(metadata)
    rows = tuple(_module_row(name, types[name], parts, family.family) for name, parts in modules.items())
    unused = unused_layers(list(modules), family.family, training.clip_skip)
    unchanged = tuple(unchanged_modules(modules, {name: types[name] or "" for name in modules}, unused))
    return LoRAReport(
        path=str(path),
        key_style=style,
        family=family,
        modules=rows,
        blocks=_blocks(rows, unchanged, family.family),
        training=training,
        unchanged=unchanged,
        zero_alpha=tuple(name for name, parts in modules.items() if zero_alpha(parts)),
        zero_values=tuple(zero_values(modules)),
        non_finite=tuple(non_finite(modules)),
        hashes=tuple(check_hashes(path, tensors, metadata)),
        consumers=file_verdicts(_facts(modules, types, family.family, style)),
        embeddings=tuple(
            sorted({key.split(".")[1] for key in tensors if key.startswith(BUNDLED_EMBEDDINGS)})
        ),
        metadata=dict(metadata),
        keys=tuple(_key_stats(key, tensors[key]) for key in sorted(tensors)),
    )


def _module_row(name: str, algo: str | None, parts: Mapping[str, Tensor], family: str | None) -> ModuleRow:
    norm, norm_of = module_norm(name, algo, parts) if algo else _tensor_norm(parts)
    size = module_size(algo, dict(parts)) if algo else None
    rank = size.dim if size is not None and size.ranked else None
    return ModuleRow(name, algo, block_label(name, family), rank, size.alpha if size else None, norm, norm_of)


def _tensor_norm(parts: Mapping[str, Tensor]) -> tuple[float, str]:
    return float(
        torch.linalg.vector_norm(torch.cat([tensor.float().flatten() for tensor in parts.values()]))
    ), "tensors"


def block_label(name: str, family: str | None) -> str:
    """The module's kohya block (IN04, MID, OUT00...), its text encoder (TE, TE1, TE2), or U-Net (other)."""
    for prefix, label in _TE_BLOCKS.items():
        if name.startswith(prefix):
            return label
    lora_name = (
        "lora_unet_" + name.removeprefix(KOHYA_OFT_PREFIX) if name.startswith(KOHYA_OFT_PREFIX) else name
    )
    numbering = "sdxl" if family == "sdxl" else "sd1"
    index = block_index(lora_name, numbering)
    return OTHER_UNET if index is None else block_names(numbering)[index]


def _blocks(
    rows: tuple[ModuleRow, ...], unchanged: tuple[Unchanged, ...], family: str | None
) -> tuple[BlockRow, ...]:
    order = {
        label: i
        for i, label in enumerate(
            ("TE", "TE1", "TE2", *block_names("sdxl" if family == "sdxl" else "sd1"), OTHER_UNET)
        )
    }
    quiet = {item.module for item in unchanged}
    grouped: dict[str, list[ModuleRow]] = {}
    for row in rows:
        grouped.setdefault(row.block, []).append(row)
    return tuple(
        BlockRow(
            block=block,
            modules=len(members),
            ranks=dict(sorted(Counter(row.rank for row in members if row.rank is not None).items())),
            alphas=dict(sorted(Counter(row.alpha for row in members if row.alpha is not None).items())),
            norm=sum(row.norm**2 for row in members) ** 0.5,
            unchanged=sum(row.name in quiet for row in members),
        )
        for block, members in sorted(grouped.items(), key=lambda item: order.get(item[0], len(order)))
    )


def _facts(
    modules: LoRAModules, types: Mapping[str, str | None], family: str | None, style: str
) -> FileFacts:
    present = list(modules.values())
    dora = [parts["dora_scale"] for parts in present if "dora_scale" in parts]
    unet = [name for name in modules if name.startswith("lora_unet_")]
    return FileFacts(
        types=frozenset(algo for algo in types.values() if algo is not None),
        family=None if family == SD else family,
        key_style=style,
        tucker=any(part in parts for parts in present for part in TUCKER_PARTS),
        dora=bool(dora),
        dora_on_output=any(scale.shape[0] != 1 for scale in dora),
        oft_constraint=any(
            types[name] in ("diag-oft", "boft") and "alpha" in parts and float(parts["alpha"]) > 0
            for name, parts in modules.items()
        ),
        ia3_on_convolutions=any(
            types[name] == "ia3" and parts["weight"].dim() == 4
            for name, parts in modules.items()
            if "weight" in parts
        ),
        beyond_kohya_targets=any(not _KOHYA_TARGET_BLOCKS.match(name) for name in unet),
        unknown_parts=next(
            (f"{name} ({', '.join(sorted(modules[name]))})" for name, algo in types.items() if algo is None),
            None,
        ),
        a1111_unnamed=style == "kohya-diffusers-sdxl"
        and any(name.startswith(_A1111_UNNAMED_SDXL) for name in unet),
    )


def _key_stats(key: str, tensor: Tensor) -> KeyStats:
    values = tensor.float().abs()
    empty = values.numel() == 0
    return KeyStats(
        key,
        tuple(tensor.shape),
        0.0 if empty else float(values.mean()),
        0.0 if empty else float(values.min()),
    )
