"""Per-block control of a U-Net LoRA: kohya's block numbers, block dims/alphas and block learning rates.

kohya (networks/lora.py) numbers the U-Net in blocks and lets `--network_args` give each block its own
rank, alpha and learning rate. Only U-Net modules have a block; text encoders always use network_dim/alpha.

SD1/SD2: 25 blocks, named as in the kohya_ss GUI and the A1111 block-weight tools:
    0-11   IN00-IN11   conv_in, then down_blocks.i resnets/attentions j at 1 + 3i + j, downsampler at 3 + 3i
    12     MID         mid_block
    13-24  OUT00-OUT11 up_blocks.i resnets/attentions j at 13 + 3i + j; its upsampler shares 15 + 3i
Attention (Transformer2DModel) lives in IN01, IN02, IN04, IN05, IN07, IN08, MID and OUT03-OUT11. IN00
(conv_in) never gets a LoRA; IN03, IN06, IN09 hold a downsampler only; IN10, IN11, OUT00-OUT02 hold ResNets.

SDXL: 23 blocks, numbered on kohya's LDM names (sdxl_train's --block_lr numbering):
    0      EMB          time_embed, label_emb (never gets a LoRA)
    1-9    IN00-IN08    input_blocks.N (IN00 is conv_in: never a LoRA; IN03, IN06 downsamplers)
    10-12  MID00-MID02  middle_block.N (attention in MID01)
    13-21  OUT00-OUT08  output_blocks.N (attention in OUT00-OUT05)
    22     OUT          out (final norm and conv: never a LoRA)

Which value a module takes: Linear layers and 1x1 convolutions take block_dims/block_alphas; other
convolutions (3x3) take conv_block_dims/conv_block_alphas. Without conv_dim or conv_block_dims kohya puts
LoRA on attention blocks only, so the block_dims values of blocks without attention are not used; with
them, the ResNets' time-embedding Linear and 1x1 shortcut take block_dims too.

Learning rates: down_lr_weight (the IN blocks), mid_lr_weight and up_lr_weight (the OUT blocks) multiply
the U-Net learning rate. down/up take numbers or a preset (sine, cosine, linear, reverse_linear, zeros,
optionally +OFFSET); kohya pads short lists with 1.0 and cuts long ones (we do the same and report it);
weights at or below block_lr_zero_threshold become 0; a block whose weight is 0 gets no modules at all.
SDXL's EMB and OUT keep weight 1.0. `block_lr` (sdxl_train's --block_lr, here for every family) gives
each block an absolute learning rate instead; it replaces the weights, so the two are refused together,
and a block_lr of 0 leaves the block out like a weight of 0.

Where kohya ignores a value silently we apply it instead: block_alphas, conv_block_dims or
conv_block_alphas given on their own switch per-block values on (kohya reads them only next to block_dims
or an lr weight). Where kohya crashes (an unknown preset, an lr list too long with the other list absent)
we raise a UserError or keep kohya's rule.
"""

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from loracraft.errors import UserError
from loracraft.networks.kohya_names import check_family

NUM_BLOCKS = {"sd1": 25, "sd2": 25, "sdxl": 23}
LR_WEIGHT_KEYS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
LIST_KEYS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr")
BLOCK_KEYS = (*LR_WEIGHT_KEYS, "block_lr_zero_threshold", *LIST_KEYS)
"""Every --network_args key this module reads."""
PRESETS = ("sine", "cosine", "linear", "reverse_linear", "zeros")

_SD_NAMES = (*(f"IN{i:02d}" for i in range(12)), "MID", *(f"OUT{i:02d}" for i in range(12)))
_SDXL_NAMES = (
    "EMB",
    *(f"IN{i:02d}" for i in range(9)),
    *(f"MID{i:02d}" for i in range(3)),
    *(f"OUT{i:02d}" for i in range(9)),
    "OUT",
)
_SD_ATTENTION = frozenset((1, 2, 4, 5, 7, 8, 12, *range(16, 25)))
_SDXL_ATTENTION = frozenset((5, 6, 8, 9, 11, *range(13, 19)))
_GROUP_SIZES = {"sd1": (12, 1, 12), "sd2": (12, 1, 12), "sdxl": (9, 3, 9)}
"""Blocks covered by down_lr_weight, mid_lr_weight, up_lr_weight."""
_FAMILY_LAYOUT = {
    "sd1": "SD1/SD2 U-Nets have 25 blocks (IN00-IN11, MID, OUT00-OUT11)",
    "sd2": "SD1/SD2 U-Nets have 25 blocks (IN00-IN11, MID, OUT00-OUT11)",
    "sdxl": "SDXL U-Nets have 23 blocks (EMB, IN00-IN08, MID00-MID02, OUT00-OUT08, OUT)",
}

_SD_UPDOWN = re.compile(
    r"^lora_unet_(up|down)_blocks_(\d+)_(resnets|attentions|upsamplers|downsamplers)_(\d+)_"
)
_SDXL_BLOCK = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_")
_SDXL_FIRST_BLOCK = {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}


@dataclass(frozen=True)
class BlockDims:
    """Rank and alpha of every block: one entry per block (NUM_BLOCKS), 0 rank = no module there."""

    dims: tuple[int, ...]
    """Rank of Linear layers and 1x1 convolutions."""
    alphas: tuple[float, ...]
    conv_dims: tuple[int, ...] | None
    """Rank of the other (3x3) convolutions. None: no convolution gets a LoRA, and neither do the Linear and
    1x1 layers of ResNets and samplers (kohya targets those blocks only when convolutions train)."""
    conv_alphas: tuple[float, ...] | None

    def rank_and_alpha(self, block: int, conv3x3: bool) -> tuple[int, float] | None:
        """(rank, alpha) for a module of `block`; None when it gets no LoRA. `conv3x3`: a Conv2d whose
        kernel is not 1x1."""
        if conv3x3:
            if self.conv_dims is None or self.conv_alphas is None:
                return None
            rank, alpha = self.conv_dims[block], self.conv_alphas[block]
        else:
            rank, alpha = self.dims[block], self.alphas[block]
        return (rank, alpha) if rank > 0 else None


def block_names(family: str) -> tuple[str, ...]:
    """Display name of each block, by index: IN00...OUT11 (SD1/SD2), EMB, IN00...OUT (SDXL)."""
    check_family(family)
    return _SDXL_NAMES if family == "sdxl" else _SD_NAMES


def attention_blocks(family: str) -> frozenset[int]:
    """Indices of the blocks that hold attention (Transformer2DModel) layers."""
    check_family(family)
    return _SDXL_ATTENTION if family == "sdxl" else _SD_ATTENTION


def block_index(lora_name: str, family: str) -> int | None:
    """kohya's block index of a U-Net module from its kohya name (get_block_index).

    SD1/SD2 names are diffusers paths (`lora_unet_down_blocks_1_attentions_0_proj_in` -> 4), SDXL names
    LDM paths (`lora_unet_input_blocks_4_1_proj_in` -> 5). None for text-encoder names and for U-Net
    modules outside kohya's blocks (SD1/SD2 conv_in, time_embedding, conv_out), which kohya never targets.
    """
    check_family(family)
    if family == "sdxl":
        return _sdxl_block_index(lora_name)
    return _sd_block_index(lora_name)


def _sd_block_index(lora_name: str) -> int | None:
    match = _SD_UPDOWN.match(lora_name)
    if match:
        direction, block, part, child = match[1], int(match[2]), match[3], int(match[4])
        position = 3 * block + (2 if part.endswith("samplers") else child)
        return 1 + position if direction == "down" else 13 + position
    if lora_name.startswith("lora_unet_mid_block_"):
        return 12
    return None


def _sdxl_block_index(lora_name: str) -> int | None:
    match = _SDXL_BLOCK.match(lora_name)
    if match:
        return _SDXL_FIRST_BLOCK[match[1]] + int(match[2])
    if lora_name.startswith(("lora_unet_time_embed_", "lora_unet_label_emb_")):
        return 0
    if lora_name.startswith("lora_unet_out_"):
        return 22
    return None


def block_lr_weights(blocks: Mapping[str, str], family: str) -> list[float] | None:
    """kohya's learning-rate weight of every block (get_block_lr_weight): multiples of the U-Net learning
    rate. None when no lr weight is given (and when block_lr is: see block_learning_rates)."""
    return _lr_weights(blocks, family)[0]


def block_learning_rates(blocks: Mapping[str, str], family: str, unet_lr: float) -> list[float] | None:
    """Learning rate of every block: block_lr as given, or unet_lr times the lr weights; None when
    neither is given (one learning rate for the whole U-Net). `unet_lr` is --unet_lr, else
    --learning_rate."""
    absolute = _block_lr(blocks, family)
    if absolute is not None:
        return absolute
    weights = block_lr_weights(blocks, family)
    return None if weights is None else [unet_lr * weight for weight in weights]


def block_dims(
    blocks: Mapping[str, str],
    family: str,
    rank: int,
    alpha: float,
    conv_dim: int | None,
    conv_alpha: float | None,
) -> BlockDims | None:
    """Per-block ranks and alphas, or None when no per-block key is given (every U-Net module then
    takes rank/alpha, convolutions conv_dim/conv_alpha).

    Missing lists take the network-wide value; conv_alpha None means kohya's 1.0. Blocks whose learning
    rate (weight or block_lr) is 0 get rank 0 everywhere (kohya's remove_block_dims_and_alphas).
    """
    check_family(family)
    count = NUM_BLOCKS[family]
    if not any(_given(blocks, key) is not None for key in (*LR_WEIGHT_KEYS, *LIST_KEYS)):
        return None
    dims = _block_list(blocks, "block_dims", family, _rank) or [rank] * count
    alphas = _block_list(blocks, "block_alphas", family, _number) or [float(alpha)] * count
    conv_dims = _block_list(blocks, "conv_block_dims", family, _rank)
    if conv_dims is None and conv_dim is not None:
        conv_dims = [conv_dim] * count
    conv_alphas = _block_list(blocks, "conv_block_alphas", family, _number)
    if conv_alphas is not None and conv_dims is None:
        raise UserError(
            "--network_args conv_block_alphas needs conv_dim or conv_block_dims: without them no convolution "
            "gets a LoRA"
        )
    if conv_alphas is None and conv_dims is not None:
        conv_alphas = [1.0 if conv_alpha is None else float(conv_alpha)] * count
    learning_rates = block_learning_rates(blocks, family, 1.0) or []
    for block in (i for i, lr in enumerate(learning_rates) if lr == 0):
        dims[block] = 0
        if conv_dims is not None:
            conv_dims[block] = 0
    return BlockDims(
        tuple(dims),
        tuple(alphas),
        None if conv_dims is None else tuple(conv_dims),
        None if conv_alphas is None else tuple(conv_alphas),
    )


def block_warnings(blocks: Mapping[str, str], family: str, conv_dim: int | None) -> list[str]:
    """One line per thing the user should know about their block values: lr weight lists kohya padded
    or cut, a zero threshold with no weight to apply to, ranks given to blocks without attention."""
    warnings = _lr_weights(blocks, family)[1]
    if _given(blocks, "block_lr_zero_threshold") is not None and not _has_lr_weights(blocks):
        warnings.append(
            "--network_args block_lr_zero_threshold has no effect without down_lr_weight, mid_lr_weight or "
            "up_lr_weight"
        )
    unused = _unused_linear_blocks(blocks, family, conv_dim)
    if unused:
        warnings.append(
            f"--network_args block_dims: {', '.join(unused)} have no attention layers, so these ranks are not "
            "used without conv_dim or conv_block_dims"
        )
    return warnings


def _unused_linear_blocks(blocks: Mapping[str, str], family: str, conv_dim: int | None) -> list[str]:
    """Blocks without attention that block_dims gives a rank which nothing will use."""
    dims = _block_list(blocks, "block_dims", family, _rank)
    if dims is None or conv_dim is not None or _given(blocks, "conv_block_dims") is not None:
        return []
    names, attention = block_names(family), attention_blocks(family)
    return [names[i] for i, rank in enumerate(dims) if rank > 0 and i not in attention]


def _has_lr_weights(blocks: Mapping[str, str]) -> bool:
    return any(_given(blocks, key) is not None for key in LR_WEIGHT_KEYS)


def _lr_weights(blocks: Mapping[str, str], family: str) -> tuple[list[float] | None, list[str]]:
    """kohya's lr weight of every block, and a warning for each list it padded or cut."""
    check_family(family)
    _check_block_lr_alone(blocks)
    if not _has_lr_weights(blocks):
        return None, []
    threshold = _number("block_lr_zero_threshold", _given(blocks, "block_lr_zero_threshold") or "0")
    weights, warnings = [], []
    for key, size in zip(LR_WEIGHT_KEYS, _GROUP_SIZES[family], strict=True):
        value = _given(blocks, key)
        if value is None:
            weights += [1.0] * size
            continue
        group, warning = _fit(key, _group_weights(key, value, size), size)
        weights += [weight if weight > threshold else 0.0 for weight in group]
        warnings += [warning] if warning else []
    if family == "sdxl":
        weights = [1.0, *weights, 1.0]
    return weights, warnings


def _group_weights(key: str, value: str, size: int) -> list[float]:
    """down/up: numbers when there is a comma, else a preset (kohya's rule); mid: always numbers."""
    if key == "mid_lr_weight" or "," in value:
        # kohya reads an empty item as 0: "1,,1" leaves the second block untrained.
        return [_number(key, item) if item.strip() else 0.0 for item in value.split(",")]
    return _preset(key, value, size)


def _preset(key: str, value: str, size: int) -> list[float]:
    name, plus, offset_text = value.strip().partition("+")
    try:
        float(name)
    except ValueError:
        pass
    else:  # kohya takes a lone number for a preset name and stops on it: ask for the list meant
        raise UserError(
            f"--network_args {key}={value}: give one weight per block ({size}), separated by commas, or a "
            f"preset ({', '.join(PRESETS)})"
        )
    if name not in PRESETS:
        raise UserError(
            f"--network_args {key}={value}: unknown preset {name!r}; give numbers separated by commas or one "
            f"of {', '.join(PRESETS)}, optionally with +OFFSET (e.g. sine+.5)"
        )
    offset = _number(key, offset_text) if plus else 0.0
    return [weight + offset for weight in _preset_curve(name, size)]


def _preset_curve(name: str, size: int) -> list[float]:
    """kohya's presets, from the shallowest block to the deepest: sine rises 0 -> 1 along a quarter sine,
    cosine is sine reversed, linear rises 0 -> 1 in equal steps, reverse_linear falls, zeros is 0."""
    steps = [i / (size - 1) for i in range(size)]
    sine = [math.sin(math.pi * step / 2) for step in steps]
    curves = {"sine": sine, "cosine": sine[::-1], "linear": steps, "reverse_linear": steps[::-1]}
    return curves.get(name, [0.0] * size)


def _fit(key: str, weights: list[float], size: int) -> tuple[list[float], str | None]:
    """kohya's padding with 1.0 and cutting to `size`, and the warning that says so."""
    if len(weights) < size:
        missing = size - len(weights)
        return weights + [1.0] * missing, (
            f"--network_args {key} has {len(weights)} values for {size} blocks: the last {missing} train at "
            "weight 1.0, as in kohya"
        )
    if len(weights) > size:
        return weights[:size], (
            f"--network_args {key} has {len(weights)} values for {size} blocks: the last {len(weights) - size} "
            "are ignored, as in kohya"
        )
    return weights, None


def _block_lr(blocks: Mapping[str, str], family: str) -> list[float] | None:
    check_family(family)
    _check_block_lr_alone(blocks)
    return _block_list(blocks, "block_lr", family, _learning_rate)


def _check_block_lr_alone(blocks: Mapping[str, str]) -> None:
    """block_lr sets absolute rates; lr weights and their threshold scale --unet_lr: one or the other."""
    if _given(blocks, "block_lr") is None:
        return
    if _has_lr_weights(blocks):
        raise UserError(
            "--network_args block_lr and down_lr_weight/mid_lr_weight/up_lr_weight both set per-block learning "
            "rates: give block_lr (learning rates) or the lr weights (multiples of --unet_lr), not both"
        )
    if _given(blocks, "block_lr_zero_threshold") is not None:
        raise UserError(
            "--network_args block_lr_zero_threshold applies to the lr weights, not to block_lr: leave it out "
            "and give 0 in block_lr to the blocks to leave out"
        )


def _block_list(
    blocks: Mapping[str, str], key: str, family: str, parse: Callable[[str, str], float]
) -> list | None:
    """One value per block from a comma-separated string, or None when the key is not given."""
    value = _given(blocks, key)
    if value is None:
        return None
    items = value.split(",")
    if len(items) != NUM_BLOCKS[family]:
        raise UserError(
            f"--network_args {key} has {len(items)} values; {_FAMILY_LAYOUT[family]}: give "
            f"{NUM_BLOCKS[family]} values separated by commas"
        )
    return [parse(key, item) for item in items]


def _given(blocks: Mapping[str, str], key: str) -> str | None:
    """The value of `key`; an empty one (a kohya_ss GUI field left blank) counts as not given."""
    value = blocks.get(key)
    return value if value is not None and value.strip() else None


def _number(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--network_args {key}: {text.strip()!r} is not a number") from None


def _learning_rate(key: str, text: str) -> float:
    value = _number(key, text)
    if value < 0:
        raise UserError(f"--network_args {key}: {text.strip()!r} is negative; learning rates are 0 or more")
    return value


def _rank(key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(
            f"--network_args {key}: {text.strip()!r} is not a rank; give whole numbers, 0 or more"
        )
    return value
