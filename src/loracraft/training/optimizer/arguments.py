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


def argument_hint(optimizer_name: str) -> str:
    """What `optimizer_args` can give the optimizer named: the arguments its class takes, with their
    defaults, read from the installed class (so it is never behind the package), what kohya passes or
    fills in itself, and the learning-rate rule of adaptive optimizers. A class that cannot be loaded
    gives its one-line reason (e.g. the pip command that installs it)."""
    from loracraft.errors import UserError
    from loracraft.training.optimizer.registry import kind_of, load_class

    kind = kind_of(optimizer_name)
    try:
        cls = load_class(optimizer_name)
    except UserError as err:
        return str(err)
    parts = [f"{optimizer_name} ({cls.__module__}.{cls.__name__})"]
    taken = {"params", "lr", *kind.fixed}
    try:
        parameters = [
            p
            for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in taken
        ]
    except (TypeError, ValueError):
        parameters = None
    if parameters is None:
        parts.append("does not say which arguments it takes")
    else:
        shown = " ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in parameters
        )
        parts.append(f"takes {shown or 'no other arguments'}")
    if kind.fixed:
        parts.append("kohya always passes " + " ".join(f"{k}={v!r}" for k, v in kind.fixed.items()))
    if kind.filled:
        parts.append("kohya adds " + " ".join(f"{k}={v!r}" for k, v in kind.filled.items()) + " if not given")
    if optimizer_name == "AdaFactor":
        parts.append(
            "kohya adds relative_step=True if not given: AdaFactor then sets its own learning rate, with "
            "the adafactor scheduler"
        )
    if kind.adaptive:
        parts.append("it estimates the step size: keep the learning rates about 1")
    return "; ".join(parts) + "."
