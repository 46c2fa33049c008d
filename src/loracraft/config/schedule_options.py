"""Run settings: the learning-rate schedule, and when the text encoder stops training."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator, model_validator

from loracraft.config.fields import OPTIMIZER, flag
from loracraft.config.optimizer_options import DOTTED_CLASS_PATH, parse_key_values
from loracraft.config.rules import RuleViolation
from loracraft.config.values import parse_steps_or_ratio

if TYPE_CHECKING:
    from loracraft.config.schema import TrainConfig

# The names kohya's get_scheduler_fix builds: transformers' schedules, diffusers' piecewise_constant and
# AdaFactor's own.
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "adafactor",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
    "piecewise_constant",
)
# Schedules without a warm-up (kohya stops with "... does not require `num_warmup_steps`").
WITHOUT_WARMUP = ("constant", "adafactor")

StepsOrRatio = Annotated[int | float, BeforeValidator(parse_steps_or_ratio)]


def _parse_stop_step(value: Any) -> int | str | None:
    """Whole optimizer steps (-1: never), or 'N%' of all steps as the kohya_ss GUI shows it."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number of steps or a percentage like '50%'")
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                percent = Fraction(text[:-1])
            except ValueError:
                raise ValueError(f"{text!r} is not a percentage like '50%'") from None
            if not 0 < percent <= 100:
                raise ValueError(f"{text} is not a percentage from above 0% to 100%")
            return text
        value = int(text)
    if value < -1:
        raise ValueError("expected -1 (never train it) or a number of steps from 0")
    return value


class ScheduleOptions(BaseModel):
    """The learning-rate schedule, its warm-up and decay, and when the text encoder stops training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr_scheduler: Literal[LR_SCHEDULERS] = flag(
        "constant",
        OPTIMIZER,
        "Learning-rate schedule: constant, constant_with_warmup, linear, cosine, cosine_with_restarts "
        "(--lr_scheduler_num_cycles), polynomial (--lr_scheduler_power), inverse_sqrt "
        "(--lr_scheduler_timescale), cosine_with_min_lr and warmup_stable_decay (--lr_scheduler_min_lr_ratio, "
        "--lr_decay_steps), piecewise_constant (--lr_scheduler_args step_rules='1:10,0.1:20,0.01'), or "
        "adafactor (AdaFactor's own, which AdaFactor with relative_step=True always uses).",
        ss_key="ss_lr_scheduler",
        gui_default="cosine",
    )
    lr_warmup_steps: StepsOrRatio = flag(
        0,
        OPTIMIZER,
        "Warm-up: a whole number of optimizer steps, or a ratio of all steps below 1 (0.1 or '10%').",
        ss_key="ss_lr_warmup_steps",
        gui_default=0.1,
    )
    lr_decay_steps: StepsOrRatio = flag(
        0,
        OPTIMIZER,
        "Decay of warmup_stable_decay: a whole number of optimizer steps at the end, or a ratio of all steps "
        "below 1 (0.2 or '20%'); the steps between warm-up and decay stay at the full rate.",
    )
    lr_scheduler_num_cycles: int = flag(
        1,
        OPTIMIZER,
        "Cycles of cosine_with_restarts (each restarts at the full rate); cosine_with_min_lr and "
        "warmup_stable_decay take half of it as their cosine's cycles, as kohya passes it.",
        ge=1,
    )
    lr_scheduler_power: float = flag(
        1.0, OPTIMIZER, "Power of the polynomial schedule (1 = linear decay, to 1e-7).", gt=0
    )
    lr_scheduler_timescale: int | None = flag(
        None,
        OPTIMIZER,
        "Timescale of inverse_sqrt, in steps: after the warm-up the rate falls as 1/sqrt((n + timescale) / "
        "timescale), n the steps since the warm-up; empty = the warm-up steps (10000 without warm-up).",
        ge=1,
    )
    lr_scheduler_min_lr_ratio: float | None = flag(
        None,
        OPTIMIZER,
        "Lowest rate of cosine_with_min_lr (required there) and warmup_stable_decay (empty = 0), as a ratio "
        "of the learning rate.",
        ge=0,
        le=1,
    )
    lr_scheduler_type: str = flag(
        "",
        OPTIMIZER,
        "A schedule class instead of --lr_scheduler: a torch.optim.lr_scheduler name (CosineAnnealingLR) or "
        "any importable package.module.Class, built with --lr_scheduler_args (no warm-up).",
    )
    lr_scheduler_args: list[str] = flag(
        [],
        OPTIMIZER,
        "Extra keyword arguments of the schedule as key=value, values read as Python literals: T_max=100 "
        "(for --lr_scheduler_type), step_rules='1:10,0.1' (piecewise_constant).",
    )
    stop_text_encoder_training: Annotated[int | str | None, BeforeValidator(_parse_stop_step)] = flag(
        None,
        OPTIMIZER,
        "Freeze the text encoder's LoRA after this many optimizer steps (its gradients are no longer "
        "computed, the U-Net's LoRA trains on), or 'N%' of all steps as the kohya_ss GUI shows it; 0 or -1 = "
        "never train it; empty = train it throughout. loracraft's own for LoRA: kohya's train_network.py "
        "has no such flag and the kohya_ss GUI ignores it for LoRA (kohya's DreamBooth script has it).",
    )

    @field_validator("lr_scheduler_type")
    @classmethod
    def _schedule_class_name(cls, value: str) -> str:
        name = value.strip()
        if (
            name
            and not DOTTED_CLASS_PATH.match(name)
            and not isinstance(getattr(torch.optim.lr_scheduler, name, None), type)
        ):
            raise ValueError(
                f"{value!r} is neither a torch.optim.lr_scheduler class nor package.module.Class"
            )
        return name

    @field_validator("lr_scheduler_args")
    @classmethod
    def _schedule_args_parse(cls, value: list[str]) -> list[str]:
        parse_key_values(value, "lr_scheduler_args")
        return value

    @model_validator(mode="after")
    def _schedule_rules(self) -> ScheduleOptions:
        if self.lr_scheduler_type:
            return self
        has_min_lr = "min_lr" in self.lr_scheduler_kwargs  # transformers' other spelling, an absolute rate
        if (
            self.lr_scheduler == "cosine_with_min_lr"
            and (self.lr_scheduler_min_lr_ratio is None) != has_min_lr
        ):
            raise RuleViolation(
                "`lr_scheduler` cosine_with_min_lr needs its lowest rate: `lr_scheduler_min_lr_ratio` (e.g. 0.1) "
                "or `lr_scheduler_args` min_lr=..., one of the two"
            )
        if self.lr_scheduler == "piecewise_constant" and "step_rules" not in self.lr_scheduler_kwargs:
            raise RuleViolation(
                "`lr_scheduler` piecewise_constant needs its rules: `lr_scheduler_args` "
                "step_rules='1:10,0.1:20,0.01' (factor 1 until step 10, 0.1 until step 20, then 0.01)"
            )
        return self

    @property
    def lr_scheduler_kwargs(self) -> dict[str, Any]:
        """`lr_scheduler_args` as the schedule's keyword arguments."""
        return parse_key_values(self.lr_scheduler_args, "lr_scheduler_args")

    def warmup_steps(self, total_steps: int) -> int:
        """lr_warmup_steps as optimizer steps: a ratio below 1 is a share of the total (rounded down)."""
        return steps_of(self.lr_warmup_steps, total_steps)

    def decay_steps(self, total_steps: int) -> int:
        """lr_decay_steps as optimizer steps: a ratio below 1 is a share of the total (rounded down)."""
        return steps_of(self.lr_decay_steps, total_steps)

    def text_encoder_stop_step(self, total_steps: int) -> int | None:
        """The optimizer step from which the text encoder's LoRA is frozen; None: it trains throughout.
        A percentage rounds up, as the kohya_ss GUI computes it."""
        stop = self.stop_text_encoder_training
        if stop is None:
            return None
        if isinstance(stop, str):
            return math.ceil(total_steps * Fraction(stop[:-1]) / 100)
        return max(stop, 0)


def steps_of(value: int | float, total_steps: int) -> int:
    """kohya's int_or_float in steps: a float is a ratio of `total_steps`, rounded down."""
    return int(value * total_steps) if isinstance(value, float) else value


def optimizer_schedule_conflict(run: TrainConfig) -> RuleViolation | None:
    """What the optimizer forbids in the schedule (kohya stops with an error in each case)."""
    if run.lr_scheduler == "adafactor" and not run.lr_scheduler_type and not run.adafactor_relative_step:
        return RuleViolation(
            "`lr_scheduler` adafactor follows AdaFactor's own step sizes: it needs `optimizer_type` AdaFactor "
            "with relative_step=True (its default) in `optimizer_args`"
        )
    return None
