"""The run's accelerate `Accelerator`: device, precision context, gradient accumulation, torch.compile;
one process only."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DynamoBackend

from loracraft.errors import UserError


def make_accelerator(
    mixed_precision: str,
    gradient_accumulation_steps: int,
    *,
    dynamo_backend: str = "no",
    full_fp16: bool = False,
) -> Accelerator:
    """A fresh Accelerator for one training run; more than one process is refused with a UserError.

    `dynamo_backend` is the torch.compile backend accelerate compiles the prepared model with ("no":
    none; kohya passes "NO" unless --torch_compile, so an `accelerate config` default never compiles).
    `full_fp16`: the loss scaler unscales fp16 gradients (the LoRA weights are fp16 themselves)."""
    on_gpu = torch.cuda.is_available()
    if mixed_precision == "fp16" and not on_gpu:
        raise UserError(
            "--mixed_precision fp16 needs a CUDA GPU; on this machine use --mixed_precision bf16 or no"
        )
    check_dynamo_backend(dynamo_backend)
    _forget_previous_run()
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        cpu=not on_gpu,
        dynamo_backend=_KOHYA_SPELLINGS.get(dynamo_backend, dynamo_backend).upper(),
    )
    if accelerator.num_processes > 1:
        raise UserError(
            f"this run was started as {accelerator.num_processes} processes (accelerate launch); loracraft "
            "trains with one process for now: run `loracraft train` without `accelerate launch`, or with "
            "--num_processes 1 (multi-GPU training comes with the data loader that splits the batches)"
        )
    if full_fp16 and accelerator.scaler is not None:
        _unscale_fp16_gradients(accelerator.scaler)
    return accelerator


# kohya's choice "tensort" is its spelling of TensorRT's backend.
_KOHYA_SPELLINGS = {"tensort": "tensorrt"}


def check_dynamo_backend(backend: str) -> None:
    """A --dynamo_backend this PyTorch and accelerate cannot compile with is one line, not a traceback."""
    if backend == "no":
        return
    name = _KOHYA_SPELLINGS.get(backend, backend)
    available = torch.compiler.list_backends(exclude_tags=())
    if name not in available or name.upper() not in DynamoBackend.__members__:
        usable = sorted(b for b in available if b.upper() in DynamoBackend.__members__)
        raise UserError(
            f"--dynamo_backend {backend} is not available with this PyTorch and accelerate; use one of "
            f"{', '.join(usable)}, or drop --torch_compile"
        )


def release_cached_memory(device: torch.device) -> None:
    """Give the GPU memory PyTorch keeps cached for reuse back to the driver (kohya's memory cleaning);
    the CPU keeps no such cache."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _unscale_fp16_gradients(scaler: torch.amp.GradScaler) -> None:
    # The scaler refuses to unscale fp16 gradients ("Attempting to unscale FP16 gradients"): it expects
    # fp32 master weights. With --full_fp16 the LoRA weights are fp16 themselves, so kohya lets it
    # (train_util.patch_accelerator_for_fp16_training); the instance's method is the only way in.
    unscale = scaler._unscale_grads_

    def unscale_allowing_fp16(optimizer, inv_scale, found_inf, allow_fp16):
        return unscale(optimizer, inv_scale, found_inf, True)

    scaler._unscale_grads_ = unscale_allowing_fp16


def _forget_previous_run() -> None:
    # accelerate keeps one process-wide state (precision, accumulation, the active data loader) and
    # refuses a second Accelerator with another precision. One process may run several trainings (the
    # demo, the tests), each with its own settings, and accelerate has no public way to start over: its
    # own tests and transformers' TrainingArguments call these private resets too. This is the one place
    # loracraft does.
    AcceleratorState._reset_state()
    GradientState._reset_state()
