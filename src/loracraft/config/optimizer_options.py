"""Run settings: the optimizer and the learning rates of the network's parts."""

from __future__ import annotations

import ast
import inspect
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, field_validator

from loracraft.config.fields import OPTIMIZER, flag

# kohya accepts these optimizer names; only AdamW is built so far, the rest get a clear "not yet".
# fmt: off
KNOWN_OPTIMIZERS = (
    "AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
    "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdaGrad", "DAdaptAdam",
    "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "AdaFactor",
    "RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree",
)
# fmt: on
SUPPORTED_OPTIMIZERS = ("AdamW",)


class OptimizerOptions(BaseModel):
    """The optimizer, its arguments and the learning rates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer_type: str = flag(
        "AdamW",
        OPTIMIZER,
        "Optimizer. AdamW for now; kohya's other names give a clear 'not yet'.",
        gui_default="AdamW8bit",
    )
    optimizer_args: list[str] = flag(
        [], OPTIMIZER, "Extra optimizer arguments as key=value, e.g. weight_decay=0.01 betas=0.9,0.99."
    )
    learning_rate: float = flag(
        2e-6,
        OPTIMIZER,
        "Learning rate for every part without its own (--unet_lr, --text_encoder_lr). The default is "
        "kohya's, meant for full fine-tuning; LoRA usually trains at 1e-4.",
        ss_key="ss_learning_rate",
        ge=0,
        gui_default=1e-4,
    )
    unet_lr: float | None = flag(
        None,
        OPTIMIZER,
        "U-Net LoRA learning rate; empty = learning_rate.",
        ss_key="ss_unet_lr",
        ge=0,
        gui_default=1e-4,
    )
    text_encoder_lr: float | None = flag(
        None,
        OPTIMIZER,
        "Text-encoder LoRA learning rate; empty = learning_rate; 0 = text encoder not trained.",
        ss_key="ss_text_encoder_lr",
        ge=0,
        gui_default=1e-4,
    )
    max_grad_norm: float = flag(
        1.0,
        OPTIMIZER,
        "Clip the gradient norm of the LoRA weights; 0 disables.",
        ss_key="ss_max_grad_norm",
        ge=0,
    )

    @field_validator("optimizer_type")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        name = value or "AdamW"
        by_lower = {n.lower(): n for n in KNOWN_OPTIMIZERS}
        canonical = by_lower.get(name.lower())
        if canonical is None:
            raise ValueError(
                f"unknown optimizer {value!r}; loracraft builds {', '.join(SUPPORTED_OPTIMIZERS)}"
            )
        if canonical not in SUPPORTED_OPTIMIZERS:
            raise ValueError(f"{canonical} is not built into loracraft yet; use AdamW for now")
        return canonical

    @field_validator("optimizer_args")
    @classmethod
    def _optimizer_args_parse(cls, value: list[str]) -> list[str]:
        parse_optimizer_args(value)
        return value

    @property
    def effective_unet_lr(self) -> float:
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        """`optimizer_args` as the optimizer's keyword arguments."""
        return parse_optimizer_args(self.optimizer_args)


def parse_optimizer_args(items: list[str]) -> dict[str, Any]:
    """kohya's `key=value` optimizer arguments; values are Python literals, `a,b` is a tuple."""
    parsed: dict[str, Any] = {}
    allowed = set(inspect.signature(torch.optim.AdamW).parameters) - {"params", "lr"}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"optimizer argument {item!r} is not key=value")
        if key not in allowed:
            raise ValueError(f"AdamW has no argument {key!r}; it takes {', '.join(sorted(allowed))}")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        parsed[key] = tuple(value) if isinstance(value, list) else value
    return parsed
