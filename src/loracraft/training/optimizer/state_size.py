"""The memory an optimizer keeps per trained weight, as each optimizer's own code allocates it.

Counted per weight tensor from the optimizers' state initialisation (`optimizer.state[p]` after the first
step):

- torch's AdamW: exp_avg, exp_avg_sq (and max_exp_avg_sq with amsgrad), in the weight's dtype.
- bitsandbytes' 8-bit optimizers: one byte per element per state, plus a float32 absmax per block of 256
  elements; a tensor under min_8bit_size (4096) elements keeps float32 states instead. The paged ones put
  states of 100k elements or more in CUDA unified memory, which the GPU may page out to RAM.
- Lion: exp_avg. SGD with momentum (SGDNesterov): momentum_buffer.
- D-Adaptation: Adam, AdamPreprint and AdaGrad 3 states, Adan 5, Lion 2, SGD 3.
- Prodigy: s, p0 (the starting weights), exp_avg (when beta1 > 0), exp_avg_sq; s and p0 hold every
  slice_p-th element, and prodigyopt from 1.1 keeps no p0 for a weight that starts at zero (LoRA's up
  weights).
- AdaFactor: for a weight of 2 or more dimensions, a row and a column statistic (shape[:-1] and
  shape[:-2] + shape[-1:]) instead of a full exp_avg_sq, plus exp_avg when beta1 is set.
- Schedule-free: AdamW and RAdam keep z and exp_avg_sq, SGD keeps z.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from loracraft.config.schema import TrainConfig
from loracraft.training.optimizer.build import kohya_kwargs
from loracraft.training.optimizer.registry import kind_of

EIGHT_BIT_BLOCK = 256
MIN_8BIT_SIZE = 4096

StateSize = Callable[[torch.Tensor, dict[str, Any]], int]


def _full_states(count: int) -> StateSize:
    """`count` states the size of the weight, in its dtype."""
    return lambda param, _: count * param.numel() * param.element_size()


def _adam(param: torch.Tensor, kwargs: dict[str, Any]) -> int:
    return (3 if kwargs.get("amsgrad") else 2) * param.numel() * param.element_size()


def _eight_bit(count: int) -> StateSize:
    def size(param: torch.Tensor, kwargs: dict[str, Any]) -> int:
        n = param.numel()
        if n < kwargs.get("min_8bit_size", MIN_8BIT_SIZE) or kwargs.get("optim_bits") == 32:
            return count * n * 4
        return count * (n + 4 * math.ceil(n / EIGHT_BIT_BLOCK))

    return size


def _prodigy(param: torch.Tensor, kwargs: dict[str, Any]) -> int:
    element, n = param.element_size(), param.numel()
    sliced = math.ceil(n / kwargs.get("slice_p", 1))
    starts_at_zero = not bool(param.detach().any())
    p0 = element if starts_at_zero and _prodigy_skips_zero_start() else sliced * element
    beta1 = kwargs.get("betas", (0.9, 0.999))[0]
    return sliced * element + p0 + (2 if beta1 > 0 else 1) * n * element


def _prodigy_skips_zero_start() -> bool:
    """prodigyopt 1.1 (which added slice_p) keeps a scalar p0 for a weight that is all zeros."""
    from prodigyopt import Prodigy

    return "slice_p" in inspect.signature(Prodigy).parameters


def _adafactor(param: torch.Tensor, kwargs: dict[str, Any]) -> int:
    shape, element = param.shape, param.element_size()
    first_moment = param.numel() if kwargs.get("beta1") is not None else 0
    if len(shape) >= 2:
        second = math.prod(shape[:-1]) + math.prod((*shape[:-2], shape[-1]))
    else:
        second = param.numel()
    return (first_moment + second) * element + 4  # + the RMS scalar


SIZES: dict[str, StateSize] = {
    "AdamW": _adam,
    "AdamW8bit": _eight_bit(2),
    "PagedAdamW": _full_states(2),
    "PagedAdamW8bit": _eight_bit(2),
    "PagedAdamW32bit": _full_states(2),
    "Lion": _full_states(1),
    "Lion8bit": _eight_bit(1),
    "PagedLion8bit": _eight_bit(1),
    "SGDNesterov": _full_states(1),
    "SGDNesterov8bit": _eight_bit(1),
    "DAdaptation": _full_states(3),
    "DAdaptAdamPreprint": _full_states(3),
    "DAdaptAdaGrad": _full_states(3),
    "DAdaptAdam": _full_states(3),
    "DAdaptAdan": _full_states(5),
    "DAdaptAdanIP": _full_states(5),
    "DAdaptLion": _full_states(2),
    "DAdaptSGD": _full_states(3),
    "Prodigy": _prodigy,
    "AdaFactor": _adafactor,
    "AdamWScheduleFree": _full_states(2),
    "SGDScheduleFree": _full_states(1),
    "RAdamScheduleFree": _full_states(2),
}
# torch.optim classes named directly (`--optimizer_type Adam`): their state per weight.
TORCH_STATES = {"Adam": 2, "NAdam": 2, "RAdam": 2, "Adamax": 2, "Adadelta": 2, "Adagrad": 1, "RMSprop": 1}
GUESSED_STATES = 2


@dataclass(frozen=True)
class OptimizerStateSize:
    bytes: int
    known: bool
    """False for an optimizer this table does not hold: counted as two states per weight, as AdamW."""


def optimizer_state_size(config: TrainConfig, params: Iterable[torch.Tensor]) -> OptimizerStateSize:
    """What the run's optimizer keeps for `params` (the trained weights) once it has stepped."""
    name = config.optimizer_name
    kind = kind_of(name)
    kwargs = {**kohya_kwargs(name, kind, config.optimizer_kwargs, config.full_fp16), **kind.fixed}
    size = SIZES.get(name)
    known = size is not None
    torch_name = name.removeprefix("torch.optim.")
    if size is None and torch_name == "SGD":
        known, size = True, _full_states(1 if kwargs.get("momentum") else 0)
    elif size is None and torch_name in TORCH_STATES:
        known, size = True, _full_states(TORCH_STATES[torch_name])
    elif size is None:
        size = _full_states(GUESSED_STATES)
    return OptimizerStateSize(sum(size(param, kwargs) for param in params), known)
