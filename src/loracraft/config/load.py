"""Build a TrainConfig from a config file and command-line values, with one-line errors.

Precedence: schema defaults < --config_file < command-line flags.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loracraft.config.schema import TrainConfig
from loracraft.config.suggest import did_you_mean
from loracraft.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FIELDS = TrainConfig.model_fields


def read_config_file(path: str | Path) -> dict[str, Any]:
    """kohya's flat TOML (sections are flattened, as kohya does) or a flat JSON object."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config_file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"--config_file {path} cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config_file {path} must hold key = value pairs")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    for key in flat:
        if key not in FIELDS:
            raise UserError(f"{path}: unknown key {key!r}{did_you_mean(key, FIELDS)}")
    return flat


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "") -> TrainConfig:
    """Validate the merged values; any error becomes one line naming the flag and the rule."""
    merged = {**file_values, **flag_values}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        raise UserError(describe_validation_error(err, source)) from None


def describe_validation_error(err: ValidationError, source: str = "") -> str:
    first = err.errors()[0]
    location = first.get("loc") or ()
    message = first["msg"].removeprefix("Value error, ")
    if not location:
        return f"{source}{message}"
    flag = f"--{location[0]}"
    given = first.get("input")
    given_text = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
    return f"{source}{flag}: {message}{given_text}"


def effective_config_toml(config: TrainConfig) -> str:
    """The run's settings as flat TOML, reloadable with --config_file (None values are left out)."""
    import tomli_w

    values = config.model_dump(mode="json", exclude_none=True)
    values["resolution"] = f"{config.resolution[0]},{config.resolution[1]}"
    return tomli_w.dumps(values)
