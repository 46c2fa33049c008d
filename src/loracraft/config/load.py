"""Build a TrainConfig from a config file and command-line values, with one-line errors.

Precedence: schema defaults < --config_file < command-line flags.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loracraft.config.fields import GROUPS, alias_names, alias_note, flag_infos
from loracraft.config.files import read_table_file
from loracraft.config.schema import TrainConfig
from loracraft.config.suggest import did_you_mean
from loracraft.errors import UserError

FIELDS = TrainConfig.model_fields


def read_config_file(path: str | Path) -> dict[str, Any]:
    """kohya's flat TOML (sections are flattened, as kohya does), a flat JSON object, or a kohya_ss GUI
    JSON config (imported key by key; what it cannot apply is printed as notes)."""
    data = read_table_file(path, "--config_file", "key = value pairs")
    if Path(path).suffix.lower() == ".json":
        from loracraft.config.importers import is_kohya_gui_json
        from loracraft.config.importers.apply import gui_json_values

        if is_kohya_gui_json(data):
            return gui_json_values(data, Path(path))
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    aliases = alias_names(TrainConfig)
    for key in list(flat):
        if key in aliases:  # kohya: the old spelling wins when both are given
            print(f"{path}: {alias_note(key, aliases[key])}", file=sys.stderr)
            flat[aliases[key]] = flat.pop(key)
        elif key not in FIELDS:
            raise UserError(f"{path}: unknown key {key!r}{did_you_mean(key, FIELDS)}")
    return flat


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "") -> TrainConfig:
    """Validate the merged values; any error becomes one line naming the flag and the rule."""
    merged = {**file_values, **flag_values}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        raise UserError(describe_validation_error(err, source)) from None


def updated_config(config: TrainConfig, updates: dict[str, Any], source: str = "") -> TrainConfig:
    """`config` with `updates`, validated like any other config (pydantic's model_copy would skip the
    conversions and rules); what the user set stays marked as set."""
    given = {name: getattr(config, name) for name in config.model_fields_set}
    try:
        return TrainConfig.model_validate({**given, **updates})
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
    """The run's settings as flat TOML, reloadable with --config_file (None values, secrets such as API
    keys and one call's own settings such as --progress_file are left out)."""
    import tomli_w

    infos = flag_infos(TrainConfig)
    values = config.model_dump(
        exclude_none=True, exclude={name for name, info in infos.items() if not info.recorded}
    )
    groups = {name: GROUPS.index(info.group) for name, info in infos.items()}
    # In --help's group order; pairs (resolution, face_crop_aug_range) spelt as kohya's flags: "512,512".
    return tomli_w.dumps(
        {
            key: ",".join(map(str, value)) if isinstance(value, tuple) else value
            for key, value in sorted(values.items(), key=lambda item: groups[item[0]])
        }
    )


def changed_values(config: TrainConfig) -> dict[str, Any]:
    """The fields whose values differ from the schema's defaults, in --help's group order (secrets, one
    call's own settings and None values left out)."""
    infos = flag_infos(TrainConfig)
    changed = {
        name: value
        for name, info in infos.items()
        if info.recorded and (value := getattr(config, name)) is not None and value != info.default
    }
    return dict(sorted(changed.items(), key=lambda item: GROUPS.index(infos[item[0]].group)))


def train_command(config: TrainConfig) -> str:
    """The exact `loracraft train` command line of `config`: its values that differ from the defaults, quoted
    for a POSIX shell."""
    import shlex

    words = ["loracraft", "train"]
    for name, value in changed_values(config).items():
        words.append(f"--{name}")
        if isinstance(value, bool):
            words.extend([] if value else ["false"])
        elif isinstance(value, list):
            words.extend(str(item) for item in value)
        elif isinstance(value, tuple):
            words.append(",".join(map(str, value)))
        else:
            words.append(str(value))
    return shlex.join(words)


def changed_config_toml(config: TrainConfig) -> str:
    """Flat TOML of the values that differ from the defaults (reloadable with --config_file)."""
    import tomli_w

    return tomli_w.dumps(
        {
            name: ",".join(map(str, value)) if isinstance(value, tuple) else value
            for name, value in changed_values(config).items()
        }
    )
