"""Reading the TOML (or JSON) files users hand us: one place for the one-line read errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from loracraft.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_table_file(path: str | Path, flag: str, expected: str) -> dict[str, Any]:
    """The top-level table of a TOML file, or of a JSON file by its suffix (kohya accepts both).

    `flag` names the option the file came from; `expected` says what the file should hold.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"{flag} {path} cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{flag} {path} must hold {expected}")
    return data
