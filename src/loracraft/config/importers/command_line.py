"""A pasted kohya command line: `accelerate launch [options] train_network.py --flag value ...`.

Commands copied from guides, shell scripts or the kohya_ss GUI's "Print training command" span lines with
`\\` (bash), `^` (cmd.exe) or a backtick (PowerShell), quote paths, and write `--flag=value` or
`--flag v1 v2`. Flags before the training script belong to `accelerate launch`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from loracraft.config.cli_args import make_train_parser, parse_train_flags
from loracraft.config.importers.kinds import network_module_kind, script_family
from loracraft.config.importers.kohya_flags import ALIASES, FIELDS, map_kohya_setting
from loracraft.config.importers.report import ImportReport
from loracraft.errors import UserError

_CONTINUATION = re.compile(r"[\\^`][ \t]*\r?\n")
_WINDOWS_PATH = re.compile(r"(^|[\s\"'])[A-Za-z]:\\")


def import_command_line(text: str, source: str = "the pasted command line") -> ImportReport:
    """Every flag of a kohya LoRA training command, mapped or ignored; another script is refused."""
    tokens = split_command(text)
    script_at = next((i for i, token in enumerate(tokens) if token.lower().endswith(".py")), None)
    if script_at is None:
        report = ImportReport(f"{source}: kohya flags")
        _map_flags(tokens, report, source)
        return report
    family = script_family(tokens[script_at], source)
    report = ImportReport(f"{source}: a kohya LoRA command ({family}, {Path(tokens[script_at]).name})")
    launcher = tokens[:script_at]  # `accelerate launch --opt v`, `python -u`: the words before the flags go
    first_flag = next((i for i, token in enumerate(launcher) if token.startswith("--")), len(launcher))
    for name, _ in _flag_groups(launcher[first_flag:]):
        report.ignore(f"--{name}", "an `accelerate launch` option: give it to accelerate launch")
    _map_flags(tokens[script_at + 1 :], report, source)
    return report


def import_flag_text(text: str, source: str) -> ImportReport:
    """Flags alone (the kohya_ss GUI's additional_parameters box)."""
    report = ImportReport(f"{source}: kohya flags")
    _map_flags(split_command(text), report, source)
    return report


def split_command(text: str) -> list[str]:
    """Shell words of a command pasted from bash, cmd.exe or PowerShell, one or several lines."""
    joined = _CONTINUATION.sub(" ", text).replace("\n", " ")
    if _WINDOWS_PATH.search(joined):  # backslashes are path separators there, not escapes
        return [_unquoted(word) for word in shlex.split(joined, posix=False)]
    try:
        return shlex.split(joined)
    except ValueError as err:
        raise UserError(f"the command line cannot be read: {err}") from None


def _unquoted(word: str) -> str:
    return word[1:-1] if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'" else word


def _flag_groups(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """[(flag name, its value words)] from `--a 1 --b=x --c v1 v2 --d`."""
    groups: list[tuple[str, list[str]]] = []
    for token in tokens:
        if token.startswith("--"):
            name, equals, value = token[2:].partition("=")
            groups.append((name, [value] if equals else []))
        elif groups:
            groups[-1][1].append(token)
        else:
            raise UserError(
                f"unexpected word {token!r} before the first flag; flags look like --network_dim 32"
            )
    return groups


def _map_flags(tokens: list[str], report: ImportReport, source: str) -> None:
    groups = _flag_groups(tokens)
    known = [group for group in groups if group[0] in FIELDS or group[0] in ALIASES]
    parsed = _parse_known(known, source)
    for name, words in groups:
        if name == "network_module":
            network_module_kind(str(_raw_value(words)), source)
        if name == "config_file":
            _import_config_file(words, report, source)
        elif name in FIELDS or name in ALIASES:
            field_name = ALIASES.get(name, name)
            report.map(f"--{name}", field_name, parsed[field_name])
        else:
            map_kohya_setting(name, _raw_value(words), report, source, f"--{name}")


def _parse_known(groups: list[tuple[str, list[str]]], source: str) -> dict[str, Any]:
    """The values of loracraft's own flags, read by `loracraft train`'s parser (same types and rules)."""
    argv = [word for name, words in groups for word in (f"--{name}", *words)]
    try:
        return parse_train_flags(make_train_parser(), argv)[1]
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def _raw_value(words: list[str]) -> Any:
    if not words:
        return True
    return words[0] if len(words) == 1 else words


def _import_config_file(words: list[str], report: ImportReport, source: str) -> None:
    from loracraft.config.importers.kohya_toml import import_kohya_toml

    path = Path(words[0]) if words else None
    if path is None or not path.is_file():
        report.ignore(
            "--config_file", f"{path} not found here: import that file with `loracraft config import`"
        )
        return
    included = import_kohya_toml(path)
    for entry in included.mapped:
        report.map(f"--config_file {path.name}: {entry.key}", entry.field, entry.value)
    for entry in included.ignored:
        report.ignore(f"--config_file {path.name}: {entry.key}", entry.reason)
