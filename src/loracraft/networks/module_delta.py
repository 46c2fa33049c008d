"""The change one module of a LoRA or LyCORIS file makes to its layer's weight (and bias) at strength 1:
what merging it into a checkpoint adds, and what a merge of several LoRAs sums.

The change is the one the file was trained to make, which is what AUTOMATIC1111 and ComfyUI apply
(reference/lora-format.md §2; tests/consumer_math.py is the independent oracle):
- LoRA/LoCon/DyLoRA: (alpha / rank) up @ down, through `lora_mid` for a Tucker convolution;
- LoHa: (alpha / rank) (w1a @ w1b) ⊙ (w2a @ w2b), each half through its Tucker core when it has one;
- LoKr: kron(w1, w2), each factor whole or low-rank (w2 through its Tucker core), times alpha over the
  rank of the low-rank factor (w2's, else w1's), 1 when both are whole;
- DoRA (any of those with `dora_scale`): W' = (W + ΔW) · dora_scale / ‖W + ΔW‖, the norm per input column
  for a [1, in] magnitude (loracraft's layout, which every consumer reads alike) and per output row for
  LyCORIS' default [out, 1] one, as LyCORIS trained each;
- IA3: W scaled by (1 + w) along the output rows (or the input columns with `on_input`);
- GLoRA: (alpha / rank) (W a1 a2 + b1 b2) in LyCORIS' layout;
- Diag-OFT, BOFT: W's output rows turned by the Cayley rotations of `oft_blocks`, Q's norm capped at
  alpha × out as LyCORIS trains it (ComfyUI caps at alpha alone), then scaled by `rescale`;
- kohya's OFT (`oft_unet_` names): its own rotation (networks/kohya_oft.py);
- full: `diff` (and `diff_b` for the bias); LyCORIS' norm adapters: `w_norm` (and `b_norm`).
A missing or zero alpha means alpha = rank, as kohya's and LyCORIS' modules read it.

LoRA/LoCon and LoHa use LyCORIS' own functional formulas (`lycoris.functional`, the same in LyCORIS 3.1
and 4); LoKr's scale, IA3, GLoRA, DoRA's axis and the OFT types are written here because LyCORIS'
functional versions differ between releases there (LoKr's Tucker rank, BOFT's axis, Diag-OFT's rescale
in 3.1). Everything is computed in float32 on the weight's device.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping

import torch
from lycoris.functional import locon, loha
from lycoris.functional.diag_oft import get_r
from lycoris.functional.general import rebuild_tucker
from lycoris.functional.lokr import make_kron
from torch import Tensor

from loracraft.networks.kohya_oft import oft_rotation, rotate_weight
from loracraft.networks.lora_input import TYPE_NAMES, module_type

Parts = Mapping[str, Tensor]

WEIGHT_FREE_TYPES = frozenset({"lora", "loha", "lokr", "full", "norm"})
"""Types whose change is a function of their own parts alone (unless they carry DoRA's magnitude)."""


class PartsDoNotFit(ValueError):
    """The module's parts do not fit the weight they are given (a LoRA made for another model)."""


def weight_free(parts: Parts, name: str = "") -> bool:
    """Whether `module_delta` can compute this module's change without the layer's weight."""
    return module_type(name, parts) in WEIGHT_FREE_TYPES and "dora_scale" not in parts


def module_delta(parts: Parts, weight: Tensor | None, name: str = "") -> Tensor:
    """The change (float32) the module's file `parts` make to its layer's `weight` at strength 1, shaped
    as `weight`; without a weight (weight-free types only) shaped as the parts give it. `name` is the
    module's kohya name, which tells kohya's OFT from LyCORIS' Diag-OFT."""
    algo = module_type(name, parts)
    if algo is None:
        raise ValueError(f"{name}: parts of no known network type ({', '.join(sorted(parts))})")
    if weight is None and not weight_free(parts, name):
        raise ValueError(f"{name}: a {TYPE_NAMES[algo]} module's change depends on the layer's weight")
    device = weight.device if weight is not None else next(iter(parts.values())).device
    parts32 = {part: tensor.to(device=device, dtype=torch.float32) for part, tensor in parts.items()}
    weight32 = None if weight is None else weight.detach().to(torch.float32)
    try:
        delta = _FORMULAS[algo](parts32, weight32)
        if weight32 is None:
            return delta
        delta = _fitted(delta, weight32)
        if "dora_scale" in parts32:
            delta = _with_dora(parts32["dora_scale"], weight32, delta)
    except PartsDoNotFit as error:
        raise PartsDoNotFit(f"{name}: {error}") from None
    except RuntimeError as error:  # factors that do not multiply with each other or with the weight
        raise PartsDoNotFit(
            f"{name}: its parts do not fit a weight of shape {_shape(weight)} ({error})"
        ) from None
    return delta


def module_bias_delta(parts: Parts) -> Tensor | None:
    """The change (float32) to the layer's bias: full fine-tuning's `diff_b`, a norm adapter's `b_norm`;
    None for every other type."""
    for part in ("diff_b", "b_norm"):
        if part in parts:
            return parts[part].float()
    return None


def _fitted(delta: Tensor, weight: Tensor) -> Tensor:
    """The delta in the weight's shape: consumers reshape a change whose size fits (a 1x1 convolution's
    LoRA stored as matrices, LoHa's flattened convolution factors)."""
    if delta.numel() != weight.numel() or delta.shape[0] != weight.shape[0]:
        raise PartsDoNotFit(
            f"its parts make a change of shape {_shape(delta)}, but the weight is {_shape(weight)}"
        )
    return delta.reshape(weight.shape)


def _shape(tensor: Tensor | None) -> str:
    return "unknown" if tensor is None else str(tuple(tensor.shape))


def _alpha_over(parts: Parts, rank: int) -> float:
    """alpha / rank, with a missing or zero alpha meaning alpha = rank."""
    alpha = float(parts["alpha"].item()) if "alpha" in parts else 0.0
    return (alpha or rank) / rank


@functools.cache
def _plain_torch(formula: Callable) -> dict[str, str]:
    """LyCORIS 4 chooses a backend per call (fused kernels, torch.compile on a GPU), which for one call per
    module costs more than it saves and computes in other precisions: ask for plain torch where the
    release takes the option (3.1 is plain torch)."""
    return {"backend": "torch"} if "backend" in inspect.signature(formula).parameters else {}


def _lora(parts: Parts, weight: Tensor | None) -> Tensor:
    down, up = parts["lora_down.weight"], parts["lora_up.weight"]
    gamma = _alpha_over(parts, down.shape[0])
    return locon.diff_weight(
        down, up, parts.get("lora_mid.weight"), gamma=gamma, **_plain_torch(locon.diff_weight)
    )


def _loha(parts: Parts, weight: Tensor | None) -> Tensor:
    # LyCORIS' functional names: w1d = hada_w1_b (down), w1u = hada_w1_a (up).
    factors = (parts["hada_w1_b"], parts["hada_w1_a"], parts["hada_w2_b"], parts["hada_w2_a"])
    cores = (parts.get("hada_t1"), parts.get("hada_t2"))
    gamma = _alpha_over(parts, parts["hada_w1_b"].shape[0])
    return loha.diff_weight(*factors, *cores, gamma=gamma, **_plain_torch(loha.diff_weight))


def _lokr(parts: Parts, weight: Tensor | None) -> Tensor:
    rank = None
    if "lokr_w1" in parts:
        w1 = parts["lokr_w1"]
    else:
        w1, rank = parts["lokr_w1_a"] @ parts["lokr_w1_b"], parts["lokr_w1_b"].shape[0]
    if "lokr_w2" in parts:
        w2 = parts["lokr_w2"]
    else:
        a, b = parts["lokr_w2_a"], parts["lokr_w2_b"]
        rank = b.shape[0]
        w2 = rebuild_tucker(parts["lokr_t2"], a, b) if "lokr_t2" in parts else a @ b
    return make_kron(w1, w2, 1.0 if rank is None else _alpha_over(parts, rank))


def _ia3(parts: Parts, weight: Tensor) -> Tensor:
    scales = parts["weight"].flatten()
    axis = 1 if parts["on_input"].item() else 0
    shape = [1] * weight.dim()
    shape[axis] = -1
    return weight * scales.reshape(shape)


def _glora(parts: Parts, weight: Tensor) -> Tensor:
    if "bm.weight" in parts:
        raise PartsDoNotFit("GLoRA with a Tucker core (bm.weight), which no LyCORIS release trains")
    a1, a2, b1, b2 = (parts[f"{name}.weight"].flatten(1) for name in ("a1", "a2", "b1", "b2"))
    through_a = torch.einsum("o i ..., i j, j k -> o k ...", weight, a1, a2)
    return (through_a + (b1 @ b2).reshape(weight.shape)) * _alpha_over(parts, a2.shape[0])


def _constraint(parts: Parts, weight: Tensor) -> float:
    """LyCORIS' OFT constraint: the file's alpha times the layer's output width (0: none)."""
    return (float(parts["alpha"].item()) if "alpha" in parts else 0.0) * weight.shape[0]


def _rescaled(parts: Parts, weight: Tensor, turned: Tensor) -> Tensor:
    if "rescale" in parts:
        turned = turned * parts["rescale"].reshape(-1, *[1] * (weight.dim() - 1))
    return turned - weight


def _diag_oft(parts: Parts, weight: Tensor) -> Tensor:
    rotation = get_r(parts["oft_blocks"], constraint=_constraint(parts, weight))
    return _rescaled(parts, weight, rotate_weight(rotation, weight))


def _boft(parts: Parts, weight: Tensor) -> Tensor:
    """LyCORIS 4's butterfly: stage i pairs rows 2**i · b/2 apart, then turns each block by R[i]."""
    rotations = get_r(parts["oft_blocks"], constraint=_constraint(parts, weight))
    stages, _, size, _ = rotations.shape
    rows = weight
    for stage in range(stages):
        stride = 2**stage * (size // 2)
        rows = rows.unflatten(0, (-1, 2, stride)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, size))
        rows = torch.einsum("b i j, b j ... -> b i ...", rotations[stage], rows)
        rows = rows.flatten(0, 1).unflatten(0, (-1, stride, 2)).transpose(1, 2).flatten(0, 2)
    return _rescaled(parts, weight, rows)


def _kohya_oft(parts: Parts, weight: Tensor) -> Tensor:
    rotation = oft_rotation(parts["oft_blocks"], _constraint(parts, weight))
    return rotate_weight(rotation, weight) - weight


def _full(parts: Parts, weight: Tensor | None) -> Tensor:
    return parts["diff"]


def _norm(parts: Parts, weight: Tensor | None) -> Tensor:
    return parts["w_norm"]


def _with_dora(magnitude: Tensor, weight: Tensor, delta: Tensor) -> Tensor:
    """DoRA as LyCORIS trains it: the patched weight's norm per output row for an [out, 1] magnitude,
    per input column for a [1, in] one; float32's eps added to the norm."""
    patched = weight + delta
    if magnitude.shape[0] != 1:
        norm = patched.flatten(1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
    else:
        norm = patched.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *[1] * (weight.dim() - 2))
    return patched * (magnitude / (norm + torch.finfo(torch.float32).eps)) - weight


_FORMULAS: dict[str, Callable[[Parts, Tensor | None], Tensor]] = {
    "lora": _lora,
    "loha": _loha,
    "lokr": _lokr,
    "ia3": _ia3,
    "glora": _glora,
    "diag-oft": _diag_oft,
    "boft": _boft,
    "kohya-oft": _kohya_oft,
    "full": _full,
    "norm": _norm,
}
