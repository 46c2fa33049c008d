"""The run's accelerate `Accelerator`: device, precision context, gradient accumulation; one process only."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from loracraft.errors import UserError


def make_accelerator(mixed_precision: str, gradient_accumulation_steps: int) -> Accelerator:
    """A fresh Accelerator for one training run; more than one process is refused with a UserError."""
    on_gpu = torch.cuda.is_available()
    if mixed_precision == "fp16" and not on_gpu:
        raise UserError(
            "--mixed_precision fp16 needs a CUDA GPU; on this machine use --mixed_precision bf16 or no"
        )
    _forget_previous_run()
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        cpu=not on_gpu,
    )
    if accelerator.num_processes > 1:
        raise UserError(
            f"this run was started as {accelerator.num_processes} processes (accelerate launch); loracraft "
            "trains with one process for now: run `loracraft train` without `accelerate launch`, or with "
            "--num_processes 1 (multi-GPU training comes with the data loader that splits the batches)"
        )
    return accelerator


def _forget_previous_run() -> None:
    # accelerate keeps one process-wide state (precision, accumulation, the active data loader) and
    # refuses a second Accelerator with another precision. One process may run several trainings (the
    # demo, the tests), each with its own settings, and accelerate has no public way to start over: its
    # own tests and transformers' TrainingArguments call these private resets too. This is the one place
    # loracraft does.
    AcceleratorState._reset_state()
    GradientState._reset_state()
