"""Progress bar and TensorBoard scalars for the loop."""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path

import torch
from tqdm.auto import tqdm


class MovingAverage:
    """kohya's avr_loss: the mean over the last `window` losses (one epoch's worth of batches)."""

    def __init__(self, window: int):
        self.values: deque[float] = deque(maxlen=max(1, window))

    def add(self, value: float) -> float:
        self.values.append(value)
        return sum(self.values) / len(self.values)


class TrainingLog:
    """The console progress bar and, when logging_dir is set, TensorBoard scalars.

    Losses arrive as device tensors and are read back every `sync_every` steps, so the loop does not wait
    for the device at each step.
    """

    def __init__(
        self,
        total_steps: int,
        logging_dir: str | None,
        log_prefix: str,
        show_bar: bool = True,
        average_window: int = 1,
        sync_every: int = 10,
        initial_step: int = 0,
    ):
        # A resumed run's bar starts at the steps already taken.
        self.bar = tqdm(
            total=total_steps, initial=initial_step, desc="steps", disable=not show_bar, dynamic_ncols=True
        )
        self.average = MovingAverage(average_window)
        self.sync_every = sync_every
        self.pending: list[tuple[int, int, torch.Tensor, dict[str, float]]] = []
        self.last_average = float("nan")
        self.non_finite: tuple[int, int, float] | None = None
        """(step, epoch, loss) of the first NaN or inf loss read back, for the loop to stop at."""
        self.writer = None
        self.run_dir: Path | None = None
        if logging_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir = Path(logging_dir) / f"{log_prefix}{time.strftime('%Y%m%d%H%M%S')}"
            self.writer = SummaryWriter(log_dir=str(self.run_dir))

    def step(self, step: int, epoch: int, loss: torch.Tensor, lrs: dict[str, float]) -> bool:
        """Record a step's loss; True when the pending losses were read back (every `sync_every` steps)."""
        self.bar.update(1)
        self.pending.append((step, epoch, loss, lrs))
        if len(self.pending) < self.sync_every:
            return False
        self.flush()
        return True

    def flush(self) -> float:
        """Read back the pending losses, update the bar and TensorBoard; returns the moving average."""
        if not self.pending:
            return self.last_average
        values = torch.stack([loss for _, _, loss, _ in self.pending]).float().cpu().tolist()
        for (step, epoch, _, lrs), value in zip(self.pending, values, strict=True):
            self.last_average = self.average.add(value)
            if self.writer is not None:
                self.writer.add_scalar("loss/current", value, step)
                self.writer.add_scalar("loss/average", self.last_average, step)
                for name, lr in lrs.items():
                    self.writer.add_scalar(f"lr/{name}", lr, step)
            if not math.isfinite(value):
                # The steps after it trained on broken weights: they are not logged.
                self.non_finite = (step, epoch, value)
                break
        first_lr = next(iter(lrs.values()), 0.0)
        shown = {"epoch": epoch, "loss": f"{value:.4f}", "avr_loss": f"{self.last_average:.4f}"}
        shown["lr"] = f"{first_lr:.2e}"
        # D-Adaptation and Prodigy step by d * lr, which the bar shows beside the scheduled lr.
        effective_lr = next((lr for name, lr in lrs.items() if name.startswith("d*lr/")), None)
        if effective_lr is not None:
            shown["d*lr"] = f"{effective_lr:.2e}"
        self.bar.set_postfix(shown)
        self.pending.clear()
        return self.last_average

    def epoch_end(self, epoch: int, epoch_average: float) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.add_scalar("loss/epoch_average", epoch_average, epoch)

    def close(self) -> None:
        self.flush()
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
