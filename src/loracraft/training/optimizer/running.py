"""What the loop reads from and does to the optimizer while training: the learning rates to log, and the
schedule-free optimizers' switch to their evaluation weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def learning_rates(optimizer: torch.optim.Optimizer, lr_scheduler) -> dict[str, float]:
    """{group name: the schedule's learning rate}; for D-Adaptation and Prodigy also
    {"d*lr/<group name>": the step they really take, d * lr}, which kohya logs as lr/d*lr/<group>."""
    rates: dict[str, float] = {}
    groups = optimizer.param_groups
    for index, (group, lr) in enumerate(zip(groups, lr_scheduler.get_last_lr(), strict=True)):
        name = group.get("name", f"group{index}")
        rates[name] = lr
        if "d" in group:
            rates[f"d*lr/{name}"] = float(group["d"]) * group["lr"]
    return rates


@contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside, a schedule-free optimizer's parameters hold its evaluation weights (the average it
    converges on, what a saved LoRA or a sample should use); on leaving, its training weights again.
    Other optimizers have no such modes and are left alone, as in kohya."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    switches = callable(getattr(inner, "eval", None)) and callable(getattr(inner, "train", None))
    if switches:
        inner.eval()
    try:
        yield
    finally:
        if switches:
            inner.train()
