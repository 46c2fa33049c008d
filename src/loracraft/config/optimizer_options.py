"""Run settings: the optimizer and the learning rates of the network's parts."""

from __future__ import annotations

import ast
import difflib
import re
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from loracraft.config.fields import OPTIMIZER, flag
from loracraft.config.rules import RuleViolation

# kohya's optimizer names (get_optimizer matches them in lower case); DAdaptation is DAdaptAdamPreprint.
# fmt: off
KOHYA_OPTIMIZERS = (
    "AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
    "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdamPreprint", "DAdaptAdaGrad",
    "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "AdaFactor",
    "RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree",
)
# fmt: on
# SDXL's two; kohya's other trainers take a third (SD3's T5), which no family here has.
MAX_TEXT_ENCODERS = 2
# kohya's escape hatch for optimizers and schedules: any importable `package.module.Class`.
DOTTED_CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class OptimizerOptions(BaseModel):
    """The optimizer, its arguments and the learning rates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer_type: str = flag(
        "AdamW",
        OPTIMIZER,
        "Optimizer: AdamW, AdamW8bit, PagedAdamW, PagedAdamW8bit, PagedAdamW32bit, Lion, Lion8bit, "
        "PagedLion8bit, SGDNesterov, SGDNesterov8bit, DAdaptation (= DAdaptAdamPreprint), DAdaptAdaGrad, "
        "DAdaptAdam, DAdaptAdan, DAdaptAdanIP, DAdaptLion, DAdaptSGD, Prodigy, AdaFactor, AdamWScheduleFree, "
        "SGDScheduleFree, RAdamScheduleFree (any case), a torch.optim class name, or any importable "
        "package.module.Class (e.g. prodigyplus.ProdigyPlusScheduleFree). All but AdamW, SGDNesterov and "
        'AdaFactor need their package: pip install "loracraft[optimizers]".',
        gui_default="AdamW8bit",
    )
    use_8bit_adam: bool = flag(False, OPTIMIZER, "Legacy spelling of --optimizer_type AdamW8bit.")
    use_lion_optimizer: bool = flag(False, OPTIMIZER, "Legacy spelling of --optimizer_type Lion.")
    optimizer_args: list[str] = flag(
        [],
        OPTIMIZER,
        "Extra keyword arguments of the optimizer as key=value, values read as Python literals: "
        "weight_decay=0.01 betas=0.9,0.999 (a tuple) decouple=True d_coef=2 beta3=None.",
    )
    learning_rate: float = flag(
        2e-6,
        OPTIMIZER,
        "Learning rate for every part without its own (--unet_lr, --text_encoder_lr). The default is "
        "kohya's, meant for full fine-tuning; LoRA usually trains at 1e-4, and D-Adaptation and Prodigy at "
        "1.0 (they scale it by the step size d they estimate).",
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
    text_encoder_lr: list[float] | None = flag(
        None,
        OPTIMIZER,
        "Text-encoder LoRA learning rate: one value for every text encoder, or two for SDXL's (TE1 then "
        "TE2; SD1/SD2 use the first); empty = learning_rate; 0 = that text encoder not trained. A TOML "
        "file may give a number or a list.",
        ss_key="ss_text_encoder_lr",
        gui_default=1e-4,
    )
    max_grad_norm: float = flag(
        1.0,
        OPTIMIZER,
        "Clip the gradient norm of the LoRA weights; 0 disables.",
        ss_key="ss_max_grad_norm",
        ge=0,
    )

    @field_validator("text_encoder_lr", mode="before")
    @classmethod
    def _text_encoder_lr_as_list(cls, value: Any) -> Any:
        # kohya: a number (TOML) is one value; no value (`--text_encoder_lr` alone) means learning_rate.
        if isinstance(value, (list, tuple)):
            return list(value) or None
        return None if value is None else [value]

    @field_validator("text_encoder_lr")
    @classmethod
    def _text_encoder_lr_values(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) > MAX_TEXT_ENCODERS:
            raise ValueError("takes one learning rate, or two for SDXL's text encoders (TE1 then TE2)")
        if value is not None and min(value) < 0:
            raise ValueError("learning rates cannot be negative; 0 leaves a text encoder untrained")
        return value

    @field_validator("optimizer_type")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        return canonical_optimizer_name(value)

    @field_validator("optimizer_args")
    @classmethod
    def _optimizer_args_parse(cls, value: list[str]) -> list[str]:
        parse_key_values(value, "optimizer_args")
        return value

    @model_validator(mode="after")
    def _legacy_flags(self) -> OptimizerOptions:
        if self.use_8bit_adam and self.use_lion_optimizer:
            raise RuleViolation(
                "`use_8bit_adam` and `use_lion_optimizer` choose two optimizers; keep one (or use `optimizer_type`)"
            )
        for legacy, meant in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion")):
            if getattr(self, legacy) and self.optimizer_type not in ("AdamW", meant):
                raise RuleViolation(
                    f"`{legacy}` means `optimizer_type` {meant}, but `optimizer_type` is {self.optimizer_type}; "
                    "keep one of the two"
                )
        return self

    @property
    def optimizer_name(self) -> str:
        """The optimizer this run builds: `optimizer_type`, or what a legacy flag stands for."""
        if self.use_8bit_adam:
            return "AdamW8bit"
        if self.use_lion_optimizer:
            return "Lion"
        return self.optimizer_type

    @property
    def effective_unet_lr(self) -> float:
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    @property
    def effective_text_encoder_lrs(self) -> tuple[float, ...]:
        """`--text_encoder_lr`'s values, or learning_rate: one rate for every text encoder, or SDXL's TE1
        and TE2 rates (`LoRANetwork.param_groups` applies kohya's rule)."""
        return (self.learning_rate,) if self.text_encoder_lr is None else tuple(self.text_encoder_lr)

    @property
    def effective_text_encoder_lr(self) -> float:
        """The first text encoder's rate: SD1/SD2's only one (kohya's networks.lora reads the first value)."""
        return self.effective_text_encoder_lrs[0]

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        """`optimizer_args` as the optimizer's keyword arguments."""
        return parse_key_values(self.optimizer_args, "optimizer_args")

    @property
    def is_schedule_free(self) -> bool:
        """kohya's test: a schedule-free optimizer's name ends in ScheduleFree (ProdigyPlusScheduleFree too)."""
        return self.optimizer_name.lower().endswith("schedulefree")

    @property
    def adafactor_relative_step(self) -> bool:
        """AdaFactor computing its own step sizes: relative_step=True, its default, or forced by
        warmup_init=True, as kohya does."""
        if self.optimizer_name != "AdaFactor":
            return False
        kwargs = self.optimizer_kwargs
        return bool(kwargs.get("relative_step", True) or kwargs.get("warmup_init", False))


def canonical_optimizer_name(value: str) -> str:
    """kohya's spelling of an optimizer name ('' is AdamW), a torch.optim class, or a dotted class path."""
    name = value.strip() or "AdamW"
    by_lower = {known.lower(): known for known in KOHYA_OPTIMIZERS}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    if DOTTED_CLASS_PATH.match(name):
        return name
    if isinstance(getattr(torch.optim, name, None), type):
        return name  # kohya: a bare name is looked up in torch.optim, case-sensitive
    # kohya matches names in any case; the suggestion is spelt as --help lists it.
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    suggestion = f" (did you mean {by_lower[close[0]]}?)" if close else ""
    raise ValueError(
        f"unknown optimizer {value!r}{suggestion}; use one of kohya's names (see --help), a torch.optim "
        "class, or package.module.Class"
    )


def parse_key_values(items: list[str], flag_name: str) -> dict[str, Any]:
    """kohya's `key=value` arguments: values are Python literals (`0.9,0.999` is a tuple, `True`, `None`);
    a value that is not a literal stays text (kohya stops with a SyntaxError there)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag_name} {item!r} is not key=value")
        try:
            parsed[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            parsed[key] = raw.strip()
    return parsed
