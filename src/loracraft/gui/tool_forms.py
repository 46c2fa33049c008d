"""A tool command's form generated from its argparse parser, and the form's values as the command's argv.

Each `loracraft` tool declares its flags once, in `make_parser()` (kohya's flag names, help texts,
defaults, choices); the web UI's Utilities tab reads them from there, so a flag added to a tool appears
in its form without UI code. One argparse action becomes one ToolField:

  store_true / store_false / store_const -> a checkbox (checked: the flag is given)
  choices                                -> a dropdown ("(not given)" first when the flag is optional)
  type=int, count                        -> a whole number;  type=float -> a number
  nargs +, *, N; append; extend          -> a text box, items separated by spaces (numbers: also commas;
                                            text: quoted as in a shell when an item holds a space)
  anything else, positionals included    -> a text box

A control left at its default (or empty) is left out of the argv, so the command reads as one typed by
hand: only what the user changed. (So a `nargs="*"` flag given with no items, which no tool's default
needs, cannot be said: its empty box means "not given".) `form_values` turns parsed flags back into the
controls' values (the round trip the tests check).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loracraft.errors import UserError
from loracraft.gui.form_fields import CHECKBOX, DROPDOWN, INTEGER, LIST, NOT_SET, NUMBER, TEXT, readable_title

NOT_GIVEN_LABEL = "(not given)"
_SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction)
_FLAG_ACTIONS = (argparse._StoreConstAction,)  # store_true and store_false are store_const subclasses
_LIST_ACTIONS = (argparse._AppendAction, argparse._ExtendAction)
_PLAIN_TEXT_TYPES = (None, str, Path)


@dataclass(frozen=True)
class ToolField:
    """One flag (or positional) of a tool as a form control.

    `name` is the flag as typed (`--model`) or a positional's metavar (`OUTPUT_DIR`); `kind` one of
    form_fields' control kinds; `initial` the control's starting value (the default as the control shows
    it); `default_hint` a default a text box cannot show (a parsed list), for its placeholder;
    `flag_value` what a checked checkbox gives the flag; `item_type` a list's items (int, float or str);
    `repeat` a list given as one flag per item (append), or per `per_flag` items (append with nargs=N:
    `--replace OLD NEW`); `counted` a flag given N times (count)."""

    dest: str
    name: str
    positional: bool
    kind: str
    title: str
    help: str
    required: bool
    initial: Any
    choices: tuple[Any, ...] = ()
    default: Any = None
    default_hint: str = ""
    flag_value: Any = None
    item_type: type | None = None
    repeat: bool = False
    per_flag: int = 1
    counted: bool = False

    @property
    def label(self) -> str:
        """The readable title and the flag as typed on the command line, which guides show."""
        return f"{self.title} ({self.name})"

    @property
    def info(self) -> str:
        required = "Required. " if self.required else ""
        return f"{required}{self.help}"


def tool_fields(parser: argparse.ArgumentParser) -> list[ToolField]:
    """The form of `parser`: positionals first (in order), then the flags in the order declared. An
    action with no control (a subcommand) is refused with a message naming it."""
    actions = [action for action in parser._actions if not isinstance(action, _SKIPPED_ACTIONS)]
    actions = [action for action in actions if action.help != argparse.SUPPRESS]
    ordered = [action for action in actions if not action.option_strings]
    ordered += [action for action in actions if action.option_strings]
    # The formatter expands %(default)s and the like in a help text as --help prints it.
    formatter = parser._get_formatter()
    return [_field(action, formatter._expand_help(action) if action.help else "") for action in ordered]


def _field(action: argparse.Action, help_text: str) -> ToolField:
    name = _shown_name(action)
    common = {
        "dest": action.dest,
        "name": name,
        "positional": not action.option_strings,
        "title": readable_title(action.dest),
        "help": help_text,
        "required": bool(action.required or (not action.option_strings and action.nargs not in ("?", "*"))),
        "default": action.default,
    }
    if isinstance(action, _FLAG_ACTIONS):
        return ToolField(kind=CHECKBOX, initial=False, flag_value=action.const, **common)
    if isinstance(action, argparse._CountAction):
        return ToolField(kind=INTEGER, initial=action.default or 0, counted=True, **common)
    if not isinstance(action, (argparse._StoreAction, *_LIST_ACTIONS)):
        raise ValueError(f"{name}: argparse's {type(action).__name__} has no form control")
    is_list = isinstance(action, _LIST_ACTIONS) or action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if is_list:
        item_type = action.type if action.type in (int, float) else str
        repeat = isinstance(action, argparse._AppendAction)
        per_flag = action.nargs if repeat and isinstance(action.nargs, int) else 1
        initial = _list_text(item_type, action.default) if action.default else ""
        return ToolField(
            kind=LIST, initial=initial, item_type=item_type, repeat=repeat, per_flag=per_flag, **common
        )
    if action.choices:
        initial = NOT_SET if action.default is None else str(action.default)
        return ToolField(kind=DROPDOWN, initial=initial, choices=tuple(action.choices), **common)
    if action.type in (int, float):
        return ToolField(kind=INTEGER if action.type is int else NUMBER, initial=action.default, **common)
    if action.type in _PLAIN_TEXT_TYPES or isinstance(action.default, str):
        initial = "" if action.default is None else str(action.default)
        return ToolField(kind=TEXT, initial=initial, **common)
    # A parsed value (a list from "0.4,0.7,1.0") cannot be shown as the text it came from: the box
    # starts empty, meaning the default, which its placeholder shows.
    return ToolField(kind=TEXT, initial="", default_hint=_hint(action.default), **common)


def _shown_name(action: argparse.Action) -> str:
    """The flag as guides write it (its long form when there is one), or a positional's metavar."""
    if not action.option_strings:
        return action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return next((flag for flag in action.option_strings if flag.startswith("--")), action.option_strings[0])


def _hint(default: Any) -> str:
    if default is None:
        return ""
    if isinstance(default, list | tuple):
        return ",".join(str(item) for item in default)
    return str(default)


def _list_text(item_type: type, items: Sequence[Any]) -> str:
    # append with nargs=N parses to one list per flag given: their items in a row.
    items = [part for item in items for part in (item if isinstance(item, list | tuple) else [item])]
    if item_type is str:
        return shlex.join(str(item) for item in items)
    return " ".join(str(item) for item in items)


def tool_argv(fields: Sequence[ToolField], values: Sequence[Any]) -> list[str]:
    """The command's argv for these control values (in `fields` order): positionals first, then each flag
    whose control differs from its default."""
    positionals: list[str] = []
    flags: list[str] = []
    for field, value in zip(fields, values, strict=True):
        given = _given(field, value)
        if field.positional:
            positionals += given
        elif not given:
            continue
        elif field.kind == CHECKBOX:
            flags.append(field.name)
        elif field.counted:
            flags += [field.name] * int(given[0])
        elif field.repeat:
            flags += _repeated(field, given)
        elif field.kind == LIST:
            flags += [field.name, *given]
        else:
            [text] = given
            # `--flag=-1`: a value that starts with a dash does not read as a flag.
            flags += [f"{field.name}={text}"] if text.startswith("-") else [field.name, text]
    # Positionals first: after a list flag (--lora a b) they would read as more of its items.
    return positionals + flags


def _repeated(field: ToolField, items: list[str]) -> list[str]:
    """`--flag item` per item, or per `per_flag` items (`--replace OLD NEW --replace OLD NEW`)."""
    if len(items) % field.per_flag:
        raise UserError(f"{field.name}: give its items {field.per_flag} at a time ({len(items)} given)")
    groups = [items[start : start + field.per_flag] for start in range(0, len(items), field.per_flag)]
    return [part for group in groups for part in (field.name, *group)]


def _given(field: ToolField, value: Any) -> list[str]:
    """The argv items `value` gives `field` ([] when it is left out: empty or at its default)."""
    if field.kind == CHECKBOX:
        return ["yes"] if value else []
    if value is None or value == "" or (field.kind == DROPDOWN and value == NOT_SET):
        return []
    if field.kind in (INTEGER, NUMBER):
        number = _number(field, value)
        if number is None or number == field.default or (field.counted and number == 0):
            return []
        return [_number_text(number)]
    text = str(value)
    if text == field.initial:
        return []
    return _list_items(field, text) if field.kind == LIST else [text]


def _number(field: ToolField, value: Any) -> int | float | None:
    """A number control's value (a number, or the text of a box that may stay empty) as the flag's."""
    number = value
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"{field.name}: {value!r} is not a number") from None
    if field.kind == INTEGER and not float(number).is_integer():
        raise UserError(f"{field.name}: {value!r} is not a whole number")
    return int(number) if field.kind == INTEGER else float(number)


def _number_text(number: int | float) -> str:
    return str(number) if not isinstance(number, float) or not number.is_integer() else f"{number:g}"


def _list_items(field: ToolField, text: str) -> list[str]:
    if field.item_type is str:
        try:
            return shlex.split(text)
        except ValueError as error:
            raise UserError(f"{field.name}: {error} in {text!r}") from None
    return [part for part in re.split(r"[\s,]+", text.strip()) if part]


def form_values(fields: Sequence[ToolField], parsed: dict[str, Any]) -> list[Any]:
    """The controls' values that give these parsed flags (`vars(parser.parse_args(argv))`)."""
    return [_control_value(field, parsed.get(field.dest, field.default)) for field in fields]


def _control_value(field: ToolField, value: Any) -> Any:
    if field.kind == CHECKBOX:
        return value == field.flag_value and value != field.default
    if field.kind in (INTEGER, NUMBER):
        return value
    if field.kind == DROPDOWN:
        return NOT_SET if value is None else str(value)
    if field.kind == LIST:
        return _list_text(field.item_type, value) if value else ""
    if value is None or (field.default_hint and value == field.default):
        return ""
    return _hint(value)
