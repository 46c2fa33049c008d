"""Run settings: the learning-rate schedule."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

from loracraft.config.fields import OPTIMIZER, flag
from loracraft.config.values import parse_warmup

LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)


class ScheduleOptions(BaseModel):
    """The learning-rate schedule and its warm-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr_scheduler: Literal[LR_SCHEDULERS] = flag(
        "constant", OPTIMIZER, "Learning-rate schedule.", ss_key="ss_lr_scheduler", gui_default="cosine"
    )
    lr_warmup_steps: Annotated[int | float, BeforeValidator(parse_warmup)] = flag(
        0,
        OPTIMIZER,
        "Warm-up: a whole number of optimizer steps, or a ratio of all steps below 1 (0.1 or '10%').",
        ss_key="ss_lr_warmup_steps",
        gui_default=0.1,
    )
    lr_scheduler_num_cycles: int = flag(1, OPTIMIZER, "Restarts of cosine_with_restarts.", ge=1)
    lr_scheduler_power: float = flag(1.0, OPTIMIZER, "Power of the polynomial schedule.", gt=0)

    def warmup_steps(self, total_steps: int) -> int:
        """lr_warmup_steps as optimizer steps: a ratio below 1 is a share of the total."""
        if isinstance(self.lr_warmup_steps, float) and self.lr_warmup_steps < 1:
            return int(self.lr_warmup_steps * total_steps)
        return int(self.lr_warmup_steps)
