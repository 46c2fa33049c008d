"""What A1111, ComfyUI and Forge add to a module's weight (and bias) from one module's file tensors, at
strength 1: the formulas of reference/lora-format.md §2, per consumer where they differ.

Written from the reference text and from reading the consumers' code (no code copied): A1111 1.10
`extensions-builtin/Lora/network*.py` (`finalize_updown`, `apply_weight_decompose`, `network_lokr`,
`network_hada`, `network_ia3`, `network_glora`, `network_oft`, `network_full`), ComfyUI
`comfy/weight_adapter/{base,lora,loha,lokr,glora,oft,boft}.py` and `comfy/lora.py` (newest, and the
2024 copies Forge took). The training side (LyCORIS' modules) is never called here: this is the
independent oracle the numeric tests compare the trained delta against.

API:
    change = delta(parts, weight, consumer)   # parts: {"lora_up.weight": tensor, "alpha": ..., ...}
    change.weight                             # what the consumer adds to `weight` (float64)
    change.bias                               # what it adds to the bias, or None
    delta_weight(parts, weight, consumer)     # change.weight
A consumer whose code fails on a module (A1111 logs the error and leaves the layer unpatched) raises
NotApplied. Rules: "a1111"; "comfyui" (newest ComfyUI; Forge's backend/patcher/lora.py has the same DoRA
rule, so "forge" is an alias); "comfyui-2024" (older ComfyUI and Forge's 2024 copy: DoRA always per
input column, as A1111).
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

RULES = ("a1111", "comfyui", "forge", "comfyui-2024")
# The consumers' weights are fp16/fp32: ComfyUI's DoRA eps is float32's (torch.finfo(weight.dtype).eps).
COMFYUI_EPS = torch.finfo(torch.float32).eps
# A1111 and ComfyUI add 1e-8 to the norm of OFT's skew matrix.
OFT_EPS = 1e-8


class NotApplied(Exception):
    """The consumer's code fails on this module: it skips the module (A1111 counts an error)."""


@dataclass(frozen=True)
class Delta:
    weight: Tensor
    bias: Tensor | None = None


def delta(parts: Mapping[str, Tensor], weight: Tensor, consumer: str = "comfyui") -> Delta:
    """The change `consumer` makes to a module of weight `weight` from the module's file `parts`."""
    if consumer not in RULES:
        raise ValueError(f"unknown consumer rule {consumer!r}; expected one of {', '.join(RULES)}")
    parts = {name: tensor.to(torch.float64) for name, tensor in parts.items()}
    weight = weight.detach().to(torch.float64)
    for marker, formula in _FORMULAS:
        if marker in parts:
            return formula(parts, weight, consumer)
    raise ValueError(f"no algorithm of lora-format.md §2 has the parts {sorted(parts)}")


def delta_weight(parts: Mapping[str, Tensor], weight: Tensor, consumer: str = "comfyui") -> Tensor:
    return delta(parts, weight, consumer).weight


def _scale(parts: Mapping[str, Tensor], rank: int | None) -> float:
    """alpha / rank when the file has an alpha (and the algorithm a rank), else 1."""
    if "alpha" not in parts or rank is None:
        return 1.0
    return parts["alpha"].item() / rank


def _lora(parts: dict[str, Tensor], weight: Tensor, consumer: str) -> Delta:
    """LoRA / LoCon: up @ down (through lora_mid for Tucker), times alpha / rank of lora_down."""
    up, down = parts["lora_up.weight"], parts["lora_down.weight"]
    if "lora_mid.weight" in parts:
        # mid [r, r, kh, kw] sits between down [r, in, 1, 1] and up [out, r, 1, 1].
        change = torch.einsum(
            "m n ..., o m, n i -> o i ...", parts["lora_mid.weight"], up.flatten(1), down.flatten(1)
        )
    else:
        change = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    change = change * _scale(parts, down.shape[0])
    return _with_dora(parts, weight, change, consumer)


def _loha(parts: dict[str, Tensor], weight: Tensor, consumer: str) -> Delta:
    """LoHa: (w1a @ w1b) ⊙ (w2a @ w2b), times alpha / rank of hada_w1_b; with Tucker each half is
    t ×₁ a ×₂ b (a [r, out], b [r, in])."""

    def half(index: int) -> Tensor:
        a, b = parts[f"hada_w{index}_a"], parts[f"hada_w{index}_b"]
        if f"hada_t{index}" in parts:
            return torch.einsum("i j ..., j r, i p -> p r ...", parts[f"hada_t{index}"], b, a)
        return a @ b

    change = (half(1) * half(2)).reshape(weight.shape) * _scale(parts, parts["hada_w1_b"].shape[0])
    return _with_dora(parts, weight, change, consumer)


def _lokr(parts: dict[str, Tensor], weight: Tensor, consumer: str) -> Delta:
    """LoKr: kron(w1, w2), each factor whole or a @ b (w2 through lokr_t2 for Tucker); the rank that
    alpha divides is w2_b's, else w1_b's; both factors whole: scale 1 (alpha ignored)."""
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
        w2 = (
            torch.einsum("i j ..., j r, i p -> p r ...", parts["lokr_t2"], b, a)
            if "lokr_t2" in parts
            else a @ b
        )
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    # contiguous() as A1111 and LyCORIS do: torch.kron refuses the strided Tucker rebuild (torch 2.13 CPU),
    # which ComfyUI passes as it is.
    change = torch.kron(w1, w2.contiguous()).reshape(weight.shape) * _scale(parts, rank)
    return _with_dora(parts, weight, change, consumer)


def _ia3(parts: dict[str, Tensor], weight: Tensor, consumer: str) -> Delta:
    """(IA)³: W ⊙ w along the output (or input) axis. Only A1111 has it; it reshapes an output-axis w
    to a column [n, 1] and multiplies with broadcasting, which fits a Linear's [out, in] weight only."""
    if consumer != "a1111":
        raise NotApplied(f"{consumer} has no (IA)³")
    scales = parts["weight"] if parts["on_input"].item() else parts["weight"].reshape(-1, 1)
    try:
        change = weight * scales
    except RuntimeError as err:
        raise NotApplied(f"A1111's (IA)³ fails: {err}") from None
    if change.shape != weight.shape:  # broadcast into another shape: adding it to the weight fails
        raise NotApplied(
            f"A1111's (IA)³ makes a {tuple(change.shape)} change for a {tuple(weight.shape)} weight"
        )
    return Delta(change)


def _glora(parts: dict[str, Tensor], weight: Tensor, consumer: str) -> Delta:
    """GLoRA: W·A + B. ComfyUI tells LyCORIS' layout (a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in])
    from the old one by the shapes and scales by alpha / rank; A1111 knows only the old layout
    (b2 @ b1 + W @ a2 @ a1, unflattened) and no scale."""
    a1, a2, b1, b2 = (parts[f"{name}.weight"] for name in ("a1", "a2", "b1", "b2"))
    if consumer == "a1111":
        try:
            change = b2 @ b1 + (weight @ a2) @ a1
        except RuntimeError as err:
            raise NotApplied(f"A1111's GLoRA fails: {err}") from None
        if change.numel() != weight.numel():
            raise NotApplied(f"A1111's GLoRA makes a {tuple(change.shape)} change for {tuple(weight.shape)}")
        return Delta(change.reshape(weight.shape))
    a1, a2, b1, b2 = (tensor.flatten(1) for tensor in (a1, a2, b1, b2))
    old_layout = b2.shape[1] == b1.shape[0] == a1.shape[0] == a2.shape[1]
    new_layout = b2.shape[0] == b1.shape[1] == a1.shape[1] == a2.shape[0]
    if new_layout and not (old_layout and a2.shape[0] == weight.shape[0] == weight.shape[1]):
        through_a = torch.einsum("o i ..., i j -> o j ...", weight, a1)
        change = torch.einsum("o i ..., i j -> o j ...", through_a, a2) + (b1 @ b2).reshape(weight.shape)
        rank = a2.shape[0]
    else:
        change = (b2 @ b1 + weight.flatten(1) @ a2 @ a1).reshape(weight.shape)
        rank = a1.shape[0]
    return _with_dora(parts, weight, change * _scale(parts, rank), consumer)


def _oft(parts: dict[str, Tensor], weight: Tensor, consumer: str) -> Delta:
    """Diag-OFT (oft_blocks [blocks, b, b]) and BOFT ([m, blocks, b, b]): the output rows of W turned
    by the Cayley transform R = (I + Q)(I - Q)⁻¹ of Q = blocks - blocksᵀ, with Q's norm capped at the
    constraint. The constraint is the file's alpha in ComfyUI, alpha × out in A1111 (as LyCORIS trains
    it); `rescale` multiplies the rows after (A1111, ComfyUI's BOFT; ComfyUI's Diag-OFT ignores it)."""
    if consumer == "forge":
        raise NotApplied("Forge has no OFT")
    blocks = parts["oft_blocks"]
    alpha = parts["alpha"].item() if "alpha" in parts else 0.0
    constraint = alpha * weight.shape[0] if consumer == "a1111" else alpha
    rotation = _cayley(blocks - blocks.transpose(-1, -2), constraint, consumer)
    if blocks.dim() == 3:
        turned = _turn_blocks(rotation, weight)
        rescaled = consumer == "a1111"
    else:
        turned = _butterfly(rotation, weight)
        rescaled = True
    if rescaled and "rescale" in parts:
        turned = turned * parts["rescale"].reshape(-1, *[1] * (weight.dim() - 1))
    return Delta(turned - weight)


def _cayley(skew: Tensor, constraint: float, consumer: str) -> Tensor:
    norm = torch.linalg.vector_norm(skew)
    if consumer == "a1111":
        if constraint != 0:
            skew = skew * ((torch.clamp(norm, max=constraint) + OFT_EPS) / (norm + OFT_EPS))
    elif constraint > 0 and norm + OFT_EPS > constraint:
        skew = skew * constraint / (norm + OFT_EPS)
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype)
    return (eye + skew) @ torch.linalg.inv(eye - skew)


def _turn_blocks(rotation: Tensor, weight: Tensor) -> Tensor:
    """Row block k of W becomes R_kᵀ applied to it: W'[k·b + m] = Σ_n R_k[n, m] W[k·b + n]."""
    count, size, _ = rotation.shape
    rows = weight.reshape(count, size, *weight.shape[1:])
    return torch.einsum("k n m, k n ... -> k m ...", rotation, rows).reshape(weight.shape)


def _butterfly(rotation: Tensor, weight: Tensor) -> Tensor:
    """BOFT: m butterfly stages; stage i pairs rows 2**i · b/2 apart before the blockwise R[i]."""
    stages, _, size, _ = rotation.shape
    rows = weight
    for stage in range(stages):
        stride = 2**stage * (size // 2)
        rows = rows.unflatten(0, (-1, 2, stride)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, size))
        rows = torch.einsum("b i j, b j ... -> b i ...", rotation[stage], rows)
        rows = rows.flatten(0, 1).unflatten(0, (-1, stride, 2)).transpose(1, 2).flatten(0, 2)
    return rows


def _full(parts: dict[str, Tensor], weight: Tensor, consumer: str) -> Delta:
    """Full: `diff` added to the weight, `diff_b` to the bias."""
    return Delta(parts["diff"].reshape(weight.shape), parts.get("diff_b"))


def _with_dora(parts: dict[str, Tensor], weight: Tensor, change: Tensor, consumer: str) -> Delta:
    """DoRA (lora-format.md §2.1): W' = (W + ΔW) · dora_scale / ‖·‖. A1111 and the 2024 ComfyUI/Forge
    take the norm of W + ΔW per input column for any dora_scale shape (broadcasting an [out, 1] one into
    a wrong result); the newest ComfyUI/Forge take an [out, 1] one per output row of the unpatched W."""
    if "dora_scale" not in parts:
        return Delta(change)
    magnitude = parts["dora_scale"]
    patched = weight + change
    if consumer in ("comfyui", "forge") and magnitude.shape[0] == weight.shape[0]:
        norm = _row_norm(weight) + COMFYUI_EPS
    else:
        norm = _column_norm(patched) + (COMFYUI_EPS if consumer in ("comfyui", "forge") else 0.0)
    return Delta(patched * (magnitude / norm) - weight)


def _row_norm(weight: Tensor) -> Tensor:
    return weight.flatten(1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))


def _column_norm(weight: Tensor) -> Tensor:
    columns = weight.transpose(0, 1).flatten(1).norm(dim=1)
    return columns.reshape(1, -1, *[1] * (weight.dim() - 2))


# The part that identifies each algorithm, in the order the consumers try them.
_FORMULAS = (
    ("lora_up.weight", _lora),
    ("hada_w1_a", _loha),
    ("lokr_w1", _lokr),
    ("lokr_w1_a", _lokr),
    ("lokr_w2", _lokr),
    ("lokr_w2_a", _lokr),
    ("on_input", _ia3),
    ("a1.weight", _glora),
    ("oft_blocks", _oft),
    ("diff", _full),
)
