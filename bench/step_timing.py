"""The benchmarks' progress log: the real one, also recording when each optimizer step finished."""

from __future__ import annotations

import time

from loracraft.training.progress import TrainingLog


class TimedLog(TrainingLog):
    """The real progress log, also recording when each optimizer step finished."""

    def __init__(self, total_steps: int):
        super().__init__(total_steps, show_bar=False)
        self.times: list[float] = []

    def step(self, step, epoch, loss, lrs) -> bool:
        flushed = super().step(step, epoch, loss, lrs)
        self.times.append(time.perf_counter())
        return flushed
