"""The CLI's defaults are sd-scripts' own, so a kohya command line trains as in kohya; the kohya_ss GUI's
defaults are declared beside them for the web UI. Both are checked against values taken from kohya's
code (tests/data/kohya/: train_network.py's argparse definitions and the GUI's LoRA tab)."""

import json
from pathlib import Path

import pytest

from loracraft.config.fields import flag_infos
from loracraft.config.schema import TrainConfig

KOHYA = Path(__file__).parents[1] / "data" / "kohya"
DECLARED = flag_infos(TrainConfig)


def kohya_arguments() -> dict[str, dict]:
    data = json.loads((KOHYA / "train_network_args.json").read_text(encoding="utf-8"))
    return {argument["name"]: argument for argument in data["arguments"]}


def gui_emitted() -> dict[str, object]:
    """What the kohya_ss GUI's LoRA tab writes for a setting when left at its defaults (set values only)."""
    data = json.loads((KOHYA / "gui_defaults.json").read_text(encoding="utf-8"))
    emitted = {}
    for name, entry in data["args"].items():
        value = entry.get("emitted_with_gui_defaults")
        if not (isinstance(value, str) and value.startswith("(")):  # "(omitted ...)", "(not evaluated ...)"
            emitted[name] = value
    return emitted


# Where kohya's default means "unset" and loracraft spells the same choice another way.
SAME_CHOICE = {
    "optimizer_args": (None, []),
    "lr_scheduler_args": (None, []),
    "network_args": (None, []),
    "optimizer_type": ("", "AdamW"),
    # kohya requires the flag; loracraft trains kohya's LoRA when it is not given
    "network_module": (None, "networks.lora"),
}
# Deliberate differences; each field's `--help` text says so, naming kohya.
DIFFERENT_ON_PURPOSE = {"sdpa"}


@pytest.mark.parametrize("name", sorted(set(DECLARED) & set(kohya_arguments())))
def test_default_is_sd_scripts_default(name):
    kohya_default = kohya_arguments()[name]["default"]
    ours = DECLARED[name].default
    ours = list(ours) if isinstance(ours, tuple) else ours
    if name in DIFFERENT_ON_PURPOSE:
        assert ours != kohya_default and "kohya" in DECLARED[name].description
    elif name in SAME_CHOICE:
        assert (kohya_default, ours) == SAME_CHOICE[name]
    elif name == "resolution":  # kohya: required for folder datasets, no default; ours is kohya's usual 512
        assert kohya_default is None and ours == [512, 512]
    else:
        assert ours == kohya_default


@pytest.mark.parametrize("name", sorted(set(DECLARED) - set(kohya_arguments())))
def test_settings_kohya_lacks_say_so(name):
    assert "loracraft's own" in DECLARED[name].description or "kohya: " in DECLARED[name].description


@pytest.mark.parametrize("name", sorted(set(DECLARED) & set(gui_emitted())))
def test_gui_default_is_the_kohya_ss_gui_value(name):
    gui = gui_emitted()[name]
    if name == "text_encoder_lr":  # the GUI writes one value per text encoder
        gui = gui[0]
    if name == "resolution":
        gui = tuple(int(side) for side in gui.split(","))
    info = DECLARED[name]
    if gui == info.default or (name == "optimizer_args" and gui == []):
        assert not info.has_gui_default
    else:
        assert info.has_gui_default and info.gui_default == gui
