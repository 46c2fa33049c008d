"""The network a run trains: kohya's --network_module and --network_args, read once into a NetworkSpec.

kohya hands `--network_args` to the network module as strings, and each module reads the keys it knows and
drops the rest without a word; LyCORIS even reads "0" as true. Here every key is checked when the config is
validated: an unknown key, a value of the wrong type, an algorithm LyCORIS does not have, or a key that does
something only for another module or algorithm is one line naming `--network_args KEY` and the fix. A key
that does not apply is accepted when it holds its default (the kohya_ss GUI prints some keys for every
type, `use_tucker=False` for BOFT), since it changes nothing.

What each key means, and its default, follow kohya's networks.lora, networks.dylora and networks.oft and
LyCORIS' lycoris.kohya. Where they have a trap loracraft keeps the key and fixes the behaviour: booleans are
read strictly, LyCORIS' old spellings of use_tucker (use_cp, use_conv_cp, disable_conv_cp) turn Tucker on
when any of them says so (LyCORIS lets a false `use_cp` win over `use_tucker=True`), `dropout` in the
network args is the neuron dropout for every module (networks.lora ignores it), a LoRA+ ratio of 0 is
refused (kohya would then never train lora_up), and conv_dim=0 on networks.lora means no conv adapters.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loracraft.config.suggest import did_you_mean
from loracraft.config.values import parse_bool
from loracraft.errors import UserError

if TYPE_CHECKING:
    from loracraft.config.network_options import NetworkOptions

LORA = "networks.lora"
DYLORA = "networks.dylora"
OFT = "networks.oft"
LYCORIS = "lycoris.kohya"
MODULES = (LORA, DYLORA, OFT, LYCORIS)
ALGOS = ("lora", "locon", "loha", "lokr", "ia3", "dylora", "glora", "diag-oft", "boft", "full")
PRESETS = (
    "full", "full-lin", "attn-mlp", "attn-only", "unet-only", "unet-transformer-only", "unet-convblock-only",
)  # fmt: skip
# Algorithms with a rank (the others: IA3 scales, OFT rotates in blocks, full trains the weight itself).
RANKED = ("lora", "locon", "loha", "lokr", "dylora", "glora")
# Those whose LyCORIS modules take Tucker, a trained scalar and DoRA.
LOW_RANK = ("lora", "locon", "loha", "lokr")
WITH_CONV_RANK = (*RANKED, "diag-oft", "boft")
OFT_ALGOS = ("diag-oft", "boft")
BLOCK_LR_KEYS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_lr")
BLOCK_DIM_KEYS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
LORAPLUS_KEYS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
TUCKER_KEYS = ("use_tucker", "use_cp", "use_conv_cp", "disable_conv_cp")

# The kohya_ss GUI's "LoRA type" menu: the module each type trains and the network args it always sets
# (its form adds the others: kohya_gui/lora_gui.py, train_model; importers/gui_network.py).
GUI_LORA_TYPES: dict[str, tuple[str, dict[str, str]]] = {
    "Standard": (LORA, {}),
    "Kohya LoCon": (LORA, {}),
    "Kohya DyLoRA": (DYLORA, {}),
    "LoCon": (LYCORIS, {"algo": "locon"}),  # older GUIs' name for LyCORIS/LoCon
    "LyCORIS/LoCon": (LYCORIS, {"algo": "locon"}),
    "LyCORIS/LoHa": (LYCORIS, {"algo": "loha"}),
    "LyCORIS/LoKr": (LYCORIS, {"algo": "lokr"}),
    "LyCORIS/iA3": (LYCORIS, {"algo": "ia3"}),
    "LyCORIS/DyLoRA": (LYCORIS, {"algo": "dylora"}),
    "LyCORIS/GLoRA": (LYCORIS, {"algo": "glora"}),
    "LyCORIS/Diag-OFT": (LYCORIS, {"algo": "diag-oft"}),
    "LyCORIS/BOFT": (LYCORIS, {"algo": "boft"}),
    "LyCORIS/Native Fine-Tuning": (LYCORIS, {"algo": "full"}),
    # kohya's own LoHa/LoKr (networks.loha / networks.lokr, SDXL): the same modules and keys as LyCORIS'.
    "Kohya LoHa": (LYCORIS, {"algo": "loha"}),
    "Kohya LoKr": (LYCORIS, {"algo": "lokr"}),
}


@dataclass(frozen=True)
class NetworkSpec:
    """The network type and every option of it, typed, with kohya's and LyCORIS' defaults resolved."""

    module: str
    """kohya's --network_module: networks.lora, networks.dylora, networks.oft or lycoris.kohya."""
    algo: str
    """One of ALGOS: networks.lora trains "lora" ("locon" once conv_dim or conv_block_dims is given),
    networks.dylora "dylora", networks.oft "diag-oft", lycoris.kohya its `algo` (LyCORIS' default "lora")."""
    conv_dim: int | None = None
    """Rank on the 3x3 convolutions. networks.lora / networks.dylora: None = no conv adapters.
    lycoris.kohya: LyCORIS' value (conv_dim, else --network_dim) and the preset decides which convolutions
    get adapters; ia3 and full, which have no rank, hold --network_dim (unused) so their convolutions train."""
    conv_alpha: float | None = None
    """kohya's default 1.0 once convolutions train; LyCORIS' default --network_alpha."""
    use_tucker: bool = False
    use_scalar: bool = False
    factor: int = -1
    """LoKr's factor; -1 lets LyCORIS choose."""
    decompose_both: bool = False
    full_matrix: bool = False
    dropout: float | None = None
    """Neuron dropout: network_args `dropout`, else --network_dropout."""
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    rank_dropout_scale: bool = False
    dora_wd: bool = False
    wd_on_output: bool = True
    constraint: float = 0.0
    """OFT's norm constraint; networks.oft takes it from --network_alpha, as kohya does."""
    rescaled: bool = False
    train_norm: bool = False
    bypass_mode: bool | None = None
    """None when not given (the trainer chooses); LyCORIS' default is False."""
    dylora_unit: int = 1
    """DyLoRA's unit: networks.dylora's `unit` (default 1), LyCORIS' `block_size` (default 4)."""
    train_on_input: bool = False
    """IA3 scales the layer's input instead of its output."""
    enable_all_linear: bool = False
    """networks.oft: every Linear of the transformer blocks, not only attention."""
    enable_conv: bool = False
    """networks.oft: the 3x3 convolutions too."""
    preset: str = "full"
    """lycoris.kohya's module preset: a name of PRESETS or a preset .toml file."""
    target_module: tuple[str, ...] = ()
    """Module class names whose layers get adapters, instead of the type's own."""
    exclude_patterns: tuple[str, ...] = ()
    """Regular expressions; a module whose name (as in the model, dots and all) matches one in full gets no
    adapter. kohya's spelling: a Python list of strings, or one string."""
    include_patterns: tuple[str, ...] = ()
    """Regular expressions that bring back a module exclude_patterns would drop."""
    blocks: Mapping[str, str] = field(default_factory=dict)
    """The per-block keys as given (networks/blocks.py reads them)."""
    loraplus_lr_ratio: float | None = None
    loraplus_unet_lr_ratio: float | None = None
    loraplus_text_encoder_lr_ratio: float | None = None
    given: Mapping[str, str] = field(default_factory=dict)
    """--network_args as given, key -> text (a key given twice keeps its last value, as kohya's dict)."""


def network_spec(config: NetworkOptions) -> NetworkSpec:
    """The network of `config` (a TrainConfig); UserError naming --network_args KEY or --network_module."""
    given = _given_args(config.network_args)
    algo = _algo(config.network_module, given)
    values = {key: _read(key, text, config.network_module, algo) for key, text in given.items()}
    # A key that does not apply holds its default (else _read refused it): it changes nothing.
    values = {key: value for key, value in values.items() if key_applies(key, config.network_module, algo)}
    _check_relations(config, values, algo)
    return _spec(config, algo, values, given)


def recorded_network_args(config: NetworkOptions) -> dict[str, str | float | None] | None:
    """`ss_network_args` as kohya records it: the network args as given, plus `dropout` (--network_dropout)
    unless they name it or the rank comes from --network_weights; None without network args."""
    if not config.network_args:
        return None
    recorded: dict[str, str | float | None] = dict(_given_args(config.network_args))
    if not config.dim_from_weights and "dropout" not in recorded:
        recorded["dropout"] = config.network_dropout
    return recorded


def key_applies(key: str, module: str, algo: str) -> bool:
    """Whether network arg `key` does something for `module` training `algo`."""
    declared = _KEYS[_CANONICAL.get(key, key)]
    return module in declared.modules and algo in declared.algos


@dataclass(frozen=True)
class _Key:
    """One network arg: how its text is read (ValueError: what is wrong), its default, where it applies."""

    read: Callable[[str], Any]
    default: Any
    modules: tuple[str, ...] = MODULES
    algos: tuple[str, ...] = ALGOS
    example: str | None = None


def _whole_number(minimum: int) -> Callable[[str], int]:
    def read(text: str) -> int:
        number = _float(text)
        if number is None or not number.is_integer() or number < minimum:
            raise ValueError(f"{text!r} is not a whole number of {minimum} or more")
        return int(number)

    return read


def _number(minimum: float, below: float | None = None, above: bool = False) -> Callable[[str], float]:
    if below is not None:
        expected = f"a number from {minimum:g} to below {below:g}"
    else:
        expected = f"a number above {minimum:g}" if above else f"a number of {minimum:g} or more"

    def read(text: str) -> float:
        number = _float(text)
        if (
            number is None
            or number < minimum
            or (above and number == minimum)
            or (below is not None and number >= below)
        ):
            raise ValueError(f"{text!r} is not {expected}")
        return number

    return read


def _float(text: str) -> float | None:
    """A finite number, or None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _boolean(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError:
        raise ValueError(f"{text!r} is not true or false") from None


def _factor(text: str) -> int:
    number = _float(text)
    if number is None or not number.is_integer() or (number < 1 and number != -1):
        raise ValueError(f"{text!r} is not -1 (LyCORIS chooses) or a whole number of 1 or more")
    return int(number)


def _algo_name(text: str) -> str:
    name = text.strip().lower()
    if name not in ALGOS:
        raise ValueError(
            f"{text!r} is not a LyCORIS algorithm loracraft trains{did_you_mean(name, ALGOS)}; choose "
            f"{', '.join(ALGOS[:-1])} or {ALGOS[-1]}"
        )
    return name


def _preset(text: str) -> str:
    if text in PRESETS or text.lower().endswith(".toml"):
        return text
    raise ValueError(
        f"{text!r} is not a LyCORIS preset loracraft trains{did_you_mean(text, PRESETS)}; choose {', '.join(PRESETS)} "
        "or a preset .toml file"
    )


def _text_list(text: str, what: str) -> list[str]:
    """kohya's pattern lists: a Python literal, one string or a list of strings. One unquoted item is read as
    itself (kohya stops with a SyntaxError there)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None if text.lstrip().startswith("[") else text.strip()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError(f"{text!r} is not {what} or a Python list of them")
    return list(items)


def _patterns(text: str) -> tuple[str, ...]:
    patterns = _text_list(text, "a regular expression")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{pattern!r} is not a regular expression ({err})") from None
    return tuple(patterns)


def _class_names(text: str) -> tuple[str, ...]:
    names = _text_list(text, "a module class name")
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a module class name")
    return tuple(names)


_FRACTION = _number(0, below=1)
_RATIO = _number(0, above=True)
_KOHYA_RANK_MODULES = (LORA, DYLORA, LYCORIS)
_KEYS: dict[str, _Key] = {
    "algo": _Key(_algo_name, "lora", (LYCORIS,)),
    "preset": _Key(_preset, "full", (LYCORIS,)),
    "conv_dim": _Key(_whole_number(0), None, _KOHYA_RANK_MODULES, WITH_CONV_RANK, "8"),
    "conv_alpha": _Key(_number(0), None, _KOHYA_RANK_MODULES, WITH_CONV_RANK, "4"),
    "dropout": _Key(_FRACTION, None, _KOHYA_RANK_MODULES, example="0.1"),
    "rank_dropout": _Key(_FRACTION, 0.0, _KOHYA_RANK_MODULES, example="0.1"),
    "module_dropout": _Key(_FRACTION, 0.0, _KOHYA_RANK_MODULES, example="0.1"),
    "rank_dropout_scale": _Key(_boolean, False, (LYCORIS,), example="True"),
    "use_tucker": _Key(_boolean, False, (LYCORIS,), LOW_RANK, "True"),
    "use_scalar": _Key(_boolean, False, (LYCORIS,), LOW_RANK, "True"),
    "dora_wd": _Key(_boolean, False, (LYCORIS,), LOW_RANK, "True"),
    "wd_on_output": _Key(_boolean, True, (LYCORIS,), LOW_RANK, "False"),
    "factor": _Key(_factor, -1, (LYCORIS,), ("lokr",), "8"),
    "decompose_both": _Key(_boolean, False, (LYCORIS,), ("lokr",), "True"),
    "full_matrix": _Key(_boolean, False, (LYCORIS,), ("lokr",), "True"),
    "constraint": _Key(_number(0), 0.0, (LYCORIS,), OFT_ALGOS, "1e-4"),
    "rescaled": _Key(_boolean, False, (LYCORIS,), OFT_ALGOS, "True"),
    "train_norm": _Key(_boolean, False, (LYCORIS,), example="True"),
    "bypass_mode": _Key(_boolean, False, (LYCORIS,), example="True"),
    "block_size": _Key(_whole_number(1), 4, (LYCORIS,), ("dylora",), "4"),
    "unit": _Key(_whole_number(1), 1, (DYLORA,), example="4"),
    "train_on_input": _Key(_boolean, False, (LYCORIS,), ("ia3",), "True"),
    "enable_all_linear": _Key(_boolean, False, (OFT,), example="True"),
    "enable_conv": _Key(_boolean, False, (OFT,), example="True"),
    "target_module": _Key(_class_names, (), example="['Transformer2DModel']"),
    "exclude_patterns": _Key(_patterns, (), example="['.*attn2.*']"),
    "include_patterns": _Key(_patterns, (), example="['.*attn2_to_k']"),
    **{
        key: _Key(_RATIO, None, _KOHYA_RANK_MODULES, ("lora", "locon", "dylora"), "16")
        for key in LORAPLUS_KEYS
    },
    **{key: _Key(str, None) for key in BLOCK_LR_KEYS},
    **{key: _Key(str, None, _KOHYA_RANK_MODULES, RANKED) for key in BLOCK_DIM_KEYS},
}
# LyCORIS' old spellings, read as the key they stand for (disable_conv_cp is use_tucker's negation).
_CANONICAL = {"use_cp": "use_tucker", "use_conv_cp": "use_tucker", "disable_conv_cp": "use_tucker",
              "constrain": "constraint"}  # fmt: skip
NETWORK_ARG_KEYS = frozenset(_KEYS) | frozenset(_CANONICAL)
# A key of one module whose meaning another module has under another name.
_NAMED_ELSEWHERE = {("unit", LYCORIS): "block_size", ("block_size", DYLORA): "unit"}


def _given_args(items: list[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for item in items:
        key, equals, text = item.partition("=")
        if not equals or not key.strip():
            raise UserError(f"--network_args {item!r}: not KEY=VALUE; e.g. conv_dim=8")
        given[key.strip()] = text.strip()
    return given


def _algo(module: str, given: Mapping[str, str]) -> str:
    """The algorithm `module` trains; a valid algo key, when given, is read here first."""
    if module == LYCORIS and "algo" in given:
        try:
            return _algo_name(given["algo"])
        except ValueError as err:
            raise UserError(f"--network_args algo: {err}") from None
    return {DYLORA: "dylora", OFT: "diag-oft"}.get(module, "lora")


def _read(key: str, text: str, module: str, algo: str) -> Any:
    declared = _KEYS.get(_CANONICAL.get(key, key))
    if declared is None:
        raise UserError(
            f"--network_args {key}: unknown key{did_you_mean(key, [*_KEYS, *_CANONICAL])}; "
            "`loracraft train --help` lists the keys under --network_args"
        )
    try:
        value = declared.read(text)
    except ValueError as err:
        example = f"; e.g. {key}={declared.example}" if declared.example else ""
        raise UserError(f"--network_args {key}: {err}{example}") from None
    if key == "disable_conv_cp":
        value = not value
    if value != declared.default and not key_applies(key, module, algo):
        raise UserError(f"--network_args {key}: {_why_not(key, declared, module, algo)}")
    return value


def _why_not(key: str, declared: _Key, module: str, algo: str) -> str:
    if module not in declared.modules:
        elsewhere = _NAMED_ELSEWHERE.get((key, module))
        named = f"; {module} names it {elsewhere}" if elsewhere else ""
        return (
            f"a key of {_listed(declared.modules)}, not of {module}; use --network_module "
            f"{declared.modules[0]} or remove it{named}"
        )
    return f"does nothing for algo {algo} (it applies to {_listed(declared.algos)}); remove it"


def _listed(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _check_relations(config: NetworkOptions, values: Mapping[str, Any], algo: str) -> None:
    module = config.network_module
    if "wd_on_output" in values and values["wd_on_output"] is False and not values.get("dora_wd"):
        raise UserError(
            "--network_args wd_on_output: sets the axis of DoRA's weight norm; add dora_wd=True or remove it"
        )
    dropout = values.get("dropout")
    if dropout is not None and config.network_dropout is not None and dropout != config.network_dropout:
        raise UserError(
            f"--network_args dropout: {dropout:g} and --network_dropout {config.network_dropout:g} both set "
            "the neuron dropout; keep one"
        )
    rank = config.network_rank
    if module == DYLORA and values.get("conv_dim") not in (None, 0, rank):
        raise UserError(
            f"--network_args conv_dim: networks.dylora needs conv_dim equal to --network_dim ({rank}); "
            f"give conv_dim={rank} or remove it"
        )
    if algo == "dylora" and not config.dim_from_weights:
        _check_dylora_unit(module, values, rank)


def _check_dylora_unit(module: str, values: Mapping[str, Any], rank: int) -> None:
    key = "unit" if module == DYLORA else "block_size"
    unit = values.get(key, _KEYS[key].default)
    ranks = {"--network_dim": rank}
    if module == LYCORIS and values.get("conv_dim"):
        ranks["conv_dim"] = values["conv_dim"]
    for name, value in ranks.items():
        if value % unit:
            default = "" if key in values else f" ({key}'s default)"
            raise UserError(
                f"--network_args {key}: DyLoRA trains the rank in steps of {unit}{default} and {name} "
                f"{value} is not a multiple of it; give a {key} that divides {value}"
            )


def _spec(config: NetworkOptions, algo: str, values: dict[str, Any], given: dict[str, str]) -> NetworkSpec:
    module = config.network_module
    options = {
        name: values[name]
        for name in ("use_scalar", "factor", "decompose_both", "full_matrix", "rank_dropout", "module_dropout",
                     "rank_dropout_scale", "dora_wd", "wd_on_output", "rescaled", "train_norm", "bypass_mode",
                     "train_on_input", "enable_all_linear", "enable_conv", "preset", "target_module",
                     "exclude_patterns", "include_patterns", *LORAPLUS_KEYS)
        if name in values
    }  # fmt: skip
    tucker = [values[key] for key in TUCKER_KEYS if key in values]
    conv_dim, conv_alpha = _conv(config, module, algo, values)
    if module == LORA and (conv_dim or "conv_block_dims" in values):
        algo = "locon"  # kohya's LoCon (C3Lier): networks.lora with adapters on the 3x3 convolutions
    dropout = values.get("dropout")
    return NetworkSpec(
        module=module,
        algo=algo,
        conv_dim=conv_dim,
        conv_alpha=conv_alpha,
        use_tucker=any(tucker),
        dropout=config.network_dropout if dropout is None else dropout,
        constraint=config.network_alpha
        if module == OFT
        else values.get("constraint", values.get("constrain", 0.0)),
        dylora_unit=values.get("unit", values.get("block_size", 4 if module == LYCORIS else 1)),
        blocks={key: given[key] for key in given if key in BLOCK_LR_KEYS + BLOCK_DIM_KEYS},
        given=given,
        **options,
    )


def _conv(
    config: NetworkOptions, module: str, algo: str, values: Mapping[str, Any]
) -> tuple[int | None, float | None]:
    """(conv_dim, conv_alpha) with the module's defaults (see NetworkSpec.conv_dim)."""
    conv_dim, conv_alpha = values.get("conv_dim"), values.get("conv_alpha")
    if module == LYCORIS:  # LyCORIS: `int(conv_dim or network_dim)`, `float(conv_alpha or network_alpha)`
        if algo not in WITH_CONV_RANK:  # IA3 and full adapt the convolutions too, with no rank to give
            return config.network_rank, config.network_alpha
        return conv_dim or config.network_rank, conv_alpha or config.network_alpha
    if module == OFT:
        return None, None
    if not conv_dim and "conv_block_dims" not in values:
        return None, None
    return conv_dim or None, 1.0 if conv_alpha is None else conv_alpha  # kohya's conv_alpha default
