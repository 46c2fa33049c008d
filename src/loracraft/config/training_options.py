"""Run settings: how long it trains, in which precision, from which seed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from loracraft.config.fields import TRAINING, flag
from loracraft.config.rules import RuleViolation

# kohya's --dynamo_backend choices, and "no" (what the kohya_ss GUI writes: compile nothing).
DynamoBackend = Literal[
    "no", "eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser", "cudagraphs", "ofi", "fx2trt",
    "onnxrt", "tensort", "ipex", "tvm",
]  # fmt: skip


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
        "CPUs) or no (fp32). The frozen U-Net and text encoder are cast to it and run under autocast, the "
        "VAE encodes in it; the LoRA weights stay float32 (see --full_fp16, --fp8_base, --no_half_vae).",
        ss_key="ss_mixed_precision",
        gui_default="fp16",
    )
    full_fp16: bool = flag(
        False,
        TRAINING,
        "Keep the LoRA weights and their gradients in fp16 too (needs --mixed_precision fp16; the loss "
        "scaler then unscales fp16 gradients). Less memory, less stable. AdamW then runs with fused=True, "
        "which computes in float32: kohya's plain AdamW computes in fp16, which cannot hold its eps, and "
        "gives NaN at the first step.",
        ss_key="ss_full_fp16",
    )
    full_bf16: bool = flag(
        False,
        TRAINING,
        "Keep the LoRA weights and their gradients in bf16 too (needs --mixed_precision bf16). Less memory; "
        "small updates can round away.",
    )
    fp8_base: bool = flag(
        False,
        TRAINING,
        "Store the frozen U-Net and text encoder weights in float8 (e4m3), each layer upcast to the "
        "--mixed_precision dtype as it runs: about half the base model's memory. Needs --mixed_precision "
        "fp16 or bf16 and PyTorch 2.1; works on CUDA GPUs and the CPU.",
        ss_key="ss_fp8_base",
    )
    fp8_base_unet: bool = flag(
        False,
        TRAINING,
        "Like --fp8_base for the U-Net only; the text encoder keeps the --mixed_precision dtype.",
        ss_key="ss_fp8_base_unet",
    )
    no_half_vae: bool = flag(
        False,
        TRAINING,
        "Run the VAE in float32 under --mixed_precision fp16/bf16 (without it the VAE runs in that dtype, as "
        "in kohya). A half-precision VAE that overflows (NaN latents, SDXL's VAE in fp16) is switched to "
        "float32 for the rest of the run, with a notice.",
    )
    gradient_checkpointing: bool = flag(
        False,
        TRAINING,
        "Recompute activations in the backward pass: less memory, about 20-30% slower.",
        ss_key="ss_gradient_checkpointing",
    )
    highvram: bool = flag(
        False,
        TRAINING,
        "Keep the GPU's cached memory between latent-caching batches. Without it the cache is released "
        "after every VAE batch (as kohya does) so a small GPU does not fill up; on the CPU it changes nothing.",
    )
    torch_compile: bool = flag(
        False,
        TRAINING,
        "Compile the U-Net, text encoder and LoRA with torch.compile (through accelerate) using "
        "--dynamo_backend. The first steps are slow while it compiles.",
    )
    dynamo_backend: DynamoBackend = flag(
        "inductor",
        TRAINING,
        "torch.compile backend for --torch_compile: inductor (the default, needs a C++ compiler on the CPU), "
        "eager or aot_eager (no code generation), cudagraphs, ...; no compiles nothing. One this PyTorch "
        "lacks is refused with the list it has.",
        gui_default="no",
    )
    seed: int | None = flag(
        None,
        TRAINING,
        "Random seed; the same seed, data and flags on the CPU give a bit-identical LoRA. Empty: random.",
    )

    @model_validator(mode="after")
    def _precision_rules(self) -> TrainingOptions:
        # kohya's rules (train_network.py): full_fp16 needs fp16, full_bf16 needs bf16, fp8 needs either.
        if self.full_fp16 and self.full_bf16:
            raise RuleViolation(
                "`full_fp16` and `full_bf16` exclude each other; keep the one `mixed_precision` names"
            )
        for full, needs in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
            if getattr(self, full) and self.mixed_precision != needs:
                raise RuleViolation(
                    f"`{full}` needs `mixed_precision` {needs}, got {self.mixed_precision}; add "
                    f"`mixed_precision` {needs} or drop `{full}`"
                )
        fp8 = "fp8_base" if self.fp8_base else "fp8_base_unet" if self.fp8_base_unet else None
        if fp8 and self.mixed_precision == "no":
            raise RuleViolation(
                f"`{fp8}` computes in the `mixed_precision` dtype, so it needs `mixed_precision` bf16 or fp16"
            )
        return self
