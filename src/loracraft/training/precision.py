"""Which dtype each part of a run uses, and float8 storage of the frozen base.

kohya's rules (train_network.py, `prepare_dtype` and the fp8 block):

- `--mixed_precision` fp16/bf16 is the compute dtype: the frozen U-Net and text encoder are cast to it and
  run under autocast; `no` keeps everything float32.
- The LoRA weights stay float32 unless `--full_fp16` / `--full_bf16` casts them (and their gradients) to
  the compute dtype.
- `--fp8_base` stores the frozen U-Net and text encoder in float8 (e4m3); `--fp8_base_unet` only the
  U-Net, the text encoder keeps the compute dtype. kohya casts whole models and relies on CUDA autocast
  to upcast each weight when it is used. Here the Linear and Conv2d weights (nearly all of a model's
  bytes) are stored in float8 and each layer upcasts its own weight when it runs, forward and backward,
  so it works on any device that can convert float8 (the CPU too) and keeps no upcast copy alive
  between the forward and the backward pass. Norms, embeddings and biases keep the compute dtype:
  kohya keeps the text encoder's embeddings so too, since `nn.Embedding` cannot look up float8.
- The VAE runs in the compute dtype, or float32 with `--no_half_vae`; SDXL's VAE (which overflows in
  fp16) runs in float32 under fp16 without the flag, and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.models.bundle import ModelBundle

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FLOAT8 = getattr(torch, "float8_e4m3fn", None)


@dataclass(frozen=True)
class Precision:
    """The dtypes of one run (from `run_precision`)."""

    compute: torch.dtype
    """The frozen models' dtype under autocast (`--mixed_precision`)."""
    unet_storage: torch.dtype
    """How the U-Net's Linear and Conv2d weights are stored: float8 with fp8_base, else `compute`."""
    text_encoder_storage: torch.dtype
    adapters: torch.dtype
    """The LoRA weights and their gradients: float32 unless full_fp16/full_bf16."""
    vae: torch.dtype


def run_precision(
    mixed_precision: str,
    *,
    full_fp16: bool = False,
    full_bf16: bool = False,
    fp8_base: bool = False,
    fp8_base_unet: bool = False,
    no_half_vae: bool = False,
) -> Precision:
    """kohya's dtype decisions for these flags (the config has already refused invalid combinations)."""
    compute = WEIGHT_DTYPES[mixed_precision]
    unet_fp8 = fp8_base or fp8_base_unet
    text_encoder_fp8 = fp8_base and not fp8_base_unet
    return Precision(
        compute=compute,
        unet_storage=FLOAT8 if unet_fp8 else compute,
        text_encoder_storage=FLOAT8 if text_encoder_fp8 else compute,
        adapters=compute if full_fp16 or full_bf16 else torch.float32,
        vae=torch.float32 if no_half_vae else compute,
    )


def config_precision(config: TrainConfig, bundle: ModelBundle | None = None) -> Precision:
    """`run_precision` for a run's settings and base model: SDXL's VAE runs in float32 under fp16."""
    return run_precision(
        config.mixed_precision,
        full_fp16=config.full_fp16,
        full_bf16=config.full_bf16,
        fp8_base=config.fp8_base,
        fp8_base_unet=config.fp8_base_unet,
        no_half_vae=config.no_half_vae or (config.mixed_precision == "fp16" and fp16_vae_overflows(bundle)),
    )


def fp16_vae_overflows(bundle: ModelBundle | None) -> bool:
    """SDXL's VAE gives NaN latents in fp16 (its activations exceed fp16's range); a VAE retrained for
    fp16 says so with `force_upcast: false` in its config (diffusers' convention)."""
    return bundle is not None and bundle.family == "sdxl" and bundle.vae.config.get("force_upcast", True)


def fp16_vae_note(config: TrainConfig, bundle: ModelBundle) -> str | None:
    """Why the VAE runs in float32 without --no_half_vae, when it does."""
    if config.no_half_vae or config.mixed_precision != "fp16" or not fp16_vae_overflows(bundle):
        return None
    return (
        "VAE in float32: SDXL's VAE overflows in fp16 (NaN latents), so it does not run in --mixed_precision "
        "fp16 (as with --no_half_vae); a VAE made for fp16 (force_upcast false in its config) would"
    )


def describe_precision(precision: Precision, text_encoder_runs: bool) -> str:
    """One console line: the dtype of each part of the run."""

    def stored(storage: torch.dtype) -> str:
        if storage == precision.compute:
            return _name(storage)
        return f"{_name(storage)} (computes in {_name(precision.compute)})"

    parts = [f"U-Net {stored(precision.unet_storage)}"]
    if text_encoder_runs:
        parts.append(f"text encoder {stored(precision.text_encoder_storage)}")
    parts += [f"LoRA {_name(precision.adapters)}", f"VAE {_name(precision.vae)}"]
    return "precision: " + ", ".join(parts)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cast_frozen_model(model: nn.Module, compute: torch.dtype, storage: torch.dtype) -> None:
    """A frozen base model in its run dtype: `compute`, with Linear/Conv2d weights in float8 when
    `storage` says so."""
    # torch's own `to`: diffusers' override warns about fp32-only modules on every dtype cast, even
    # when a model has none (SD's U-Net), which would put a false alarm in every run's output.
    torch.nn.Module.to(model, dtype=compute)
    if storage == FLOAT8:
        store_in_float8(model, compute)


def check_float8(device: torch.device) -> None:
    """Refuse --fp8_base on a PyTorch or a device that cannot convert float8 (before anything is loaded)."""
    flags = "--fp8_base / --fp8_base_unet"
    if FLOAT8 is None:
        raise UserError(
            f"{flags}: this PyTorch has no float8 type; drop the flag or install PyTorch 2.1 or newer"
        )
    try:
        torch.ones(1, device=device).to(FLOAT8).to(torch.float32)
    except (RuntimeError, TypeError) as err:
        raise UserError(
            f"{flags}: {device.type} cannot hold float8 weights ({str(err).splitlines()[0][:120]}); drop the "
            "flag, or train on a CUDA GPU or the CPU"
        ) from err


def store_in_float8(model: nn.Module, compute: torch.dtype) -> int:
    """Store `model`'s Linear and Conv2d weights in float8; each layer upcasts to `compute` as it runs.

    Call before the LoRA is applied: the adapters then wrap these forwards. Returns the layers stored."""
    stored = 0
    for module in model.modules():
        forward = _float8_forward(module)
        if forward is None:
            continue
        module.weight = nn.Parameter(module.weight.detach().to(FLOAT8), requires_grad=False)
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach().to(compute), requires_grad=False)
        module.forward = partial(forward, module, compute)
        stored += 1
    return stored


def _float8_forward(module: nn.Module) -> Callable[..., torch.Tensor] | None:
    if type(module) is nn.Linear:
        return _linear_forward
    # Conv2d's input gradient below assumes zero padding given as numbers (SD's convolutions).
    if type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return _conv2d_forward
    return None


def _linear_forward(module: nn.Linear, compute: torch.dtype, x: torch.Tensor) -> torch.Tensor:
    return _UpcastLinear.apply(x, module.weight, module.bias, compute)


def _conv2d_forward(module: nn.Conv2d, compute: torch.dtype, x: torch.Tensor) -> torch.Tensor:
    geometry = (module.stride, module.padding, module.dilation, module.groups)
    return _UpcastConv2d.apply(x, module.weight, module.bias, compute, geometry)


class _UpcastLinear(torch.autograd.Function):
    """A frozen Linear with a float8 weight: upcast in the forward, again in the backward (only the input
    has a gradient), so the upcast copy lives for one matmul instead of until the backward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, compute):
        ctx.save_for_backward(weight)
        ctx.compute, ctx.input_dtype = compute, x.dtype
        bias = None if bias is None else bias.to(compute)
        return F.linear(x.to(compute), weight.to(compute), bias)

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = (grad_output.to(ctx.compute) @ weight.to(ctx.compute)).to(ctx.input_dtype)
        return grad_input, None, None, None


class _UpcastConv2d(torch.autograd.Function):
    """`_UpcastLinear` for a Conv2d (zero padding)."""

    @staticmethod
    def forward(ctx, x, weight, bias, compute, geometry):
        ctx.save_for_backward(weight)
        ctx.compute, ctx.input_dtype, ctx.input_shape, ctx.geometry = compute, x.dtype, x.shape, geometry
        bias = None if bias is None else bias.to(compute)
        return F.conv2d(x.to(compute), weight.to(compute), bias, *geometry)

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.nn.grad.conv2d_input(
                ctx.input_shape, weight.to(ctx.compute), grad_output.to(ctx.compute), *ctx.geometry
            ).to(ctx.input_dtype)
        return grad_input, None, None, None, None
