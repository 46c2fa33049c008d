"""The form's values <-> a TrainConfig, validated by the same model and rules as the command line.

The form holds one control per TrainConfig field, in `FIELD_NAMES` order; its values travel as a list
in that order (Gradio passes them so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from loracraft.config.load import describe_validation_error, effective_config_toml
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.gui.form_fields import config_value, control_value, form_fields

FIELD_NAMES = tuple(TrainConfig.model_fields)
_FLAG = re.compile(r"--(\w+)")


@dataclass(frozen=True)
class Validation:
    """The form's config when it validates (else None), the CLI's one-line message, and the field the
    message is about (for the form to mark), if it names one."""

    config: TrainConfig | None
    message: str
    field: str | None

    @property
    def toml(self) -> str | None:
        return None if self.config is None else effective_config_toml(self.config)


def initial_controls() -> list[Any]:
    """The controls' starting values (the kohya_ss GUI's defaults, else sd-scripts')."""
    fields = form_fields()
    return [fields[name].initial for name in FIELD_NAMES]


def controls_of(values: Mapping[str, Any]) -> list[Any]:
    """Controls showing `values` (field -> config value, e.g. a loaded TOML's); the fields `values`
    leaves out show sd-scripts' defaults, since that is what the file means to the command line."""
    fields = form_fields()
    defaults = {name: info.default for name, info in TrainConfig.model_fields.items()}
    return [control_value(fields[name], values.get(name, defaults[name])) for name in FIELD_NAMES]


def controls_of_config(config: TrainConfig) -> list[Any]:
    return controls_of(config.model_dump())


def config_values(controls: Sequence[Any]) -> dict[str, Any]:
    """The controls' values as TrainConfig input (field -> value); unset optional fields are left out.
    UserError for a value that cannot be read at all (a list with an unclosed quote)."""
    fields = form_fields()
    values = {
        name: config_value(fields[name], shown) for name, shown in zip(FIELD_NAMES, controls, strict=True)
    }
    return {name: value for name, value in values.items() if not (value is None and fields[name].optional)}


def validate(controls: Sequence[Any]) -> Validation:
    """Validate the form as `loracraft train` would validate the same flags."""
    try:
        return Validation(TrainConfig.model_validate(config_values(controls)), "", None)
    except UserError as err:
        return _refused(str(err))
    except ValidationError as err:
        return _refused(describe_validation_error(err))


def _refused(message: str) -> Validation:
    named = (match.group(1) for match in _FLAG.finditer(message))
    return Validation(None, message, next((name for name in named if name in TrainConfig.model_fields), None))
