"""kohya-style command-line flags generated from TrainConfig, grouped for --help."""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from typing import Any

from pydantic.fields import FieldInfo

from loracraft.config.fields import GROUPS, FlagInfo, alias_names, alias_note, flag_infos
from loracraft.config.schema import TrainConfig
from loracraft.config.suggest import did_you_mean
from loracraft.config.values import parse_bool
from loracraft.errors import UserError

FIELDS = TrainConfig.model_fields
# argparse takes a token for a value when it looks like a negative number, else for a flag; its own
# pattern (before Python 3.14) misses exponents, so `--learning_rate -1e-4` read as a flag without its
# value ("expected one argument"). With this pattern the schema's range check answers instead. No flag
# looks like a number, so no flag is mistaken for a value.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting, and reads negative numbers
    (`-1e-4` too) as values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(message)


def _is_bool(info: FieldInfo) -> bool:
    return info.annotation is bool


def _list_item(info: FieldInfo) -> type | None:
    """The item type of a list field (an optional one too: `--text_encoder_lr 1e-4 5e-5`), else None."""
    annotation = _without_none(info.annotation)
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None


def _without_none(annotation: Any) -> Any:
    """`X | None` -> X; any other annotation as it is (None for a union of several types)."""
    if not (isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union):
        return annotation
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return options[0] if len(options) == 1 else None


def _shown(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _default_text(info: FieldInfo, declared: FlagInfo) -> str:
    """' [default: X; kohya_ss GUI: Y]': sd-scripts' default, and the GUI's where it differs."""
    parts = []
    if info.default is not None and info.default != []:
        parts.append(f"default: {_shown(info.default)}")
    if declared.has_gui_default:
        parts.append(f"kohya_ss GUI: {_shown(declared.gui_default)}")
    return f" [{'; '.join(parts)}]" if parts else ""


def _choices(info: FieldInfo) -> tuple | None:
    """The values of a Literal field (an optional one too: empty means its default)."""
    annotation = _without_none(info.annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return None


def _int_or_text(text: str) -> int | str:
    # Literal[75, 150, 225] needs ints; a non-number stays text so pydantic names the allowed values.
    return int(text) if text.strip().lstrip("-").isdigit() else text


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, in the field's group, documented by its description."""
    declared = flag_infos(TrainConfig)
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for name, info in FIELDS.items():
        group = groups[declared[name].group]
        help_text = ((info.description or "") + _default_text(info, declared[name])).replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if _is_bool(info):
            # `--flag` means true (kohya's store_true); `--flag false` turns off an on-by-default option.
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        elif (item := _list_item(info)) is not None:
            # kohya's *_args flags take key=value pairs; other lists (--base_weights) take plain values.
            pairs = item is str and name.endswith("_args")
            kwargs.update(nargs="*", metavar="KEY=VALUE" if pairs else name.upper())
        else:
            choices = _choices(info)
            kwargs.update(metavar="{" + ",".join(map(str, choices)) + "}" if choices else name.upper())
            if choices and all(isinstance(v, int) for v in choices):
                kwargs.update(type=_int_or_text)
        aliases = [f"--{alias}" for alias in declared[name].aliases]
        group.add_argument(f"--{name}", *aliases, **kwargs)


def make_train_parser(prog: str = "loracraft train") -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=prog,
        usage=f"{prog} [--config_file FILE] [--FLAG VALUE ...]",
        description="Train a LoRA with kohya sd-scripts' flags. Flags override --config_file.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config_file",
        metavar="FILE",
        help="kohya-style TOML (or JSON) of the same keys; flags override it.",
    )
    add_config_flags(parser)
    return parser


def parse_train_flags(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """(config file path, the flags the user actually gave) with unknown flags reported by name."""
    namespace, unknown = parser.parse_known_args(argv)
    for token in unknown:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0]
            raise UserError(f"unknown flag --{name}{did_you_mean(name, FIELDS, prefix='--')}")
    if unknown:
        raise UserError(f"unexpected argument {unknown[0]!r}; flags look like --network_dim 32")
    for alias, name in alias_names(TrainConfig).items():
        if any(token.split("=", 1)[0] == f"--{alias}" for token in argv):
            print(alias_note(alias, name, "--"), file=sys.stderr)
    values = vars(namespace)
    config_file = values.pop("config_file", None)
    return config_file, values
