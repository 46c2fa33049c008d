"""--scale_weight_norms: kohya's max-norm regularisation, applied after every optimizer step.

Each module's weight difference ΔW (what the module adds to the base weight, its scale included) is
measured by its Frobenius norm; a norm above `max_norm` is brought down to `max_norm` by scaling the
module's trained factors. kohya's networks.lora (`apply_max_norm_regularization`): ΔW = up @ down x
alpha/rank (a convolution's parts flattened), norm' = max(norm, max_norm / 2), ratio = min(norm',
max_norm) / norm', and when ratio != 1 both up and down are multiplied by sqrt(ratio). It reports the
number of modules scaled, and the mean and the largest norm after scaling.

Here every type with a max-norm gets that rule, the ratio shared evenly between the trained tensors ΔW is
the product of (n factors: each x ratio^(1/n)), so ΔW is scaled by exactly the ratio:

- LoRA / LoCon (LyCORIS' LoConModule, kohya's LoRA module), with Tucker, a trained scalar or DoRA: kohya's
  formula; Tucker's mid weight is a third factor. LyCORIS' own LoCon max-norm scales a hidden multiplier
  instead, measuring with rank dropout on.
- DyLoRA: kohya's formula on the whole rank, the up/down pair its file holds, at the scale its file gives
  consumers (kohya's networks.dylora has no max-norm: kohya warns and trains without it; lycoris.kohya
  skips DyLoRA's modules).
- LoHa, LoKr: LyCORIS' own measure (`get_weight`, the scale included) and its clamp; the ratio shared by
  every factor, as LyCORIS' LoKr does (its LoHa scales a hidden multiplier, which a resumed run would lose).
- Diag-OFT, BOFT: LyCORIS' rule: the norm of the trained blocks themselves, which are scaled by the ratio.
- IA3, GLoRA, full, kohya's OFT: neither kohya nor LyCORIS has a max-norm for them (kohya warns or skips
  them and trains without it); `effective_max_norm` turns it off for them, with a note, as kohya does.

The norms are measured with dropout off, and nothing waits for the device: the ratio stays a device
tensor, and a module under the limit is multiplied by exactly 1 (unchanged), where kohya and LyCORIS read
every module's norm back to the host. As in networks.lora (unlike lycoris.kohya, which reports 0 for
both when no module was scaled), the mean and the largest norm are always those of every module.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from lycoris.modules import (
    ButterflyOFTModule,
    DiagOFTModule,
    DyLoraModule,
    LoConModule,
    LohaModule,
    LokrModule,
)
from torch import Tensor, nn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from loracraft.networks.lora_network import LoRANetwork
    from loracraft.networks.network_spec import NetworkSpec

# Types neither kohya nor LyCORIS defines a max-norm for.
WITHOUT_MAX_NORM = ("ia3", "glora", "full")
# Trained tensors that are not factors of ΔW: a trained scalar multiplies it (it is in the measured norm),
# DoRA's magnitude and OFT's rescale act on the merged weight.
_NOT_FACTORS = ("scalar", "dora_scale", "rescale")


@dataclass(frozen=True)
class MaxNormStats:
    """What kohya logs of one max-norm pass, as 0-dim tensors on the network's device (read back with
    the losses, so the step does not wait for them)."""

    keys_scaled: Tensor
    """How many modules were scaled down (a float32 count)."""
    average_key_norm: Tensor
    """The mean of every module's norm, after scaling."""
    max_key_norm: Tensor
    """The largest module norm, after scaling."""

    def as_tensor(self) -> Tensor:
        """[keys scaled, average norm, max norm], to read back in one copy."""
        return torch.stack([self.keys_scaled, self.average_key_norm, self.max_key_norm])


def effective_max_norm(spec: NetworkSpec, max_norm: float | None) -> tuple[float, str | None]:
    """The max-norm the run applies (0: none) and a note when --scale_weight_norms is given to a type with
    no max-norm: kohya warns and trains without it, and so does loracraft, so that a kohya_ss preset that
    sets it for every type (the GUI's IA3 presets do) still trains as in kohya."""
    if not max_norm:
        return 0.0, None
    if spec.module == "networks.oft":
        return 0.0, (
            f"--scale_weight_norms {max_norm:g}: kohya's OFT (--network_module networks.oft) has no max-norm, so "
            "it trains without one, as in kohya; --network_module lycoris.kohya --network_args algo=diag-oft "
            "has one"
        )
    if spec.algo in WITHOUT_MAX_NORM:
        return 0.0, (
            f"--scale_weight_norms {max_norm:g}: algo={spec.algo} has no max-norm (LyCORIS leaves its modules "
            "as they are), so it trains without one, as in kohya"
        )
    return max_norm, None


def apply_max_norm(network: LoRANetwork, max_norm: float, device: torch.device) -> MaxNormStats:
    """Scale down every module of `network` whose ΔW norm is above `max_norm`, in place; the numbers
    kohya logs. `device` is where the norms are computed (the training device)."""
    with torch.no_grad():
        measured = [_norm_and_factors(network.adapter(name), device) for name in network.names]
        norms = torch.stack([norm.float() for norm, _ in measured])
        # kohya's rule, for every module at once (a few device operations per step, not per module).
        clamped = norms.clamp(min=max_norm / 2)
        ratios = clamped.clamp(max=max_norm) / clamped
        shares = {
            count: (ratios ** (1 / count)).unbind() for count in {len(factors) for _, factors in measured}
        }
        for index, (_, factors) in enumerate(measured):
            share = shares[len(factors)][index]
            for group in factors:
                for tensor in group:
                    tensor.mul_(share.to(tensor.device))
        after = norms * ratios
        return MaxNormStats((ratios != 1).sum().float(), after.mean(), after.max())


def _norm_and_factors(adapter: nn.Module, device: torch.device) -> tuple[Tensor, list[list[Tensor]]]:
    """The module's ΔW norm and its factors (each a group of tensors scaled together)."""
    if isinstance(adapter, LoConModule):
        mid = adapter.lora_mid.weight if adapter.tucker else None
        delta_norm = _low_rank_norm(adapter.lora_up.weight, adapter.lora_down.weight, mid, device)
        return delta_norm * adapter.scale * _trained_scalar(adapter, device), _factors(adapter)
    if isinstance(adapter, DyLoraModule):
        ups, downs = list(adapter.up_list), list(adapter.down_list)
        delta_norm = _low_rank_norm(torch.cat(ups, dim=1), torch.cat(downs), None, device)
        # LyCORIS scales DyLoRA's whole rank by alpha / blocks (what its file's alpha gives consumers).
        return delta_norm * (adapter.alpha.to(device) / adapter.block_count), [ups, downs]
    if isinstance(adapter, (LohaModule, LokrModule)):
        with _dropout_off(adapter):
            delta = adapter.get_weight(adapter.shape).to(device)
        return delta.norm() * _trained_scalar(adapter, device), _factors(adapter)
    if isinstance(adapter, (DiagOFTModule, ButterflyOFTModule)):
        return adapter.oft_blocks.to(device).norm(), [[adapter.oft_blocks]]
    raise TypeError(
        f"{type(adapter).__name__} has no max-norm (effective_max_norm turns it off for its type)"
    )


def _trained_scalar(adapter: nn.Module, device: torch.device) -> Tensor | float:
    """LyCORIS' use_scalar multiplier of ΔW; without it a constant 1 (only LyCORIS' own max-norm moves it)."""
    scalar = adapter.scalar
    return scalar.abs().to(device) if isinstance(scalar, nn.Parameter) else 1.0


def _factors(adapter: nn.Module) -> list[list[Tensor]]:
    return [[tensor] for name, tensor in adapter.named_parameters() if name not in _NOT_FACTORS]


def _low_rank_norm(up: Tensor, down: Tensor, mid: Tensor | None, device: torch.device) -> Tensor:
    """||up @ down||_F (a convolution's parts flattened; with Tucker's mid, up . mid . down), in float32.

    Without mid it is sqrt(sum((up^T up) * (down down^T))): rank x rank products instead of the full
    out x in matrix kohya builds for every module at every step."""
    up, down = up.to(device).flatten(1).float(), down.to(device).flatten(1).float()
    if mid is not None:
        return torch.einsum("oa,abhw,bi->oihw", up, mid.to(device).float(), down).norm()
    return ((up.T @ up) * (down @ down.T)).sum().clamp(min=0).sqrt()


@contextmanager
def _dropout_off(adapter: nn.Module) -> Iterator[None]:
    """LyCORIS' weight rebuilds drop random ranks in training mode: measure the whole module."""
    training = adapter.training
    adapter.train(False)
    try:
        yield
    finally:
        adapter.train(training)
