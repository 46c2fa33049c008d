"""The run's accelerate `Accelerator`: device, precision context, gradient accumulation, torch.compile,
and with `accelerate launch` the processes (DDP or DeepSpeed, `distributed.py`): what only the main
process says, what each process draws at random."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DynamoBackend, KwargsHandler, set_seed

from loracraft.errors import UserError


def make_accelerator(
    mixed_precision: str,
    gradient_accumulation_steps: int,
    *,
    dynamo_backend: str = "no",
    full_fp16: bool = False,
    kwargs_handlers: Sequence[KwargsHandler] = (),
    deepspeed_plugin: DeepSpeedPlugin | None = None,
) -> Accelerator:
    """A fresh Accelerator for one training run, in as many processes as `accelerate launch` started.

    `dynamo_backend` is the torch.compile backend accelerate compiles the prepared model with ("no":
    none; kohya passes "NO" unless --torch_compile, so an `accelerate config` default never compiles).
    `full_fp16`: the loss scaler unscales fp16 gradients (the LoRA weights are fp16 themselves).
    `kwargs_handlers` and `deepspeed_plugin` (`distributed.py`) apply when there are several processes."""
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
        kwargs_handlers=list(kwargs_handlers),
        deepspeed_plugin=deepspeed_plugin,
    )
    if full_fp16 and accelerator.scaler is not None:
        _unscale_fp16_gradients(accelerator.scaler)
    return accelerator


def main_process_echo(accelerator: Accelerator, echo: Callable[[str], None]) -> Callable[[str], None]:
    """`echo` in the main process; elsewhere nothing, so N processes print the run's notes once."""
    if accelerator.is_main_process:
        return echo
    return lambda line: None


def shows_progress() -> bool:
    """Whether this process draws progress bars: one process per machine does (the first)."""
    return PartialState().is_local_main_process


def seed_step_draws(seed: int, accelerator: Accelerator) -> None:
    """Give each process its own noise and timesteps, so N processes do not add the same noise to their
    different images: process 0 goes on drawing as a one-process run does, process r > 0 draws from
    seed + r (accelerate's device_specific seeding).

    Call it once the LoRA is built: its initial weights come from the seed alone, the same in every
    process (DDP also copies process 0's weights to the others when it wraps the model)."""
    if accelerator.process_index > 0:
        set_seed(seed + accelerator.process_index)


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
