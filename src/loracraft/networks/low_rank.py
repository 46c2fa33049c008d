"""A weight delta as a LoRA's two factors, by truncated SVD: what resize, extract and the exact merge of
two LoRAs share.

kohya's rules, kept so a guide's flags give the same ranks (sd-scripts networks/resize_lora.py and
extract_lora_from_models.py):
- The delta (out, in) or (out, in, kh, kw) is flattened to (out, in*kh*kw) and decomposed in float32,
  U S Vh. The factors are up = U_k S_k and down = Vh_k (the singular values go into up); a convolution's
  up is (out, k, 1, 1) and its down (k, in, kh, kw).
- The rank is the fixed `max_rank`, or a dynamic method's choice capped at it (rank_resize):
  sv_ratio keeps the singular values above S_0 / param, sv_cumulative those whose running sum reaches
  param of the total, sv_fro those whose running sum of squares reaches param^2 of the total. kohya's
  index functions clamp to [1, n-1] and rank_resize adds 1 more, so a dynamic rank is never below 2 and
  keeps one singular value beyond what the target needs; the same here.
- A zero delta (S_0 <= 1e-6, kohya's MIN_SV) gets rank 1.
- extract's clamp: both factors are clipped to [-h, h] where h is the clamp_quantile quantile of their
  entries together, signed as kohya computes it (torch.quantile of the values, not of their magnitudes).

Where we differ: the rank never exceeds the delta's own size min(out, in*kh*kw) (kohya's rank_resize
can ask for more, which its slicing then fails on), and the retained energy is reported for what the
factors actually reproduce, so it is also right after a clamp.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
MIN_SINGULAR_VALUE = 1e-6
"""kohya's MIN_SV: a delta whose largest singular value is at most this is treated as zero."""


@dataclass(frozen=True)
class Factored:
    """A delta's low-rank factors and how much of it they keep."""

    up: Tensor
    """(out, rank), or (out, rank, 1, 1) for a convolution's delta: U_k * S_k."""
    down: Tensor
    """(rank, in), or (rank, in, kh, kw): Vh_k."""
    rank: int
    fro_retained: float
    """sqrt(1 - ||delta - up@down||^2 / ||delta||^2): for a plain truncation kohya's
    ||S_k|| / ||S|| (the kept part's share of the Frobenius norm); 1.0 for a zero delta."""
    sum_retained: float
    """sum(S_k) / sum(S), kohya's "sum(S) retained"; 1.0 for a zero delta."""
    max_ratio: float
    """S_0 / S_{k-1}, kohya's "max(S) ratio" (inf when a kept singular value is 0; 1.0 for a zero delta)."""


def dynamic_rank(singular_values: Tensor, method: str, param: float) -> int:
    """The rank a dynamic method asks for, before any cap: kohya's index_sv_* + 1, in the singular
    values' own dtype as kohya computes it (a target on a boundary then falls the same side)."""
    s = singular_values
    if method == "sv_ratio":
        index = int(torch.sum(s > s[0] / param).item())
    elif method == "sv_cumulative":
        index = int(torch.searchsorted(torch.cumsum(s, 0) / float(s.sum()), param)) + 1
    elif method == "sv_fro":
        squares = s.pow(2)
        index = int(torch.searchsorted(torch.cumsum(squares, 0) / float(squares.sum()), param**2)) + 1
    else:
        raise ValueError(f"unknown dynamic method {method!r}; expected one of {', '.join(DYNAMIC_METHODS)}")
    return max(1, min(index, len(s) - 1)) + 1


def choose_rank(singular_values: Tensor, max_rank: int, method: str | None, param: float | None) -> int:
    """kohya resize_lora.rank_resize's rule: the dynamic method's rank (or `max_rank` without one), capped
    at `max_rank`; 1 for a zero matrix. Never above the number of singular values."""
    if float(singular_values[0]) <= MIN_SINGULAR_VALUE:
        return 1
    if method is None:
        rank = max_rank
    else:
        if param is None:
            raise ValueError(f"the dynamic method {method} needs a parameter")
        rank = min(dynamic_rank(singular_values, method, param), max_rank)
    return max(1, min(rank, len(singular_values)))


def factorize(
    delta: Tensor,
    max_rank: int,
    method: str | None = None,
    param: float | None = None,
    clamp_quantile: float | None = None,
) -> Factored:
    """`delta` (shaped as its weight) as up @ down of the rank `choose_rank` picks, computed in float32 on
    the delta's device; the factors stay there."""
    matrix = delta.float().reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    factored = _truncated(u, s, vh, tuple(delta.shape), choose_rank(s, max_rank, method, param))
    return factored if clamp_quantile is None else _clamped(factored, matrix, clamp_quantile)


def factorize_product(
    up: Tensor, down: Tensor, max_rank: int, method: str | None = None, param: float | None = None
) -> Factored:
    """up @ down (a LoRA's factors as a file stores them, (out, r[, 1, 1]) and (r, in[, kh, kw])) factored
    again, as `factorize(up @ down)` would: the SVD of the product comes from a QR of each factor and the
    SVD of an r x r core, exact and O((out + in) r^2) instead of a full SVD of the out x in product. Only
    the product's r singular values exist (the rest are 0), so the rank never exceeds r."""
    rank = down.shape[0]
    q_up, r_up = torch.linalg.qr(up.float().reshape(up.shape[0], rank))
    q_down, r_down = torch.linalg.qr(down.float().reshape(rank, -1).T)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T, full_matrices=False)
    shape = (up.shape[0], *down.shape[1:])
    return _truncated(q_up @ u, s, vh @ q_down.T, shape, choose_rank(s, max_rank, method, param))


def quantile(values: Tensor, q: float) -> Tensor:
    """torch.quantile's default (linear interpolation) rule, without its limit of 2**24 entries (a large
    convolution's factors pass it)."""
    ordered = values.flatten().sort().values
    position = q * (ordered.numel() - 1)
    low = math.floor(position)
    high = min(low + 1, ordered.numel() - 1)
    return torch.lerp(ordered[low], ordered[high], position - low)


def _truncated(u: Tensor, s: Tensor, vh: Tensor, shape: tuple[int, ...], rank: int) -> Factored:
    """The first `rank` singular triplets as kohya's factors (U_k S_k, Vh_k), shaped for a weight of
    `shape`."""
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    return Factored(
        up=up.reshape(shape[0], rank, *([1] * (len(shape) - 2))),
        down=down.reshape(rank, *shape[1:]),
        rank=rank,
        fro_retained=_fro_share(s, rank),
        sum_retained=_sum_share(s, rank),
        max_ratio=_max_ratio(s, rank),
    )


def _clamped(factored: Factored, matrix: Tensor, q: float) -> Factored:
    """extract's clamp; the Frobenius figure then measures what the clamped factors reproduce."""
    up, down = factored.up.flatten(1), factored.down.flatten(1)
    high = quantile(torch.cat([up.flatten(), down.flatten()]), q)
    up, down = up.clamp(-high, high), down.clamp(-high, high)
    return replace(
        factored,
        up=up.reshape(factored.up.shape),
        down=down.reshape(factored.down.shape),
        fro_retained=_reproduced_share(matrix, up @ down),
    )


def _sum_share(s: Tensor, rank: int) -> float:
    total = float(s.double().sum())
    return float(s[:rank].double().sum()) / total if total > 0.0 else 1.0


def _fro_share(s: Tensor, rank: int) -> float:
    """||S_k|| / ||S||: by Eckart-Young, what a plain truncation to `rank` reproduces."""
    squares = s.double().pow(2)
    total = float(squares.sum())
    return math.sqrt(float(squares[:rank].sum()) / total) if total > 0.0 else 1.0


def _reproduced_share(matrix: Tensor, approximation: Tensor) -> float:
    total = float(matrix.double().pow(2).sum())
    if total == 0.0:
        return 1.0
    error = float((matrix.double() - approximation.double()).pow(2).sum())
    return math.sqrt(max(0.0, 1.0 - error / total))


def _max_ratio(s: Tensor, rank: int) -> float:
    if float(s[0]) == 0.0:
        return 1.0
    last = float(s[rank - 1])
    return float(s[0]) / last if last > 0.0 else math.inf


def is_conv_3x3(down: Tensor) -> bool:
    return down.dim() == 4 and tuple(down.shape[2:]) != (1, 1)


def retention_summary(items: Sequence[tuple[str, Factored]], which: str) -> list[str]:
    """The mean, spread and lowest of the modules' retained Frobenius norms (kohya's closing line)."""
    if not items:
        return []
    kept = [factored.fro_retained for _, factored in items]
    name, lowest = min(items, key=lambda item: item[1].fro_retained)
    return [
        f"Frobenius norm retained by {which}: mean {statistics.fmean(kept):.2%}, std "
        f"{statistics.pstdev(kept):.3f}, lowest {lowest.fro_retained:.2%} ({name})"
    ]
