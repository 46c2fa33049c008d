"""Encoding for a cache, refused when it yields NaN/inf: a cached bad value would poison every epoch."""

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from loracraft.errors import UserError

Label = TypeVar("Label")


def encode_checked(
    encode: Callable[[object], torch.Tensor],
    inputs: object,
    labels: Sequence[Label],
    failure: Callable[[Label], str],
) -> torch.Tensor:
    """`encode(inputs)` without gradients, as float32 on the CPU, one row per label; the first row that is
    not finite raises a UserError with `failure(its label)`."""
    with torch.no_grad():
        encoded = encode(inputs).float().cpu()
    for label, row in zip(labels, encoded, strict=True):
        if not torch.isfinite(row).all():
            raise UserError(failure(label))
    return encoded
