"""A kohya TOML config_file (flat; sections are flattened as sd-scripts does), such as the one the kohya_ss
GUI writes next to the command it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loracraft.config.files import read_table_file
from loracraft.config.importers.kinds import TEXTUAL_INVERSION_KEYS, refuse
from loracraft.config.importers.kohya_flags import map_kohya_setting
from loracraft.config.importers.report import ImportReport
from loracraft.errors import UserError


def import_kohya_toml(path: str | Path) -> ImportReport:
    data = read_table_file(path, "config", "key = value pairs")
    return import_kohya_table(data, str(path), "a kohya TOML config")


def import_kohya_table(data: dict[str, Any], source: str, kind: str) -> ImportReport:
    """Every key of a table of sd-scripts settings, mapped or ignored."""
    if isinstance(data.get("datasets"), list):
        raise UserError(
            f"{source} is a kohya dataset config: give it to training as --dataset_config {source}"
        )
    if any(key in data for key in TEXTUAL_INVERSION_KEYS):
        raise refuse(source, "a Textual Inversion config")
    report = ImportReport(f"{source}: {kind}")
    for key, value in _flattened(data).items():
        map_kohya_setting(key, value, report, source)
    return report


def _flattened(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat
