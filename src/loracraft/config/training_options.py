"""Run settings: how long it trains, in which precision, from which seed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from loracraft.config.fields import TRAINING, flag


class TrainingOptions(BaseModel):
    """Training length, precision and memory, the seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_train_steps: int = flag(
        1600, TRAINING, "Total optimizer steps (ignored when max_train_epochs is set).", ge=1
    )
    max_train_epochs: int | None = flag(None, TRAINING, "Total epochs; overrides max_train_steps.", ge=1)
    gradient_accumulation_steps: int = flag(
        1,
        TRAINING,
        "Batches whose gradients are summed before one optimizer step.",
        ss_key="ss_gradient_accumulation_steps",
        ge=1,
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = flag(
        "no",
        TRAINING,
        "Compute precision of the frozen model: fp16 (needs a CUDA GPU; loss scaling), bf16 (recent GPUs and "
        "CPUs) or no (fp32).",
        ss_key="ss_mixed_precision",
        gui_default="fp16",
    )
    gradient_checkpointing: bool = flag(
        False,
        TRAINING,
        "Recompute activations in the backward pass: less memory, about 20-30% slower.",
        ss_key="ss_gradient_checkpointing",
    )
    seed: int | None = flag(
        None,
        TRAINING,
        "Random seed; the same seed, data and flags on the CPU give a bit-identical LoRA. Empty: random.",
    )
