"""A TrainConfig field as a form control: which control its type calls for, and the value it holds.

Everything comes from the schema (the field's annotation, description, defaults), so a new flag gets
its control without UI code. Controls hold what a person types, the way the command line reads it:
lists are space-separated (`--optimizer_args weight_decay=0.01 betas=0.9,0.99`), pairs comma-separated
(`512,768`), and fields the schema reads from several spellings (`10%` or `0.1` warm-up) stay text that
the schema's own parsers read.
"""

from __future__ import annotations

import re
import shlex
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from loracraft.config.fields import flag_infos
from loracraft.config.optimizer_options import KOHYA_OPTIMIZERS
from loracraft.config.schema import TrainConfig
from loracraft.config.values import parse_bool
from loracraft.errors import UserError

CHECKBOX = "checkbox"
DROPDOWN = "dropdown"  # a Literal: only its values
OPEN_DROPDOWN = "open_dropdown"  # a free string with the usual values offered
INTEGER = "integer"
NUMBER = "number"
TEXT = "text"
LIST = "list"

# The dropdown entry of an optional Literal left empty: the schema's None (the flag not given).
NOT_SET = ""
# Free-text fields whose common values deserve a list to pick from (any other value can still be typed).
OFFERED_VALUES: dict[str, tuple[str, ...]] = {
    "optimizer_type": (*KOHYA_OPTIMIZERS, "prodigyplus.ProdigyPlusScheduleFree"),
}
# Words kept in capitals in a field's readable title.
_ACRONYMS = {"lr", "vae", "snr", "te", "ddp", "fp8", "fp16", "bf16", "ip", "nvme", "n", "id", "sdpa", "api"}


@dataclass(frozen=True)
class FormField:
    """One field's control: `kind` (a constant above), the readable title shown above the flag name,
    the description as its tooltip, the value it starts with and, for dropdowns, the choices."""

    name: str
    kind: str
    title: str
    description: str
    optional: bool
    initial: Any
    choices: tuple[Any, ...] = ()
    item_type: type | None = None  # a list's items


def _options(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = typing.get_args(annotation)
        others = tuple(arg for arg in args if arg is not type(None))
        base = others[0] if len(others) == 1 else typing.Union[others]  # noqa: UP007 - built from a tuple
        return base, len(others) < len(args)
    return annotation, False


def _kind(name: str, annotation: Any) -> tuple[str, tuple[Any, ...], type | None]:
    """(kind, dropdown choices, list item type) of a field's annotation without None."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return CHECKBOX, (), None
    if origin is typing.Literal:
        return DROPDOWN, typing.get_args(annotation), None
    if annotation is int:
        return INTEGER, (), None
    if annotation is float:
        return NUMBER, (), None
    if origin is list:
        return LIST, (), typing.get_args(annotation)[0]
    if annotation is str and name in OFFERED_VALUES:
        return OPEN_DROPDOWN, OFFERED_VALUES[name], None
    # str, pairs like "512,768", and unions the schema parses from text ("10%", "0.1", "3").
    return TEXT, (), None


def readable_title(name: str) -> str:
    """'max_train_epochs' -> 'Max train epochs'; kohya's abbreviations stay in capitals ('Unet LR')."""
    words = [word.upper() if word in _ACRONYMS else word for word in name.split("_")]
    first = words[0]
    return " ".join([first[:1].upper() + first[1:], *words[1:]])


@cache
def form_fields() -> dict[str, FormField]:
    """Every TrainConfig field (in schema order) as its control, starting at the kohya_ss GUI's default
    where the schema records one, else sd-scripts' default."""
    declared = flag_infos(TrainConfig)
    fields = {}
    for name, info in TrainConfig.model_fields.items():
        base, optional = _options(info.annotation)
        kind, choices, item_type = _kind(name, base)
        start = declared[name].gui_default if declared[name].has_gui_default else info.default
        field = FormField(
            name=name,
            kind=kind,
            title=readable_title(name),
            description=declared[name].description,
            optional=optional,
            initial=None,
            choices=choices,
            item_type=item_type,
        )
        fields[name] = FormField(**{**field.__dict__, "initial": control_value(field, start)})
    return fields


def control_value(field: FormField, value: Any) -> Any:
    """A config value as `field`'s control holds it; imports may give kohya's spellings as text
    ("64", "true"), read here as the schema would."""
    if field.kind == CHECKBOX:
        return parse_bool(value) if isinstance(value, str) else bool(value)
    if field.kind == DROPDOWN:
        return NOT_SET if value is None else str(value)
    if field.kind in (INTEGER, NUMBER):
        return _number_of_text(field, value) if isinstance(value, str) else value
    if value is None:
        return ""
    if field.kind == LIST:
        return _list_text(field, value)
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    return str(value)


def _number_of_text(field: FormField, text: str) -> int | float | None:
    if not text.strip():
        return None
    try:
        number = float(text)
    except ValueError:
        raise UserError(f"--{field.name}: {text!r} is not a number") from None
    return int(number) if field.kind == INTEGER and number.is_integer() else number


def _list_text(field: FormField, items: Any) -> str:
    if isinstance(items, str):
        return items
    # A TOML file may give a single number where the flag takes several (`text_encoder_lr = 1e-4`).
    items = items if isinstance(items, list | tuple) else [items]
    if field.item_type is str:
        return shlex.join(str(item) for item in items)
    return " ".join(str(item) for item in items)


def config_value(field: FormField, shown: Any) -> Any:
    """What `field`'s control holds, as a value for TrainConfig (None: not set); the schema validates it.

    A list that cannot be split (an unclosed quote) is a UserError naming the flag."""
    if field.kind == CHECKBOX:
        return bool(shown)
    if field.kind == DROPDOWN:
        return _choice(field, shown)
    if field.kind in (INTEGER, NUMBER):
        return _number(field, shown)
    text = "" if shown is None else str(shown)
    if field.kind == LIST:
        return _list_items(field, text)
    if text.strip() == "" and field.optional:
        return None
    return text


def _choice(field: FormField, shown: Any) -> Any:
    if shown in (None, NOT_SET):
        return None
    # Choices are shown as text; the schema's Literal may hold numbers (--max_token_length 75).
    return next((choice for choice in field.choices if str(choice) == str(shown)), shown)


def _number(field: FormField, shown: Any) -> Any:
    if shown is None or shown == "":
        return None
    if field.kind == INTEGER and isinstance(shown, float) and shown.is_integer():
        return int(shown)
    return shown


def _list_items(field: FormField, text: str) -> list[Any] | None:
    if text.strip() == "":
        return None if field.optional else []
    if field.item_type is str:
        try:
            return shlex.split(text)
        except ValueError as err:
            raise UserError(f"--{field.name}: {err} in {text!r}") from None
    return [part for part in re.split(r"[\s,]+", text.strip()) if part]
