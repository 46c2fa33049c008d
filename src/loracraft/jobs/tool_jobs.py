"""Tool jobs: a `loracraft` tool command (resize, merge, extract, grid, ...) queued like a training run.

A tool job stores the command's argv (`["resize", "--model", "a.safetensors", ...]`); the worker runs it
as `python -m loracraft ARGV...` in a subprocess with its console captured, and its exit status says how
it ended (the tool's one-line `error:` is the failure reason). The argv is checked when the job is
added, with the tool's own parser, so a mistyped flag is refused at once in the tool's one line, not
minutes later in the worker.

The commands a job may run are loracraft.tools.TOOLS, the table the `loracraft` command dispatches
through too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType

from loracraft.config.suggest import did_you_mean
from loracraft.errors import UserError
from loracraft.tools import TOOLS

TOOL_COMMANDS = tuple(dict.fromkeys(words.split()[0] for words in TOOLS))
# The parsed flags that name what a tool writes, in the order they are looked for.
OUTPUT_FLAGS = ("save_to", "output", "output_dir")
_HELP_FLAGS = ("-h", "--help")


@dataclass(frozen=True)
class ToolCall:
    """A checked tool command: its command words (`resize`, `dataset check`), its whole argv (command
    words first, as `loracraft` takes it) and the path its output flag names (None: none given)."""

    command: str
    argv: tuple[str, ...]
    output: Path | None


def command_words(argv: list[str] | tuple[str, ...]) -> str:
    """The command words a stored argv starts with (`resize`, `dataset check`), unchecked."""
    return " ".join(argv[:2]) if " ".join(argv[:2]) in TOOLS else argv[0]


def tool_command_of(argv: list[str] | tuple[str, ...]) -> str:
    """The command words that start `argv` (`resize`, `dataset check`), refused in one line when they
    are not a tool."""
    if not argv:
        raise UserError(f"a tool job needs a command: one of {', '.join(TOOL_COMMANDS)}")
    if argv[0] not in TOOL_COMMANDS:
        raise UserError(
            f"{argv[0]!r} is not a tool a job can run{did_you_mean(argv[0], TOOL_COMMANDS)}; "
            f"use one of {', '.join(TOOL_COMMANDS)}"
        )
    actions = [words.split()[1] for words in TOOLS if words.startswith(f"{argv[0]} ")]
    action = argv[1] if len(argv) > 1 else ""
    if action in actions:
        return f"{argv[0]} {action}"
    if argv[0] in TOOLS:  # a command that also has actions (`caption DIR`, `caption edit DIR`)
        return argv[0]
    if actions:
        raise UserError(f"loracraft {argv[0]} needs an action first: {' or '.join(actions)}")
    return argv[0]


def tool_parser(command: str) -> argparse.ArgumentParser:
    """The parser of `command` (`resize`, `dataset check`), from its module's make_parser()."""
    return tool_module(command).make_parser()


def tool_module(command: str) -> ModuleType:
    """The module of `command`; a tool this installation lacks is one line."""
    name = TOOLS[command]
    try:
        return import_module(f"loracraft.tools.{name}")
    except ImportError as error:
        raise UserError(f"loracraft {command} cannot be loaded in this installation: {error}") from None


def check_tool_call(argv: list[str] | tuple[str, ...], workdir: Path) -> ToolCall:
    """`argv` checked by the tool's own parser (its one-line message when a flag is wrong); relative
    paths are the worker's, which runs the command in `workdir`."""
    command = tool_command_of(argv)
    flags = list(argv[len(command.split()) :])
    if any(flag in _HELP_FLAGS for flag in flags):
        raise UserError(
            f"-h only prints the flags of loracraft {command}, which needs no job: run `loracraft {command} -h`"
        )
    parsed = vars(tool_parser(command).parse_args(flags))
    named = next((parsed[flag] for flag in OUTPUT_FLAGS if parsed.get(flag) is not None), None)
    output = workdir / named if named is not None else None
    return ToolCall(command, tuple(argv), output)


def default_job_name(call: ToolCall) -> str:
    """`resize small.safetensors`: the command and the name of what it writes."""
    return f"{call.command} {call.output.name}" if call.output is not None else call.command
