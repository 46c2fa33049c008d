"""The learning rate of every parameter group at every optimizer step, before the run, and its plot.

The curve comes from the run's own schedule: the run's optimizer class over the run's parameter groups
(each holding a throwaway tensor instead of the LoRA weights) and `schedule.build_lr_scheduler`, stepped
as accelerate steps a prepared schedule: once per process after every optimizer step. So warm-up,
restarts, decay and the text encoder's own rate are exactly the run's. What a schedule cannot show is said
in `notes`: the step of D-Adaptation and Prodigy is d * lr with d estimated while training, AdaFactor's
relative steps depend on the weights, and schedule-free optimizers warm up inside the optimizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from loracraft.atomic import write_atomic
from loracraft.config.schema import TrainConfig
from loracraft.training.optimizer import build_optimizer
from loracraft.training.optimizer.registry import kind_of
from loracraft.training.schedule import build_lr_scheduler


@dataclass(frozen=True)
class LRCurve:
    groups: tuple[str, ...]
    """kohya's group names, in the optimizer's order ("unet", "textencoder", ...)."""
    rates: tuple[tuple[float, ...], ...]
    """Per group, the learning rate optimizer step 1, 2, ... N uses."""
    stops: dict[str, int]
    """Groups that stop training before the end: the step from which they are frozen."""
    notes: tuple[str, ...]
    """What the curve cannot show for this run."""

    @property
    def steps(self) -> int:
        return len(self.rates[0]) if self.rates else 0


def lr_curve(
    config: TrainConfig, param_groups: Sequence[dict], total_steps: int, num_processes: int = 1
) -> LRCurve:
    """The curve of a run of `total_steps` optimizer steps over `param_groups` (the network's
    `param_groups(...)`; their tensors are not touched)."""
    throwaway = [{**group, "params": [torch.zeros(1, requires_grad=True)]} for group in param_groups]
    optimizer = build_optimizer(config, throwaway)
    scheduler = build_lr_scheduler(config, optimizer, total_steps, num_processes)
    names = tuple(group.get("name", f"group{index}") for index, group in enumerate(optimizer.param_groups))
    rates: list[list[float]] = [[] for _ in names]
    with warnings.catch_warnings():
        # The schedule is stepped without optimizer steps on purpose; torch warns about that order.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(total_steps):
            for values, rate in zip(rates, scheduler.get_last_lr(), strict=True):
                values.append(float(rate))
            for _ in range(num_processes):
                scheduler.step()
    stop = config.text_encoder_stop_step(total_steps)
    stops = {name: stop for name in names if name.startswith("textencoder") and stop is not None}
    return LRCurve(names, tuple(map(tuple, rates)), stops, tuple(curve_notes(config)))


def curve_notes(config: TrainConfig) -> list[str]:
    notes = []
    name = config.optimizer_name
    if kind_of(name).adaptive:
        notes.append(
            f"{name} steps by d * lr, with d estimated while training: the curve shows lr; d cannot be known "
            "before the run (the run logs d*lr)"
        )
    if config.adafactor_relative_step:
        notes.append(
            "AdaFactor with relative_step sets its step sizes from the step count and the weights while "
            "training: the curve shows only the rate it starts from"
        )
    if config.is_schedule_free:
        notes.append(
            f"{name} schedules itself (its warm-up is --optimizer_args warmup_steps=N): the curve shows the "
            "constant rate it is given"
        )
    return notes


# Drawing: plot area inside margins, one line per group.
WIDTH, HEIGHT = 960, 540
LEFT, RIGHT, TOP, BOTTOM = 80, 24, 48, 56
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
TICKS = 5


def _tick_values(top: float) -> list[float]:
    return [top * index / TICKS for index in range(TICKS + 1)]


def draw_lr_curve(curve: LRCurve, title: str) -> Image.Image:
    """The curve as a picture: axes with ticks, one coloured line per group, a legend."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    steps = max(curve.steps, 1)
    top = max((rate for rates in curve.rates for rate in rates), default=0.0) * 1.05 or 1.0

    def x_of(step: float) -> float:
        return LEFT + plot_width * (step - 1) / max(steps - 1, 1)

    def y_of(rate: float) -> float:
        return TOP + plot_height * (1 - rate / top)

    pen.text((LEFT, 16), title, fill="black", font=font)
    pen.rectangle((LEFT, TOP, LEFT + plot_width, TOP + plot_height), outline="black")
    for value in _tick_values(top):
        y = y_of(value)
        pen.line((LEFT - 5, y, LEFT, y), fill="black")
        pen.line((LEFT, y, LEFT + plot_width, y), fill=(230, 230, 230))
        pen.text((8, y - 6), f"{value:.3g}", fill="black", font=font)
    for index in range(TICKS + 1):
        step = 1 + (steps - 1) * index / TICKS
        x = x_of(step)
        pen.line((x, TOP + plot_height, x, TOP + plot_height + 5), fill="black")
        pen.text((x - 10, TOP + plot_height + 8), f"{round(step)}", fill="black", font=font)
    pen.text((LEFT + plot_width // 2 - 40, HEIGHT - 22), "optimizer step", fill="black", font=font)
    labels = legend_labels(curve)
    for index, (name, rates) in enumerate(zip(curve.groups, curve.rates, strict=True)):
        colour = COLOURS[index % len(COLOURS)]
        last = curve.stops.get(name, len(rates) + 1) - 1  # a frozen group's line ends where it stops
        points = [(x_of(step), y_of(rate)) for step, rate in enumerate(rates[:last], start=1)]
        if len(points) == 1:
            pen.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill=colour)
        elif points:
            pen.line(points, fill=colour, width=2)
        label = labels[index]
        legend_y = TOP + 10 + 16 * index
        pen.line(
            (LEFT + plot_width - 230, legend_y + 6, LEFT + plot_width - 205, legend_y + 6),
            fill=colour,
            width=3,
        )
        pen.text((LEFT + plot_width - 198, legend_y), label, fill="black", font=font)
    return image


def legend_labels(curve: LRCurve) -> list[str]:
    """Each group's legend text. A group whose line is another's (the same rate at every step, frozen at
    the same step) is drawn under that one's line, so its label says so."""
    labels = []
    for index, (name, rates) in enumerate(zip(curve.groups, curve.rates, strict=True)):
        label = name + (f" (frozen from step {curve.stops[name]})" if name in curve.stops else "")
        same = next(
            (
                other
                for other, other_rates in zip(curve.groups[:index], curve.rates[:index], strict=True)
                if other_rates == rates and curve.stops.get(other) == curve.stops.get(name)
            ),
            None,
        )
        labels.append(f"{label}: the line of {same}" if same is not None else label)
    return labels


def write_lr_curve(curve: LRCurve, path: Path, title: str) -> Path:
    """Draw the curve and write it as a PNG at `path`, atomically."""
    image = draw_lr_curve(curve, title)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def describe_lr_curve(curve: LRCurve) -> list[str]:
    """Console lines: each group's rate at the first, middle and last step, and the notes."""
    lines = []
    middle = (curve.steps + 1) // 2
    for name, rates in zip(curve.groups, curve.rates, strict=True):
        stop = f"; frozen from step {curve.stops[name]}" if name in curve.stops else ""
        lines.append(
            f"  {name}: {rates[0]:.3g} at step 1, {rates[middle - 1]:.3g} at step {middle}, "
            f"{rates[-1]:.3g} at step {curve.steps}; highest {max(rates):.3g}{stop}"
        )
    lines += [f"  note: {note}" for note in curve.notes]
    return lines
