"""The trainer: set up a run from a TrainConfig, train it, save the LoRA files.

train(config)
  -> setup_run: model bundle, dataset plan (printed), caches, LoRA network, optimizer, schedule
  -> run_epochs: the loop around `diffusion_loss`
  -> save_lora: NAME-00000E.safetensors every save_every_n_epochs, NAME.safetensors at the end
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from diffusers import DDPMScheduler

from loracraft.atomic import write_text_atomic
from loracraft.config.load import effective_config_toml
from loracraft.config.schema import TrainConfig
from loracraft.data.plan import DatasetPlan
from loracraft.data.summary import format_plan
from loracraft.errors import UserError
from loracraft.models.bundle import ModelBundle
from loracraft.models.loading import load_model_bundle
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from loracraft.training.batches import BatchSource, make_batch_source
from loracraft.training.caching import cached_text_inputs, fill_caches_only
from loracraft.training.dataset_setup import plan_dataset
from loracraft.training.optimizer import build_optimizer
from loracraft.training.progress import TrainingLog
from loracraft.training.saving import RunFacts, now, save_lora
from loracraft.training.schedule import build_lr_scheduler
from loracraft.training.step import StepModels, diffusion_loss

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a finished run wrote and how it went."""

    lora_file: Path
    epoch_files: list[Path]
    config_file: Path
    steps: int
    epochs: int
    final_average_loss: float
    log_dir: Path | None


@dataclass
class TrainingRun:
    config: TrainConfig
    accelerator: Accelerator
    bundle: ModelBundle
    plan: DatasetPlan
    batches: BatchSource
    network: LoRANetwork
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    models: StepModels
    facts: RunFacts
    epoch_files: list[Path] = field(default_factory=list)


def train(
    config: TrainConfig, *, show_progress: bool = True, echo: Callable[[str], None] = print
) -> TrainResult:
    """Train a LoRA as `config` says; returns where the files are."""
    run = setup_run(config, echo)
    config_file = Path(config.output_dir) / f"{config.output_name}.toml"
    write_text_atomic(config_file, effective_config_toml(config))
    log = TrainingLog(
        run.plan.steps.max_train_steps,
        config.logging_dir,
        config.log_prefix,
        show_bar=show_progress,
        average_window=run.plan.batches_per_epoch,
    )
    try:
        average = run_epochs(run, log)
    finally:
        log.close()
    final = save_lora(run, config.output_path(), epoch=run.plan.steps.num_epochs, step=run.facts.steps_done)
    return TrainResult(
        lora_file=final,
        epoch_files=run.epoch_files,
        config_file=config_file,
        steps=run.facts.steps_done,
        epochs=run.plan.steps.num_epochs,
        final_average_loss=average,
        log_dir=log.run_dir,
    )


def check_required(config: TrainConfig) -> None:
    for flag in ("pretrained_model_name_or_path", "output_dir"):
        if not getattr(config, flag):
            raise UserError(f"--{flag} is required")
    if not config.train_data_dir and not config.dataset_config:
        raise UserError("--train_data_dir (a folder of N_concept folders) or --dataset_config is required")
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file, not a folder")


def make_accelerator(config: TrainConfig) -> Accelerator:
    on_gpu = torch.cuda.is_available()
    if config.mixed_precision == "fp16" and not on_gpu:
        raise UserError(
            "--mixed_precision fp16 needs a CUDA GPU; on this machine use --mixed_precision bf16 or no"
        )
    # accelerate keeps process-wide state; one process may run several trainings (tests, the demo), each
    # with its own precision, so the previous run's settings are cleared first.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=not on_gpu,
    )


@dataclass
class RunInputs:
    """What every run starts from: the device setup, the seed, the dataset plan and the base model."""

    accelerator: Accelerator
    seed: int
    started_at: float
    plan: DatasetPlan
    bundle: ModelBundle


def load_inputs(config: TrainConfig, echo: Callable[[str], None]) -> RunInputs:
    check_required(config)
    accelerator = make_accelerator(config)
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    set_seed(seed)
    started_at = now()
    # The dataset is scanned and planned before the model is loaded: its errors are cheaper to find.
    plan = plan_dataset(config, seed, accelerator.num_processes, echo)
    echo(format_plan(plan))
    bundle = load_model_bundle(
        config.pretrained_model_name_or_path, vae=config.vae, tokenizer_path=config.tokenizer_path
    )
    return RunInputs(accelerator, seed, started_at, plan, bundle)


def cache_only(config: TrainConfig, echo: Callable[[str], None] = print) -> str:
    """`--cache_only`: fill the disk caches for this config's dataset and model; no training."""
    inputs = load_inputs(config, echo)
    inputs.bundle.vae.to(inputs.accelerator.device)
    return fill_caches_only(config, inputs.plan, inputs.bundle, inputs.accelerator.device, echo)


def setup_run(config: TrainConfig, echo: Callable[[str], None]) -> TrainingRun:
    inputs = load_inputs(config, echo)
    accelerator, seed, plan, bundle = inputs.accelerator, inputs.seed, inputs.plan, inputs.bundle
    device = accelerator.device
    weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
    bundle.vae.to(device)  # kept in fp32: latents are encoded once and cached, where precision is cheap
    text_states, text_state_files = cached_text_inputs(config, plan, bundle, device, echo)
    batches = make_batch_source(
        config, plan, bundle, device, echo, text_states=text_states, text_state_files=text_state_files
    )

    # torch's own `to`: diffusers' override warns about fp32-only modules on every dtype cast, even
    # when a model has none (SD's U-Net), which would put a false alarm in every run's output.
    torch.nn.Module.to(bundle.unet, device, weight_dtype)
    torch.nn.Module.to(bundle.text_encoder, device, weight_dtype)
    # Rebuilding the LoRA modules draws their init from the seeded RNG: the same seed gives the same file.
    set_seed(seed)
    network = build_lora_network(
        bundle.unet,
        bundle.text_encoder,
        rank=config.network_dim,
        alpha=config.network_alpha,
        train_unet=config.train_unet,
        train_text_encoder=config.train_text_encoder,
    )
    network.apply()
    network.to(device)
    echo(
        f"LoRA: {network.num_unet_modules} U-Net modules, {network.num_text_encoder_modules} text-encoder "
        f"modules, rank {config.network_dim}, alpha {config.network_alpha:g}"
    )
    if config.gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            bundle.text_encoder.gradient_checkpointing_enable()
        bundle.unet.train()

    param_groups = network.param_groups(config.effective_unet_lr, config.effective_text_encoder_lr)
    if not param_groups:
        raise UserError("nothing to train: --unet_lr and --text_encoder_lr are both 0")
    optimizer = build_optimizer(config, param_groups)
    lr_scheduler = build_lr_scheduler(
        config, optimizer, plan.steps.max_train_steps, accelerator.num_processes
    )
    network, optimizer, lr_scheduler = accelerator.prepare(network, optimizer, lr_scheduler)

    models = StepModels(
        unet=bundle.unet,
        text_encoder=bundle.text_encoder,
        tokenizer=bundle.tokenizer,
        vae=bundle.vae,
        noise_scheduler=DDPMScheduler.from_config(bundle.scheduler_config),
        vae_scaling_factor=bundle.vae.config.scaling_factor,
        weight_dtype=weight_dtype,
        train_text_encoder=config.train_text_encoder,
        max_token_length=config.max_token_length,
        clip_skip=config.clip_skip,
        weighted_captions=config.weighted_captions,
    )
    facts = RunFacts(seed=seed, started_at=inputs.started_at)
    return TrainingRun(
        config, accelerator, bundle, plan, batches, network, optimizer, lr_scheduler, models, facts
    )


def run_epochs(run: TrainingRun, log: TrainingLog) -> float:
    """The loop: batches -> loss -> backward -> (every accumulation) clip, step. Returns the last average."""
    config, accelerator = run.config, run.accelerator
    plan = run.plan
    trainable = [p for group in run.optimizer.param_groups for p in group["params"]]
    group_names = [group.get("name", f"group{i}") for i, group in enumerate(run.optimizer.param_groups)]
    for epoch in range(1, plan.steps.num_epochs + 1):
        epoch_losses = []
        for batch in run.batches.epoch(epoch - 1):
            with accelerator.accumulate(run.network):
                loss = diffusion_loss(run.models, batch, accelerator.device)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                run.optimizer.step()
                run.lr_scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
            epoch_losses.append(loss.detach())
            if accelerator.sync_gradients:
                run.facts.steps_done += 1
                lrs = dict(zip(group_names, run.lr_scheduler.get_last_lr(), strict=True))
                log.step(run.facts.steps_done, epoch, loss.detach(), lrs)
                if run.facts.steps_done >= plan.steps.max_train_steps:
                    break
        log.epoch_end(epoch, torch.stack(epoch_losses).mean().item())
        if run.facts.steps_done >= plan.steps.max_train_steps:
            break
        if config.save_every_n_epochs and epoch % config.save_every_n_epochs == 0:
            path = config.output_path(f"-{epoch:06d}")
            run.epoch_files.append(save_lora(run, path, epoch=epoch, step=run.facts.steps_done))
    return log.flush()
