"""Checking that a loracraft command takes a kohya script's flags with kohya's defaults (the parity tests
of the LoRA tools and of `loracraft caption`)."""

from __future__ import annotations

import argparse
from collections.abc import Collection, Mapping


def parser_defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    """The parser's options (every spelling) and positionals (by dest) -> their defaults."""
    found = {}
    for action in parser._actions:
        for name in action.option_strings or [action.dest]:
            found[name] = action.default
    return found


def assert_takes_kohya_flags(
    script: str,
    ours: Mapping[str, object],
    kohya: Mapping[str, object],
    differences: Mapping[tuple[str, str], object],
    unsupported: Collection[str],
) -> None:
    """Each of kohya's flags of `script` is ours with kohya's default (or the deliberate one in
    `differences`); the `unsupported` ones are not taken."""
    for flag, default in kohya.items():
        if flag in unsupported:
            assert flag not in ours, f"{script}: {flag} is taken now; remove it from the unsupported flags"
            continue
        assert flag in ours, f"{script}: {flag} missing"
        assert ours[flag] == differences.get((script, flag), default), f"{script}: {flag}"
