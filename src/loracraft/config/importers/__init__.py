"""Importing other tools' configs: the kohya_ss GUI's JSON, kohya TOML config files and pasted kohya
command lines, each read key by key into TrainConfig values with a report of what became of every key."""

from __future__ import annotations

import json
import re
from pathlib import Path

from loracraft.config.files import read_table_file
from loracraft.config.importers.command_line import import_command_line
from loracraft.config.importers.kohya_flags import ALIASES, FIELDS
from loracraft.config.importers.kohya_gui_json import import_gui_json
from loracraft.config.importers.kohya_toml import import_kohya_table, import_kohya_toml
from loracraft.config.importers.report import IgnoredKey, ImportReport, MappedKey, report_lines
from loracraft.errors import UserError

__all__ = [
    "IgnoredKey",
    "ImportReport",
    "MappedKey",
    "import_config",
    "is_kohya_gui_json",
    "names_a_file",
    "report_lines",
]
KINDS = ("auto", "kohya_ss_json", "toml", "command_line")
_COMMAND_FLAG = re.compile(r"(^|\s)--\w")
_COMMAND_SUFFIXES = (".txt", ".sh", ".bat", ".cmd", ".ps1")


def import_config(path_or_text: str | Path, kind: str = "auto") -> ImportReport:
    """A file (by its suffix) or pasted text (JSON, TOML or a command line), read as `kind`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if isinstance(path_or_text, Path) or names_a_file(path_or_text):
        return _import_file(Path(path_or_text), kind)
    return _import_text(str(path_or_text), kind)


def is_kohya_gui_json(data: dict) -> bool:
    """A JSON object the kohya_ss GUI wrote, rather than one of loracraft's (and sd-scripts') own keys."""
    return any(key not in FIELDS and key not in ALIASES for key in data)


def names_a_file(text: str) -> bool:
    """Whether `import_config` reads `text` as a file's path (else as the config's own text)."""
    return "\n" not in text and Path(text).suffix.lower() in (".json", ".toml", *_COMMAND_SUFFIXES)


def _import_file(path: Path, kind: str) -> ImportReport:
    suffix = path.suffix.lower()
    if kind == "command_line" or (kind == "auto" and suffix not in (".json", ".toml")):
        if not path.is_file():
            raise UserError(f"{path} does not exist")
        return import_command_line(path.read_text(encoding="utf-8"), str(path))
    if kind == "toml" or (kind == "auto" and suffix == ".toml"):
        return import_kohya_toml(path)
    data = read_table_file(path, "config", "a JSON object of settings")
    return _import_json(data, str(path), kind)


def _import_json(data: dict, source: str, kind: str) -> ImportReport:
    if kind == "kohya_ss_json" or is_kohya_gui_json(data):
        return import_gui_json(data, source)
    return import_kohya_table(data, source, "a JSON of sd-scripts settings")


def _import_text(text: str, kind: str) -> ImportReport:
    stripped = text.strip()
    if kind in ("kohya_ss_json",) or (kind == "auto" and stripped.startswith("{")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise UserError(f"the pasted JSON cannot be read: {err}") from None
        if not isinstance(data, dict):
            raise UserError("the pasted JSON must be an object of settings")
        return _import_json(data, "the pasted JSON", kind)
    if kind == "toml" or (kind == "auto" and not _COMMAND_FLAG.search(stripped)):
        return _import_toml_text(stripped)
    return import_command_line(stripped)


def _import_toml_text(text: str) -> ImportReport:
    from loracraft.config.files import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"the pasted TOML cannot be read: {err}") from None
    return import_kohya_table(data, "the pasted TOML", "a kohya TOML config")
