"""How the processes of an `accelerate launch` run work together: the process group's and DDP's options,
and DeepSpeed ZeRO's plugin, from kohya's flags (`config/distributed_options.py`; kohya builds them in
train_util.prepare_accelerator and deepspeed_utils.prepare_deepspeed_plugin). In a run of one process
accelerate uses none of them.
"""

from __future__ import annotations

import importlib.util
import os
from datetime import timedelta

import torch
from accelerate import DeepSpeedPlugin
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, KwargsHandler

from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError


def process_kwargs(config: TrainConfig) -> list[KwargsHandler]:
    """DDP's settings, and the process group's when this is one of several processes."""
    handlers: list[KwargsHandler] = [
        DistributedDataParallelKwargs(
            # A static graph finds the unused parameters by itself, once.
            find_unused_parameters=not config.ddp_static_graph and some_adapters_may_get_no_gradient(config),
            gradient_as_bucket_view=config.ddp_gradient_as_bucket_view,
            static_graph=config.ddp_static_graph,
        )
    ]
    if launched_processes() > 1:
        _check_static_graph(config)
        handlers.append(InitProcessGroupKwargs(**_process_group_settings(config)))
    return handlers


def launched_processes() -> int:
    """How many processes `accelerate launch` (or torchrun) started: their launcher sets WORLD_SIZE."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _process_group_settings(config: TrainConfig) -> dict:
    settings = {}
    if os.name == "nt" or not torch.cuda.is_available():
        # NCCL does not exist on Windows; on the CPU kohya asks for gloo (accelerate would take MPI
        # where torch has it).
        settings["backend"] = "gloo"
    if os.name == "nt":
        # Windows builds of torch >= 2.4 have no libuv for the rendezvous store; kohya turns it off too.
        settings["init_method"] = "env://?use_libuv=False"
    if config.ddp_timeout is not None:
        settings["timeout"] = timedelta(minutes=config.ddp_timeout)
    return settings


def some_adapters_may_get_no_gradient(config: TrainConfig) -> bool:
    """Whether DDP must look for adapters without a gradient at each step, so it does not wait for them.

    When the text encoders' LoRA trains, some of their adapters get none: those of the layers after the
    --clip_skip layer (they run, but their output is not used), SDXL's TE1's last layer (its
    penultimate states are the conditioning), and all of them once --stop_text_encoder_training froze
    them. Every U-Net adapter is on the way to the loss, so a U-Net-only run skips the search."""
    return config.train_text_encoder


def _check_static_graph(config: TrainConfig) -> None:
    """DDP's static graph assumes the same parameters get gradients at every step."""
    if (
        config.ddp_static_graph
        and config.train_text_encoder
        and config.stop_text_encoder_training is not None
    ):
        raise UserError(
            "--ddp_static_graph assumes the same weights train at every step, but "
            "--stop_text_encoder_training freezes the text encoder's LoRA mid-run; drop one of them"
        )


def deepspeed_plugin(config: TrainConfig) -> DeepSpeedPlugin | None:
    """kohya's DeepSpeed ZeRO settings with --deepspeed; None without it."""
    if not config.deepspeed:
        return None
    _check_deepspeed(config)
    plugin = DeepSpeedPlugin(
        zero_stage=config.zero_stage,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        gradient_clipping=config.max_grad_norm,
        offload_optimizer_device=config.offload_optimizer_device,
        offload_optimizer_nvme_path=config.offload_optimizer_nvme_path,
        offload_param_device=config.offload_param_device,
        offload_param_nvme_path=config.offload_param_nvme_path,
        zero3_init_flag=config.zero3_init_flag,
        zero3_save_16bit_model=config.zero3_save_16bit_model,
    )
    # DeepSpeed checks that the global batch is micro batch x accumulation x processes; the loader's
    # items are whole batches, so accelerate cannot read the micro batch from it.
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train_batch_size
    plugin.deepspeed_config["train_batch_size"] = (
        config.train_batch_size * config.gradient_accumulation_steps * launched_processes()
    )
    plugin.set_mixed_precision(config.mixed_precision)
    if config.mixed_precision == "fp16":
        # kohya starts the loss scale at 2**0 instead of DeepSpeed's 2**16, against early overflows.
        plugin.deepspeed_config["fp16"]["initial_scale_power"] = 0
        if _fp16_master_weights(config):
            plugin.deepspeed_config["fp16"]["fp16_master_weights_and_grads"] = True
    return plugin


def _fp16_master_weights(config: TrainConfig) -> bool:
    # DeepSpeed keeps fp16 master weights only with ZeRO-Offload's CPU Adam at stage 2; kohya asks for
    # them with --full_fp16 too, where that holds.
    supported = config.zero_stage == 2 and config.offload_optimizer_device == "cpu"
    return supported and (config.full_fp16 or config.fp16_master_weights_and_gradients)


def _check_deepspeed(config: TrainConfig) -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(
            "--deepspeed needs the deepspeed package: install it with `DS_BUILD_OPS=0 pip install deepspeed`"
        )
    if config.zero_stage == 3:
        raise UserError(
            "--zero_stage 3 splits the LoRA's weights across the processes and loracraft does not gather "
            "them to save the file; use --zero_stage 2 (the LoRA's optimizer state and gradients are split)"
        )
    if config.fp16_master_weights_and_gradients and not (
        config.mixed_precision == "fp16"
        and config.zero_stage == 2
        and config.offload_optimizer_device == "cpu"
    ):
        raise UserError(
            "--fp16_master_weights_and_gradients works only with --mixed_precision fp16, --zero_stage 2 and "
            "--offload_optimizer_device cpu (DeepSpeed's CPU Adam); add them or drop it"
        )
