"""Parsers for kohya's value spellings: '512,768', '10%', 'true'."""

import re
from typing import Annotated, Any

from pydantic import BeforeValidator


def parse_resolution(value: Any) -> tuple[int, int]:
    """'512' -> (512, 512); '768,512' or [768, 512] -> (768, 512) as (width, height)."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str):
        parts = [p.strip() for p in re.split(r"[,x]", value.strip())]
    else:
        parts = list(value)
    try:
        sides = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(f"resolution {value!r} is not 'SIZE' or 'WIDTH,HEIGHT'") from None
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or min(sides) <= 0:
        raise ValueError(f"resolution {value!r} is not 'SIZE' or 'WIDTH,HEIGHT'")
    return (sides[0], sides[1])


def parse_steps_or_ratio(value: Any) -> int | float:
    """kohya's int_or_float: whole steps, a ratio below 1, or a percentage string like '10%'."""
    if isinstance(value, bool):
        raise ValueError("expected a number of steps or a ratio below 1")
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            value = float(text[:-1]) / 100
            if not 0 <= value < 1:
                raise ValueError(f"{text} is not a percentage from 0% to below 100%")
            return value
        number = float(text)
        value = int(number) if number.is_integer() and number >= 1 else number
    if isinstance(value, float) and value >= 1:
        if not value.is_integer():
            raise ValueError(f"{value} is neither whole steps nor a ratio below 1")
        return int(value)
    if value < 0:
        raise ValueError("cannot be negative")
    return value


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"{text!r} is not true or false")


def _empty_is_none(value: Any) -> Any:
    # kohya_ss GUI and TOML files write "" for "not set".
    return None if value == "" else value


OptionalPath = Annotated[str | None, BeforeValidator(_empty_is_none)]
