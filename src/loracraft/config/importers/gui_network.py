"""The network a kohya_ss GUI config trains: its LoRA type and form keys as --network_module and
--network_args, word for word as the GUI's train_model builds them (kohya_gui/lora_gui.py), so that a GUI
config lands on the same network and records the same ss_network_args.

The LyCORIS types pass their form keys whatever their values; kohya's own types pass a key only when its
value is set (not "", 0 or false). A key missing from an older config takes the GUI's form default. A word
the chosen algorithm has no use for (the GUI passes conv_dim to IA3, use_tucker to BOFT) is left out, with
the reason in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loracraft.networks.network_spec import DYLORA, GUI_LORA_TYPES, LORA, key_applies

ALGO = "algo"  # where a LyCORIS type writes its algo=... word
_LYCORIS_LOW_RANK = ("LyCORIS_preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode",
                     "dora_wd", "module_dropout", "use_scalar", "rank_dropout_scale", ALGO, "train_norm")  # fmt: skip
LYCORIS_WORDS = {
    "LyCORIS/BOFT": ("LyCORIS_preset", "conv_dim", "conv_alpha", "module_dropout", "use_tucker", "rank_dropout",
                     "rank_dropout_scale", ALGO, "train_norm"),
    "LyCORIS/Diag-OFT": ("LyCORIS_preset", "conv_dim", "conv_alpha", "module_dropout", "use_tucker",
                         "rank_dropout", "rank_dropout_scale", "constrain", "rescaled", ALGO, "train_norm"),
    "LyCORIS/DyLoRA": ("LyCORIS_preset", "conv_dim", "conv_alpha", "use_tucker", "unit", "rank_dropout",
                       "module_dropout", ALGO, "train_norm"),
    "LyCORIS/GLoRA": ("LyCORIS_preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "module_dropout",
                      "rank_dropout_scale", ALGO, "train_norm"),
    "LyCORIS/iA3": ("LyCORIS_preset", "conv_dim", "conv_alpha", "train_on_input", ALGO),
    "LyCORIS/LoCon": _LYCORIS_LOW_RANK,
    "LyCORIS/LoHa": _LYCORIS_LOW_RANK,
    "LyCORIS/LoKr": ("LyCORIS_preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode",
                     "dora_wd", "module_dropout", "factor", "use_cp", "use_scalar", "decompose_both",
                     "rank_dropout_scale", ALGO, "train_norm"),
    "LyCORIS/Native Fine-Tuning": ("LyCORIS_preset", "rank_dropout", "module_dropout", "rank_dropout_scale",
                                   ALGO, "train_norm"),
}  # fmt: skip
# The network arg each form key becomes where its name differs (LyCORIS calls DyLoRA's unit block_size).
LYCORIS_ARG_NAMES = {"LyCORIS_preset": "preset", "constrain": "constraint", "unit": "block_size"}
_BLOCKS_AND_DROPOUTS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold",
                        "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "rank_dropout",
                        "module_dropout")  # fmt: skip
# kohya's types: (keys passed whatever their value, keys passed when set).
KOHYA_WORDS = {
    "Standard": ((), _BLOCKS_AND_DROPOUTS),
    "LoRA-FA": ((), _BLOCKS_AND_DROPOUTS),
    "Kohya LoCon": (("conv_dim", "conv_alpha"), _BLOCKS_AND_DROPOUTS),
    "Kohya DyLoRA": ((), ("conv_dim", "conv_alpha", *_BLOCKS_AND_DROPOUTS[:8], "unit", "rank_dropout",
                          "module_dropout")),
}  # fmt: skip
NATIVE_LOHA_LOKR = ("Kohya LoHa", "Kohya LoKr")
LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
# Every form key that may become a network arg.
NETWORK_FORM_KEYS = frozenset(
    {key for words in LYCORIS_WORDS.values() for key in words if key != ALGO}
    | {key for both in KOHYA_WORDS.values() for words in both for key in words}
    | {"factor", *LORAPLUS}
)
# The GUI's form defaults (kohya_gui/lora_gui.py lora_tab), for keys an older config lacks.
FORM_DEFAULTS: dict[str, Any] = {
    "LyCORIS_preset": "full", "conv_dim": 1, "conv_alpha": 1, "use_tucker": False, "use_cp": False,
    "use_scalar": False, "rank_dropout_scale": False, "constrain": 0.0, "rescaled": False, "train_norm": False,
    "decompose_both": False, "train_on_input": True, "factor": -1, "bypass_mode": False, "dora_wd": False,
    "unit": 1, "rank_dropout": 0, "module_dropout": 0.0,
}  # fmt: skip
UNSUPPORTED = {
    "LoRA-FA": "LoRA-FA (kohya's networks.lora_fa: a LoRA whose lora_down stays frozen) is not supported: "
    "imported as a plain LoRA (networks.lora)",
}


@dataclass
class GuiNetwork:
    """What the GUI passes for one config: the module, the network args in the GUI's order, and for each
    form key the words it became (empty: passed nothing) or why the network does without it."""

    module: str
    algo: str
    args: list[str] = field(default_factory=list)
    words: dict[str, list[str]] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    from_type: list[str] = field(default_factory=list)
    """The words of the LoRA type itself (algo, and form defaults for keys the config lacks)."""


def gui_network(data: dict[str, Any], network_type: str) -> GuiNetwork:
    """The network of a GUI config of `network_type` (an SD1/SD2/SDXL type; LoRA-FA trains networks.lora)."""
    module, fixed = GUI_LORA_TYPES.get(network_type, (LORA, {}))
    network = GuiNetwork(module, fixed.get(ALGO, "dylora" if module == DYLORA else "lora"))
    if network_type in LYCORIS_WORDS:
        for key in LYCORIS_WORDS[network_type]:
            if key == ALGO:
                network.from_type.append(_add(network, ALGO, fixed[ALGO]))
            else:
                _add_form_key(network, data, key, LYCORIS_ARG_NAMES.get(key, key), network_type)
    elif network_type in NATIVE_LOHA_LOKR:
        _native_loha_lokr(network, data, network_type)
    else:
        always, when_set = KOHYA_WORDS.get(network_type, KOHYA_WORDS["Standard"])
        for key in always:
            _add_form_key(network, data, key, key, network_type)
        for key in when_set:
            _add_form_key(network, data, key, key, network_type, only_when_set=True)
    for key in LORAPLUS:
        _add_form_key(network, data, key, key, network_type, only_when_set=True)
    return network


def _native_loha_lokr(network: GuiNetwork, data: dict[str, Any], network_type: str) -> None:
    """kohya's networks.loha / networks.lokr (build_native_loha_lokr_network_args) as the same LyCORIS
    algorithm on kohya's LoRA targets: without conv_dim, preset attn-mlp keeps the convolutions out."""
    network.from_type.append(_add(network, ALGO, network.algo))
    conv_dim = _value(data, "conv_dim")
    if not _is_set(conv_dim) or float(conv_dim) <= 0:
        network.from_type.append(_add(network, "preset", "attn-mlp"))
    for key in ("conv_dim", "conv_alpha", "use_tucker", "factor", "rank_dropout", "module_dropout"):
        if key == "factor" and network.algo != "lokr":
            continue
        value = _value(data, key)
        passed = _is_set(value) and value != -1 and (key != "conv_alpha" or _is_set(conv_dim))
        _add_form_key(network, data, key, key, network_type, only_when_set=True, passed=passed)


def _add_form_key(
    network: GuiNetwork,
    data: dict[str, Any],
    key: str,
    arg: str,
    network_type: str,
    only_when_set: bool = False,
    passed: bool | None = None,
) -> None:
    value = _value(data, key)
    if passed is None:
        passed = _is_set(value) or not only_when_set
    if not passed:
        network.words.setdefault(key, [])
        return
    if not key_applies(arg, network.module, network.algo):
        network.left_out[key] = (
            f"{network_type} does not use it: the GUI passes {arg}={value}, which LyCORIS ignores"
        )
        return
    word = _add(network, arg, value)
    if key in data:
        network.words.setdefault(key, []).append(word)
    else:
        network.from_type.append(word)


def _add(network: GuiNetwork, arg: str, value: Any) -> str:
    word = f"{arg}={value}".replace('"', "")  # the GUI drops double quotes from its network args
    network.args.append(word)
    return word


def _value(data: dict[str, Any], key: str) -> Any:
    value = data.get(key)
    return FORM_DEFAULTS.get(key, "") if value is None else value


def _is_set(value: Any) -> bool:
    """The GUI's test for kohya's types: a value that is not "", 0, False or None."""
    return bool(value)
