"""The loop's progress: the console bar, and per optimizer step the numbers the trackers get.

Per step: loss/current, loss/average (over the last epoch's worth of steps), lr/<group> (and
lr/d*lr/<group> for D-Adaptation and Prodigy), with --scale_weight_norms max_norm/keys_scaled,
max_norm/max_key_norm and norm/avg_key_norm (the bar shows kohya's "Keys Scaled" and "Average key norm"),
in kohya's names; at each read-back, the speed (throughput/images_per_s, throughput/s_per_step) and the
peak memory (memory/peak_gib); per epoch, loss/epoch_average against the epoch number. The validation and
the sampler log through `log_scalars` and `log_images`, so every number of a run reaches the same trackers.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from PIL import Image
from tqdm.auto import tqdm

from loracraft.data.plan import DatasetPlan, StepCount
from loracraft.training.run_log import RunLog
from loracraft.training.trackers import ProgressFileTracker, TensorBoardTracker, Tracker

if TYPE_CHECKING:
    from loracraft.networks.max_norm import MaxNormStats

GIB = 1024**3
CPU = torch.device("cpu")
# kohya's tracker names of MaxNormStats' numbers (train_network.py, generate_step_logs; before sd-scripts
# 0.10 the average was max_norm/average_key_norm).
MAX_NORM_KEYS = ("max_norm/keys_scaled", "norm/avg_key_norm", "max_norm/max_key_norm")


class MovingAverage:
    """kohya's avr_loss: the mean over the last `window` losses (one epoch's worth of batches)."""

    def __init__(self, window: int):
        self.values: deque[float] = deque(maxlen=max(1, window))

    def add(self, value: float) -> float:
        self.values.append(value)
        return sum(self.values) / len(self.values)


class StepClock:
    """Seconds per optimizer step, measured from one read-back of the losses to the next.

    Reading the losses back waits for the device to finish the steps before them, so the time between
    two read-backs is the device's time for the steps between them, with no extra wait at every step.
    The clock starts at a run's (or an epoch's) first step and leaves out the time spent `excluding()`
    (saving, sampling, validating), which is not training."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.steps = 0
        self.excluded = 0.0
        self.total_seconds = 0.0
        self.total_steps = 0
        """Over every lap of the run: what `mean` divides."""

    def step(self) -> None:
        # The first step after a start only sets the clock: the time before it was not measured.
        if self.started is None:
            self.started, self.steps, self.excluded = time.perf_counter(), 0, 0.0
        else:
            self.steps += 1

    def lap(self) -> float | None:
        """Seconds per step since the last lap (None when no step was timed); call it right after a
        read-back."""
        if self.started is None:
            return None
        now = time.perf_counter()
        seconds = (now - self.started - self.excluded) / self.steps if self.steps else None
        if seconds is not None:
            self.total_seconds += seconds * self.steps
            self.total_steps += self.steps
        self.started, self.steps, self.excluded = now, 0, 0.0
        return seconds

    @property
    def mean(self) -> float | None:
        """Seconds per step over every step timed so far (None before the first lap)."""
        return self.total_seconds / self.total_steps if self.total_steps else None

    def stop(self) -> None:
        self.started = None

    @contextmanager
    def excluding(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            if self.started is not None:
                self.excluded += time.perf_counter() - began


def peak_memory_gib(device: torch.device) -> float:
    """The most memory the run has held: the CUDA allocator's peak on a GPU, the process's peak
    resident memory otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    if sys.platform == "win32":
        import psutil  # accelerate's dependency; Windows has no `resource`

        return psutil.Process().memory_info().peak_wset / GIB
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux counts KiB, macOS bytes.
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


def images_per_step(plan: DatasetPlan) -> float:
    """Images one optimizer step learns from, over all processes (an epoch's mean: a bucket's last
    batch may be short)."""
    return (plan.num_train_samples + plan.num_reg_samples) / plan.steps.steps_per_epoch


class TrainingLog:
    """The console progress bar and the trackers (`trackers.py`; an empty list logs nowhere).

    Losses arrive as device tensors and are read back every `sync_every` steps, so the loop does not wait
    for the device at each step. `run_log` (NAME.log) gets each epoch's average loss.
    """

    def __init__(
        self,
        total_steps: int,
        trackers: Sequence[Tracker] = (),
        *,
        show_bar: bool = True,
        average_window: int = 1,
        sync_every: int = 10,
        initial_step: int = 0,
        images_per_step: float = 1.0,
        device: torch.device = CPU,
        run_log: RunLog | None = None,
    ):
        # A resumed run's bar starts at the steps already taken.
        self.bar = tqdm(
            total=total_steps, initial=initial_step, desc="steps", disable=not show_bar, dynamic_ncols=True
        )
        self.trackers = list(trackers)
        self.average = MovingAverage(average_window)
        self.sync_every = sync_every
        self.images_per_step = images_per_step
        self.device = device
        self.run_log = run_log
        self.clock = StepClock()
        self.pending: list[tuple[int, int, torch.Tensor, dict[str, float], MaxNormStats | None]] = []
        self.last_average = float("nan")
        self.last_step = initial_step
        self.non_finite: tuple[int, int, float] | None = None
        """(step, epoch, loss) of the first NaN or inf loss read back, for the loop to stop at."""

    @property
    def run_dir(self) -> Path | None:
        """The TensorBoard folder of this run, for the user to open."""
        return next(
            (tracker.folder for tracker in self.trackers if isinstance(tracker, TensorBoardTracker)), None
        )

    def step(
        self,
        step: int,
        epoch: int,
        loss: torch.Tensor,
        lrs: dict[str, float],
        max_norm: MaxNormStats | None = None,
    ) -> bool:
        """Record a step's loss (and, with --scale_weight_norms, what the max-norm did after it); True when
        the pending losses were read back (every `sync_every` steps)."""
        self.bar.update(1)
        self.clock.step()
        self.pending.append((step, epoch, loss, lrs, max_norm))
        if len(self.pending) < self.sync_every:
            return False
        self.flush()
        return True

    def flush(self) -> float:
        """Read back the pending losses, update the bar and the trackers; returns the moving average."""
        if not self.pending:
            return self.last_average
        values = torch.stack([loss for _, _, loss, _, _ in self.pending]).float().cpu().tolist()
        max_norms = self._read_max_norms()
        seconds_per_step = self.clock.lap()
        last = len(values) - 1
        for index, ((step, epoch, _, lrs, _), value) in enumerate(zip(self.pending, values, strict=True)):
            self.last_average = self.average.add(value)
            self.last_step = step
            scalars = {"loss/current": value, "loss/average": self.last_average}
            scalars |= {f"lr/{name}": lr for name, lr in lrs.items()}
            scalars |= max_norms[index]
            if index == last:
                scalars |= self._speed_and_memory(seconds_per_step)
            self.log_scalars(scalars, step)
            if not math.isfinite(value):
                # The steps after it trained on broken weights: they are not logged.
                self.non_finite = (step, epoch, value)
                break
        self._show(epoch, value, lrs, max_norms[index])
        self.pending.clear()
        return self.last_average

    def _read_max_norms(self) -> list[dict[str, float]]:
        """Each pending step's max-norm numbers under kohya's names (none when the option is off), read
        back in one copy."""
        stats = [entry[-1] for entry in self.pending]
        given = [numbers for numbers in stats if numbers is not None]
        if not given:
            return [{} for _ in stats]
        read = iter(torch.stack([numbers.as_tensor() for numbers in given]).cpu().tolist())
        return [
            {} if numbers is None else dict(zip(MAX_NORM_KEYS, next(read), strict=True)) for numbers in stats
        ]

    def _speed_and_memory(self, seconds_per_step: float | None) -> dict[str, float]:
        numbers = {}
        if seconds_per_step:
            numbers["throughput/s_per_step"] = seconds_per_step
            numbers["throughput/images_per_s"] = self.images_per_step / seconds_per_step
        numbers["memory/peak_gib"] = peak_memory_gib(self.device)
        return numbers

    def _show(self, epoch: int, value: float, lrs: dict[str, float], max_norm: dict[str, float]) -> None:
        first_lr = next(iter(lrs.values()), 0.0)
        shown = {"epoch": epoch, "loss": f"{value:.4f}", "avr_loss": f"{self.last_average:.4f}"}
        shown["lr"] = f"{first_lr:.2e}"
        # D-Adaptation and Prodigy step by d * lr, which the bar shows beside the scheduled lr.
        effective_lr = next((lr for name, lr in lrs.items() if name.startswith("d*lr/")), None)
        if effective_lr is not None:
            shown["d*lr"] = f"{effective_lr:.2e}"
        if max_norm:  # kohya's words on its bar, which guides (and users watching for overtraining) quote
            shown["Keys Scaled"] = int(max_norm["max_norm/keys_scaled"])
            shown["Average key norm"] = f"{max_norm['norm/avg_key_norm']:.4f}"
        self.bar.set_postfix(shown)

    def epoch_end(self, epoch: int, epoch_average: float) -> None:
        self.flush()
        # What runs between epochs (saving, sampling) is not training time.
        self.clock.stop()
        self.log_scalars({"loss/epoch_average": epoch_average}, epoch)
        if self.run_log is not None:
            self.run_log.epoch(epoch, self.last_step, epoch_average)

    def begin_run(self, steps: StepCount, initial_step: int) -> None:
        """Tell the trackers that follow a run's course (the progress file) its length and start."""
        for tracker in self.trackers:
            if isinstance(tracker, ProgressFileTracker):
                tracker.begin(steps.max_train_steps, steps.num_epochs, steps.steps_per_epoch, initial_step)

    def end_run(self, outcome: Literal["finished", "stopped", "failed"], detail: str) -> None:
        """How the run ended, to NAME.log and the trackers that follow a run's course."""
        if self.run_log is not None:
            self.run_log.end(outcome, detail)
        self._to_trackers(
            lambda tracker: tracker.end(outcome, detail) if isinstance(tracker, ProgressFileTracker) else None
        )

    @contextmanager
    def not_timed(self) -> Iterator[None]:
        """Work inside (saving, sampling, validating between steps) is left out of the speed."""
        with self.clock.excluding():
            yield

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """`values` to every tracker at `step` (the epoch number for a name ending in epoch_...)."""
        self._to_trackers(lambda tracker: tracker.log_scalars(values, step))

    def log_images(self, images: Mapping[str, Image.Image], step: int, captions: Mapping[str, str]) -> None:
        self._to_trackers(lambda tracker: tracker.log_images(images, step, captions))

    def _to_trackers(self, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            # A tracker that fails (a full disk, a lost wandb connection) is dropped: a log must never end
            # the training it records.
            try:
                call(tracker)
            except Exception as error:
                self.trackers.remove(tracker)
                tqdm.write(f"warning: {type(tracker).__name__} stopped logging ({error}); training goes on")

    def close(self) -> None:
        self.flush()
        self.bar.close()
        self._to_trackers(lambda tracker: tracker.close())
