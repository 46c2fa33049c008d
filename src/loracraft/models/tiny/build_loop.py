"""What both stages of the tiny build share: the learning-rate shape and the periodic loss line."""

import math
import time
from collections.abc import Callable

import torch


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up, then cosine decay to zero, so short runs still end converged."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm up over the first 5% of ``steps``, then decay."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, steps // 20))


class LossLog:
    """Logs the mean loss of the last ``every`` steps (and of the tail at the end), with elapsed time."""

    def __init__(self, stage: str, metric: str, steps: int, log: Callable[[str], None], every: int = 100):
        self.stage, self.metric, self.steps, self.log, self.every = stage, metric, steps, log, every
        self.start, self.running = time.perf_counter(), 0.0

    def add(self, step: int, value: float, digits: int) -> None:
        self.running += value
        if step % self.every == 0 or step == self.steps:
            count = self.every if step % self.every == 0 else step % self.every
            elapsed = time.perf_counter() - self.start
            self.log(
                f"{self.stage} step {step}/{self.steps} {self.metric} {self.running / count:.{digits}f} ({elapsed:.0f} s)"
            )
            self.running = 0.0
