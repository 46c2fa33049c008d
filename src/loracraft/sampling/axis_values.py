"""The values of a grid axis written as AUTOMATIC1111's X/Y/Z plot reads them, so a guide's axis works as
typed (seed 003: weights `0.7-1.5 [5]`, seeds `-1--1 [8]`).

A comma-separated list whose items are numbers or ranges:
- `a-b [n]`: n values from a to b, evenly spaced, both ends included (`0.7-1.5 [5]` -> 0.7 0.9 1.1 1.3 1.5);
- `a-b (+s)` / `a-b (-s)`: from a towards b in steps of s, b included when a step lands on it (A1111's
  arange can step past b: 1-2 (+0.3) ends at 2.2 there, at 1.9 here);
- `a-b`: steps of 1 (`1-4` -> 1 2 3 4).
A1111 reads each range the same way (scripts/xyz_grid.py: re_range, re_range_float, re_range_count and
their float forms); a seed of -1 is a random one, drawn once so every cell of its row shares it.
"""

from __future__ import annotations

import math
import random
import re

_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE = re.compile(
    rf"\s*(?P<start>{_NUMBER})\s*-\s*(?P<end>{_NUMBER})"
    rf"(?:\s*\(\s*(?P<step>[+-]\s*\d+(?:\.\d*)?)\s*\)|\s*\[\s*(?P<count>\d+)\s*\])?\s*"
)
RANDOM_SEED = -1


def axis_numbers(text: str) -> list[float]:
    """Every value `text` lists, in order; ValueError for an item that is neither a number nor a range."""
    values: list[float] = []
    for item in text.split(","):
        values.extend(_item_values(item))
    if not values or not all(math.isfinite(value) for value in values):
        raise ValueError(text)
    return values


def axis_seeds(text: str) -> list[int]:
    """Whole-number values of `text` as seeds; each -1 becomes a random seed, drawn here once."""
    values = axis_numbers(text)
    if not all(value == int(value) and RANDOM_SEED <= value < 2**32 for value in values):
        raise ValueError(text)
    draw = random.SystemRandom()
    return [draw.randrange(2**32) if value == RANDOM_SEED else int(value) for value in values]


def _item_values(item: str) -> list[float]:
    match = _RANGE.fullmatch(item)
    if match is None:
        return [float(item)]
    start, end = _number(match["start"]), _number(match["end"])
    if match["count"] is not None:
        count = int(match["count"])
        if count < 1:
            raise ValueError(item)
        return [round(start + (end - start) * i / max(count - 1, 1), 10) for i in range(count)]
    step = _number(match["step"]) if match["step"] is not None else 1.0
    return _stepped(start, end, step, item)


def _stepped(start: float, end: float, step: float, item: str) -> list[float]:
    if step == 0 or (end - start) * step < 0:
        raise ValueError(item)
    count = math.floor((end - start) / step + 1e-9) + 1
    return [round(start + i * step, 10) for i in range(count)]


def _number(text: str) -> float:
    return float(text.replace(" ", ""))
