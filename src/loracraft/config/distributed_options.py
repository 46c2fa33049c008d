"""Run settings: several processes (`accelerate launch`): DDP's options and DeepSpeed ZeRO.

They change nothing in a run of one process. kohya's names and defaults (library/train_util.py's DDP
flags, library/deepspeed_utils.py); `training/distributed.py` turns them into accelerate's objects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from loracraft.config.fields import TRAINING, flag

OffloadDevice = Literal["cpu", "nvme"]


class DistributedOptions(BaseModel):
    """How the processes of a multi-GPU run talk to each other and share the optimizer's memory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ddp_timeout: int | None = flag(
        None,
        TRAINING,
        "Minutes a process waits for the others (empty: accelerate's default, 10 minutes with NCCL, 30 "
        "with gloo). Raise it when filling the latent caches of a large dataset takes longer: the "
        "processes wait for each other at the end of it.",
        ge=1,
    )
    ddp_gradient_as_bucket_view: bool = flag(
        False,
        TRAINING,
        "DDP's gradient_as_bucket_view: the gradients are views into DDP's communication buckets, which "
        "saves one copy of the trained weights' gradients.",
    )
    ddp_static_graph: bool = flag(
        False,
        TRAINING,
        "DDP's static_graph: the same parameters get gradients at every step, so DDP finds the unused ones "
        "once instead of at every step. Not with --stop_text_encoder_training, which stops some mid-run.",
    )
    deepspeed: bool = flag(
        False,
        TRAINING,
        "Train through DeepSpeed ZeRO (with `accelerate launch`; needs the deepspeed package): the "
        "optimizer's state (stage 1) and the gradients (stage 2) are split across the processes.",
    )
    zero_stage: Literal[0, 1, 2, 3] = flag(
        2,
        TRAINING,
        "DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (optimizer state split), 2 (and gradients). "
        "Stage 3 (and the weights) is refused: the LoRA file would need its weights gathered from every "
        "process first.",
    )
    offload_optimizer_device: OffloadDevice | None = flag(
        None,
        TRAINING,
        "DeepSpeed: keep the optimizer's state on the CPU or an NVMe drive (ZeRO stages 2 and 3); "
        "empty: on the GPU.",
    )
    offload_optimizer_nvme_path: str | None = flag(
        None, TRAINING, "DeepSpeed: the folder on the NVMe drive for --offload_optimizer_device nvme."
    )
    offload_param_device: OffloadDevice | None = flag(
        None, TRAINING, "DeepSpeed: keep the weights on the CPU or an NVMe drive (ZeRO stage 3 only)."
    )
    offload_param_nvme_path: str | None = flag(
        None, TRAINING, "DeepSpeed: the folder on the NVMe drive for --offload_param_device nvme."
    )
    zero3_init_flag: bool = flag(
        False,
        TRAINING,
        "DeepSpeed: build the models split across the processes (deepspeed.zero.Init; ZeRO stage 3 only).",
    )
    zero3_save_16bit_model: bool = flag(
        False, TRAINING, "DeepSpeed: gather the weights as 16-bit when saving (ZeRO stage 3 only)."
    )
    fp16_master_weights_and_gradients: bool = flag(
        False,
        TRAINING,
        "DeepSpeed: keep the master weights and gradients in fp16 (the optimizer's state stays float32). "
        "Only with --mixed_precision fp16, --zero_stage 2 and --offload_optimizer_device cpu (DeepSpeed's "
        "CPU Adam); --full_fp16 asks for it too, as in kohya.",
    )
