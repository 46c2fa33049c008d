"""Progress bar and TensorBoard scalars for the loop."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from tqdm.auto import tqdm


class MovingAverage:
    """kohya's avr_loss: the mean over the last `window` losses (one epoch's worth of batches)."""

    def __init__(self, window: int):
        self.values: deque[float] = deque(maxlen=max(1, window))

    def add(self, value: float) -> float:
        self.values.append(value)
        return sum(self.values) / len(self.values)


class TrainingLog:
    """The console progress bar and, when logging_dir is set, TensorBoard scalars."""

    def __init__(self, total_steps: int, logging_dir: str | None, log_prefix: str, show_bar: bool = True):
        self.bar = tqdm(total=total_steps, desc="steps", disable=not show_bar, dynamic_ncols=True)
        self.writer = None
        self.run_dir: Path | None = None
        if logging_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir = Path(logging_dir) / f"{log_prefix}{time.strftime('%Y%m%d%H%M%S')}"
            self.writer = SummaryWriter(log_dir=str(self.run_dir))

    def step(self, step: int, epoch: int, loss: float, average: float, lrs: dict[str, float]) -> None:
        self.bar.update(1)
        first_lr = next(iter(lrs.values()), 0.0)
        self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", avr_loss=f"{average:.4f}", lr=f"{first_lr:.2e}")
        if self.writer is not None:
            self.writer.add_scalar("loss/current", loss, step)
            self.writer.add_scalar("loss/average", average, step)
            for name, lr in lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, step)

    def epoch_end(self, epoch: int, epoch_average: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("loss/epoch_average", epoch_average, epoch)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
