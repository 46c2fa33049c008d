"""Learning-rate schedules as kohya's get_scheduler_fix builds them, and the text encoder's stop step.

kohya takes every named schedule from transformers (piecewise_constant from diffusers), so the curves
are those libraries' own. Around them it adds its step arithmetic (`schedule_steps`), its choice of
arguments per schedule (`schedule_arguments`), a custom class (`--lr_scheduler_type`), AdaFactor's own
schedule, and a constant one for schedule-free optimizers, which schedule themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.optimization import get_piecewise_constant_schedule
from transformers.optimization import (
    TYPE_TO_SCHEDULER_FUNCTION,
    AdafactorSchedule,
    SchedulerType,
    get_constant_schedule,
)

from loracraft.config.schedule_options import WITHOUT_WARMUP
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.networks.lora_network import LoRANetwork
from loracraft.training.optimizer.arguments import missing_argument, unknown_argument
from loracraft.training.optimizer.registry import import_target


@dataclass(frozen=True)
class ScheduleSteps:
    """The schedule's step counts, in scheduler steps (optimizer steps times processes)."""

    training: int
    warmup: int
    decay: int

    @property
    def stable(self) -> int:
        """warmup_stable_decay's steps at the full rate, between the warm-up and the decay."""
        return self.training - self.warmup - self.decay


def schedule_steps(config: TrainConfig, total_steps: int, num_processes: int = 1) -> ScheduleSteps:
    """The horizon, warm-up and decay for `total_steps` optimizer steps.

    Like kohya, the horizon is multiplied by the number of processes because accelerate steps a prepared
    scheduler once per process; so are the warm-up and decay steps, which kohya forgets for whole steps.
    """
    return ScheduleSteps(
        training=total_steps * num_processes,
        warmup=config.warmup_steps(total_steps) * num_processes,
        decay=config.decay_steps(total_steps) * num_processes,
    )


def schedule_arguments(config: TrainConfig, steps: ScheduleSteps) -> dict[str, Any]:
    """What kohya passes each transformers schedule besides the optimizer and --lr_scheduler_args."""
    name = config.lr_scheduler
    if name in ("constant", "piecewise_constant"):
        return {}
    arguments: dict[str, Any] = {"num_warmup_steps": steps.warmup}
    if name == "constant_with_warmup":
        return arguments
    if name == "inverse_sqrt":
        return {**arguments, "timescale": config.lr_scheduler_timescale}
    if name == "warmup_stable_decay":
        return {
            **arguments,
            "num_stable_steps": steps.stable,
            "num_decay_steps": steps.decay,
            "num_cycles": config.lr_scheduler_num_cycles / 2,
            "min_lr_ratio": config.lr_scheduler_min_lr_ratio or 0.0,
        }
    arguments["num_training_steps"] = steps.training
    if name == "cosine_with_restarts":
        arguments["num_cycles"] = config.lr_scheduler_num_cycles
    elif name == "polynomial":
        arguments["power"] = config.lr_scheduler_power
    elif name == "cosine_with_min_lr":
        # kohya halves the cycles here: one cycle of its flag is the usual half cosine down to the minimum.
        arguments["num_cycles"] = config.lr_scheduler_num_cycles / 2
        arguments["min_lr_rate"] = config.lr_scheduler_min_lr_ratio
    return arguments


def schedule_function(name: str) -> Callable[..., torch.optim.lr_scheduler.LRScheduler]:
    if name == "piecewise_constant":
        return get_piecewise_constant_schedule
    return TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]


def custom_schedule_class(config: TrainConfig) -> type:
    """--lr_scheduler_type: a torch.optim.lr_scheduler name, or a dotted class path (kohya's rule)."""
    name = config.lr_scheduler_type
    target = name if "." in name else f"torch.optim.lr_scheduler.{name}"
    return import_target(target, name, "--lr_scheduler_type")


def unused_schedule_settings(config: TrainConfig) -> str | None:
    """The note for schedule settings this run does not use, where kohya ignores them silently or stops
    with an error ("... does not require `num_warmup_steps`"); None when every one is used."""
    warmup = config.lr_warmup_steps != 0
    if config.is_schedule_free:
        if config.lr_scheduler == "constant" and not config.lr_scheduler_type and not warmup:
            return None
        return (
            f"{config.optimizer_name} schedules its own learning rate: --lr_scheduler, --lr_scheduler_type and "
            "--lr_warmup_steps are not used, as in kohya; it warms up with --optimizer_args warmup_steps=N"
        )
    if config.lr_scheduler_type:
        schedule = f"--lr_scheduler_type {config.lr_scheduler_type}"
    elif config.adafactor_relative_step:
        if config.lr_scheduler != "adafactor":
            return (
                f"AdaFactor with relative_step=True follows its own schedule, adafactor, instead of --lr_scheduler "
                f"{config.lr_scheduler}, as kohya does"
                + (" (and without --lr_warmup_steps)" if warmup else "")
            )
        schedule = "--lr_scheduler adafactor"
    elif config.lr_scheduler in WITHOUT_WARMUP or config.lr_scheduler == "piecewise_constant":
        schedule = f"--lr_scheduler {config.lr_scheduler}"
    else:
        return None
    if not warmup:
        return None
    hint = "; constant_with_warmup warms up" if config.lr_scheduler == "constant" else ""
    return f"{schedule} has no warm-up: --lr_warmup_steps is not used (kohya stops with an error here){hint}"


def check_lr_scheduler(config: TrainConfig, echo: Callable[[str], None]) -> None:
    """Stop the run early, in one line, when the schedule cannot be built as given (a class that cannot
    be imported, arguments it does not take or lacks); print which settings it leaves unused."""
    note = unused_schedule_settings(config)
    if note is not None:
        echo(f"note: {note}")
    if config.is_schedule_free or (config.adafactor_relative_step and not config.lr_scheduler_type):
        return  # their schedules take no arguments
    kwargs = config.lr_scheduler_kwargs
    if config.lr_scheduler_type:
        schedule, taken = custom_schedule_class(config), {"self", "optimizer"}
    else:
        schedule = schedule_function(config.lr_scheduler)
        taken = {"optimizer", *schedule_arguments(config, ScheduleSteps(1, 0, 0))}
        for key in kwargs:
            if key in taken:
                raise UserError(
                    f"--lr_scheduler_args {key}: loracraft sets it from its own flag; leave it out"
                )
    problem = unknown_argument(schedule, kwargs, taken) or missing_argument(schedule, kwargs, taken)
    if problem is not None:
        raise UserError(f"--lr_scheduler_args: {problem}")


def build_lr_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int, num_processes: int = 1
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule over `total_steps` optimizer steps, as kohya builds it."""
    kwargs = config.lr_scheduler_kwargs
    if config.is_schedule_free:
        # kohya's dummy schedule: the rate stays what the optimizer was given.
        return get_constant_schedule(optimizer)
    if config.lr_scheduler_type:
        return custom_schedule_class(config)(optimizer, **kwargs)
    if config.adafactor_relative_step:
        # The rates it reports are the ones AdaFactor computes; learning_rate is only the first one logged.
        return AdafactorSchedule(optimizer, config.learning_rate)
    steps = schedule_steps(config, total_steps, num_processes)
    if config.lr_scheduler == "warmup_stable_decay" and steps.stable < 0:
        raise UserError(
            f"--lr_warmup_steps ({steps.warmup} steps) and --lr_decay_steps ({steps.decay} steps) are longer "
            f"than the run's {steps.training} steps; shorten them"
        )
    return schedule_function(config.lr_scheduler)(optimizer, **schedule_arguments(config, steps), **kwargs)


def text_encoder_stop(
    config: TrainConfig, network: LoRANetwork, total_steps: int, echo: Callable[[str], None]
) -> Callable[[int], None]:
    """For --stop_text_encoder_training: a function of the optimizer steps done so far, to call before
    each batch, that freezes the text encoder's LoRA once the stop step is reached."""
    stop = config.text_encoder_stop_step(total_steps)
    frozen = stop is None or not network.num_text_encoder_modules or not config.train_text_encoder

    def before_batch(done: int) -> None:
        nonlocal frozen
        if not frozen and done >= stop:
            network.freeze_text_encoder()
            frozen = True
            echo(f"text encoder: its LoRA stops training at step {done} (--stop_text_encoder_training)")

    return before_batch
