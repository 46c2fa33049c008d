"""Build the optimizer kohya's flags name, with kohya's adjustments and one-line errors.

`check_optimizer` runs when a run starts, before the dataset and the model are loaded: a missing
package, an argument the class does not take or an 8-bit optimizer this machine cannot run stops the run
there, in one line. `build_optimizer` then builds it over the network's parameter groups.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.training.optimizer.arguments import unknown_argument
from loracraft.training.optimizer.registry import OptimizerKind, kind_of, load_class

# bitsandbytes keeps 8-bit state only for tensors of at least this many elements (its min_8bit_size).
_EIGHT_BIT_PROBE_SIZE = 4096


# kohya's full_fp16 trap: torch's plain AdamW computes in the weights' dtype, fp16 cannot hold its eps
# (1e-8), and the LoRA down weights' first gradients are exactly zero (the up weights start at zero), so
# their first update is 0/0 = NaN. The fused kernel computes in float32 and is made for fp16 weights.
FUSED_FOR_FULL_FP16 = ("AdamW",)


@dataclass(frozen=True)
class OptimizerChoice:
    """The class a run's optimizer flags name and the arguments kohya passes it."""

    name: str
    kind: OptimizerKind
    cls: type
    kwargs: dict[str, Any]
    """optimizer_args with what kohya fills in (SGDNesterov's momentum, AdaFactor's relative_step)."""

    @property
    def description(self) -> str:
        """kohya's ss_optimizer: the class's `module.Name`, and `(key=value,...)` of the arguments given."""
        name = f"{self.cls.__module__}.{self.cls.__name__}"
        args = ",".join(f"{key}={value}" for key, value in self.kwargs.items())
        return f"{name}({args})" if args else name


def kohya_kwargs(
    name: str, kind: OptimizerKind, given: dict[str, Any], full_fp16: bool = False
) -> dict[str, Any]:
    """The arguments kohya's get_optimizer passes: the user's, then its defaults for those left out;
    with full_fp16, AdamW's fused kernel (see `FUSED_FOR_FULL_FP16`)."""
    kwargs = dict(given)
    if full_fp16 and name in FUSED_FOR_FULL_FP16:
        kwargs.setdefault("fused", True)
    for key, value in kind.filled.items():
        kwargs.setdefault(key, value)
    if name == "AdaFactor":
        kwargs.setdefault("relative_step", True)
        if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
            kwargs["relative_step"] = True  # AdaFactor's warm-up only exists with relative steps
    return kwargs


def choose_optimizer(config: TrainConfig) -> OptimizerChoice:
    """The class and its arguments, checked against the constructor (a UserError names the argument)."""
    name = config.optimizer_name
    kind = kind_of(name)
    cls = load_class(name)
    kwargs = kohya_kwargs(name, kind, config.optimizer_kwargs, config.full_fp16)
    for key in kwargs:
        if key in ("lr", "params"):
            raise UserError(
                f"--optimizer_args {key}: loracraft passes it; set the learning rate with --learning_rate, "
                "--unet_lr and --text_encoder_lr"
            )
        if key in kind.fixed:
            raise UserError(
                f"--optimizer_args {key}: {name} sets {key}={kind.fixed[key]} itself; leave it out"
            )
    problem = unknown_argument(cls, kwargs, {"self", "params", "lr", *kind.fixed})
    if problem is not None:
        raise UserError(f"--optimizer_args: {problem}")
    return OptimizerChoice(name, kind, cls, kwargs)


def trained_learning_rates(config: TrainConfig) -> dict[str, float]:
    """The learning rate of each part that trains, in the network's parameter-group order."""
    rates = {}
    if config.train_unet and config.effective_unet_lr > 0:
        rates["unet"] = config.effective_unet_lr
    if config.train_text_encoder:
        # SDXL's second text encoder may have its own rate (`--text_encoder_lr A B`).
        for index, rate in enumerate(config.effective_text_encoder_lrs, 1):
            if rate > 0:
                rates["text_encoder" if index == 1 else f"text_encoder{index}"] = rate
    return rates


def optimizer_notes(config: TrainConfig, choice: OptimizerChoice) -> list[str]:
    """kohya's warnings and adjustments for this optimizer, as lines for the console."""
    notes = []
    rates = trained_learning_rates(config)
    if choice.kind.adaptive and rates:
        first = next(iter(rates.values()))
        if first <= 0.1:
            notes.append(
                f"{choice.name} multiplies the learning rate by the step size d it estimates and expects a "
                f"learning rate around 1.0 (kohya recommends 1.0); this run's is {first:g}"
            )
        if len(set(rates.values())) > 1:
            notes.append(
                f"{choice.name} estimates one step size d for every part, and kohya warns that only the first "
                "learning rate takes effect when they differ: consider equal --unet_lr and --text_encoder_lr"
            )
    for key, value in choice.kind.filled.items():
        if key not in config.optimizer_kwargs:
            notes.append(f"{choice.name}: {key}={value}, kohya's value when --optimizer_args gives none")
    if choice.kwargs.get("fused") and "fused" not in config.optimizer_kwargs:
        notes.append(
            f"{choice.name} with --full_fp16: fused=True, the kernel that computes fp16 weights in float32 "
            "(plain AdamW's eps is 0 in fp16 and its first step gives NaN, as in kohya)"
        )
    if config.adafactor_relative_step:
        notes.append(
            "AdaFactor with relative_step=True (its default) sets its own step sizes, as in kohya: the learning "
            "rates (--learning_rate, --unet_lr, --text_encoder_lr) are not used. To train with them: "
            "--optimizer_args relative_step=False scale_parameter=False warmup_init=False"
        )
    return notes


def check_optimizer(config: TrainConfig, device: torch.device, echo: Callable[[str], None]) -> None:
    """Stop the run early, in one line, when its optimizer cannot be built or run here; print kohya's
    notes about it."""
    choice = choose_optimizer(config)
    rates = trained_learning_rates(config)
    if choice.kind.one_lr and len(set(rates.values())) > 1:
        raise UserError(
            f"--optimizer_type {choice.name} takes one learning rate for every part, but --unet_lr "
            f"{rates['unet']:g} and --text_encoder_lr {rates['text_encoder']:g} differ: set them equal (or "
            "--text_encoder_lr 0 to train only the U-Net)"
        )
    for note in optimizer_notes(config, choice):
        echo(f"note: {note}")
    for message in trial_run(choice, default_lr(config), device, step=choice.kind.uses_bitsandbytes):
        echo(f"note: {choice.name}: {choice.kind.module.partition('.')[0]}: {message}")


def default_lr(config: TrainConfig) -> float | None:
    """The learning rate the constructor gets besides the groups' own: none for AdaFactor's relative steps."""
    return None if config.adafactor_relative_step else config.learning_rate


def trial_run(choice: OptimizerChoice, lr: float | None, device: torch.device, step: bool) -> list[str]:
    """Build the optimizer over a small tensor on `device`, so an argument value it refuses stops the run
    now; with `step`, also take one step, so an optimizer this machine cannot run (bitsandbytes without
    its GPU library) stops it too, not the first training step. Returns the warnings the library gave;
    they are relayed once and not repeated for every tensor later."""
    param = torch.zeros(_EIGHT_BIT_PROBE_SIZE, device=device, requires_grad=True)
    param.grad = torch.ones_like(param)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            optimizer = choice.cls([param], lr=lr, **choice.kind.fixed, **choice.kwargs)
        except (TypeError, ValueError) as err:
            raise UserError(
                f"--optimizer_type {choice.name} refuses this run's arguments: {first_line(err)}; check "
                "--optimizer_args and --learning_rate"
            ) from None
        try:
            if step:
                optimizer.step()
        except Exception as err:
            raise UserError(
                f"--optimizer_type {choice.name} cannot run on this machine ({device.type}): {first_line(err)}; "
                "use an optimizer without bitsandbytes here (AdamW, Lion, Prodigy...) or a CUDA GPU"
            ) from None
    messages = list(dict.fromkeys(str(warning.message).strip() for warning in caught))
    for message in messages:
        warnings.filterwarnings("ignore", message=re.escape(message))
    return messages


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def build_optimizer(config: TrainConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    """The optimizer over the network's parameter groups, each with its own learning rate, as kohya
    builds it. AdaFactor with relative steps takes no learning rate at all."""
    choice = choose_optimizer(config)
    groups = [dict(group) for group in param_groups]
    if config.adafactor_relative_step:
        for group in groups:
            group.pop("lr", None)
    optimizer = choice.cls(groups, lr=default_lr(config), **choice.kind.fixed, **choice.kwargs)
    # Schedule-free optimizers start in evaluation mode; kohya switches any optimizer that can to training.
    if callable(getattr(optimizer, "train", None)):
        optimizer.train()
    return optimizer


def describe_optimizer(config: TrainConfig) -> str:
    """kohya's ss_optimizer text, e.g. 'torch.optim.adamw.AdamW(weight_decay=0.01)'."""
    return choose_optimizer(config).description
