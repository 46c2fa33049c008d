"""The shipped presets: TOML files of this folder, each a starting point for one kind of run (SD1.5 or
SDXL, a character or a style, on 8, 12 or 24 GB of GPU memory), loadable with `--config_file`."""

from __future__ import annotations

from importlib import resources
from typing import Any

from loracraft.config.files import tomllib
from loracraft.config.suggest import did_you_mean
from loracraft.errors import UserError

SUFFIX = ".toml"


def preset_names() -> list[str]:
    return sorted(
        entry.name.removesuffix(SUFFIX)
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(SUFFIX)
    )


def preset_text(name: str) -> str:
    """The preset's file, comments included."""
    names = preset_names()
    if name not in names:
        raise UserError(
            f"unknown preset {name!r}{did_you_mean(name, names)}; `loracraft config presets` lists them"
        )
    return resources.files(__name__).joinpath(name + SUFFIX).read_text(encoding="utf-8")


def load_preset(name: str) -> dict[str, Any]:
    """The preset's settings: TrainConfig field -> value."""
    return tomllib.loads(preset_text(name))
