"""Keyword arguments a class's constructor accepts, to name them when a user's argument is not one."""

from __future__ import annotations

import inspect


def accepted_arguments(cls: type, taken: set[str]) -> set[str] | None:
    """The keyword names `cls(...)` accepts besides `taken` (passed by loracraft itself); None when it
    takes any (**kwargs), so nothing can be checked."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # a class implemented in C without a signature
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - taken


def unknown_argument(cls: type, kwargs: dict, taken: set[str]) -> str | None:
    """'X has no argument 'k'; it takes a, b, c' for the first argument `cls` does not accept, else None."""
    accepted = accepted_arguments(cls, taken)
    if accepted is None:
        return None
    for key in kwargs:
        if key not in accepted:
            return f"{cls.__name__} has no argument {key!r}; it takes {', '.join(sorted(accepted)) or 'none'}"
    return None


def missing_argument(cls: type, kwargs: dict, taken: set[str]) -> str | None:
    """'X needs T_max: pass it as T_max=...' for the first required argument neither `kwargs` nor
    loracraft (`taken`) gives, else None."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    for p in parameters:
        required = p.default is inspect.Parameter.empty and p.kind in (
            p.POSITIONAL_OR_KEYWORD,
            p.KEYWORD_ONLY,
        )
        if required and p.name not in kwargs and p.name not in taken:
            return f"{cls.__name__} needs {p.name}: pass it as {p.name}=..."
    return None
