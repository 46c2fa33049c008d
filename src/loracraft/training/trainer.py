"""The trainer: set up a run from a TrainConfig, train it, save the LoRA files.

train(config)
  -> start_run: the accelerator (one process), the seed, the dataset plan (printed), the base model
  -> setup_training: caches, the model with its LoRA, the step, optimizer and schedule, all prepared
  -> loop.run_epochs: the loop around `step.diffusion_loss`, from the start or a saved state (`resume.py`)
  -> run_outputs: LoRA files and resumable states as the save options say, NAME.safetensors at the end
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from loracraft.config.fields import options_of
from loracraft.config.loss_options import LossOptions
from loracraft.config.sample_options import SampleOptions
from loracraft.config.schema import TrainConfig
from loracraft.data.latent_cache import Encoder
from loracraft.data.masks import mask_files
from loracraft.data.plan import DatasetPlan
from loracraft.data.summary import format_plan
from loracraft.errors import UserError
from loracraft.models.attention import attention_for, set_attention
from loracraft.models.bundle import ModelBundle
from loracraft.models.family import FAMILY_NAMES
from loracraft.models.loading import load_model_bundle
from loracraft.networks.algorithms import adapter_kind, check_buildable, loraplus_ratios
from loracraft.networks.blocks import block_dims, block_learning_rates, block_warnings
from loracraft.networks.consumers import consumers_line
from loracraft.networks.initial_weights import InitialWeights, initial_weights_settings
from loracraft.networks.kohya_oft import build_kohya_oft_network
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from loracraft.networks.max_norm import effective_max_norm
from loracraft.networks.merge_into_base import BaseMerge
from loracraft.networks.network_spec import OFT, NetworkSpec, network_spec
from loracraft.networks.target_selection import TargetChoice
from loracraft.sampling.during_training import TrainingSamples
from loracraft.sampling.prompts import check_sample_prompts
from loracraft.training.accelerator import (
    main_process_echo,
    make_accelerator,
    release_cached_memory,
    seed_step_draws,
)
from loracraft.training.batches import make_batch_loader
from loracraft.training.caching import cached_text_inputs, fill_caches_only
from loracraft.training.dataset_setup import plan_dataset
from loracraft.training.diffusion_model import LoRADiffusionModel, takes_size_conditioning
from loracraft.training.distributed import deepspeed_plugin, process_kwargs
from loracraft.training.evaluations import RunEvaluations
from loracraft.training.family_settings import (
    FamilySettings,
    check_bucket_steps,
    dataset_defaults,
    family_hint,
    model_settings,
)
from loracraft.training.interrupt import RunStopped, stop_on_signals
from loracraft.training.loop import (
    LoopHooks,
    NonFiniteLoss,
    Position,
    StopRequested,
    TrainingParts,
    prepare_training,
    run_epochs,
)
from loracraft.training.optimizer import build_optimizer, check_optimizer
from loracraft.training.output_folder import check_output_folder, clean_stale_files
from loracraft.training.precision import (
    cast_frozen_model,
    check_float8,
    config_precision,
    describe_precision,
    fp16_vae_note,
)
from loracraft.training.progress import TrainingLog, images_per_step
from loracraft.training.resume import ResumePoint, check_resumable, resume_point
from loracraft.training.run_log import RunLog
from loracraft.training.run_outputs import RunOutputs
from loracraft.training.run_state import load_training_state, restore_generators
from loracraft.training.saving import RunFacts, now
from loracraft.training.schedule import build_lr_scheduler, check_lr_scheduler, text_encoder_stop
from loracraft.training.step import StepModels, diffusion_loss
from loracraft.training.throughput_record import ThroughputKey, record_throughput
from loracraft.training.timesteps import training_noise_scheduler
from loracraft.training.trackers import check_trackers, open_trackers
from loracraft.training.vae_encoding import encode_images, vae_upcast_note
from loracraft.training.validation import Validation, make_validation_set

# Fewer timed steps than this say more about warming up than about the run's speed.
MIN_TIMED_STEPS = 10


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


def train(
    config: TrainConfig, *, show_progress: bool = True, echo: Callable[[str], None] = print
) -> TrainResult:
    """Train a LoRA as `config` says (continuing a saved state with --resume); returns where the files
    are. Only the main process writes files. A Ctrl-C or SIGTERM ends it with RunStopped once a state
    and a LoRA file are saved."""
    start = start_run(config, echo)
    config, accelerator, plan = start.config, start.accelerator, start.plan
    echo = main_process_echo(accelerator, echo)  # start_run's own echo was wrapped inside it
    setup = setup_training(config, plan, start.bundle, accelerator, start.seed, echo)
    network = accelerator.unwrap_model(setup.parts.model).network
    facts = RunFacts.for_run(config, start.seed, start.started_at, start.bundle.family)
    outputs = RunOutputs(config, plan, facts, accelerator, network, setup.parts, echo)
    position = resume_training(start, accelerator, network, setup.parts, outputs, echo)
    outputs.at_start()
    run_log = RunLog.for_run(config, echo, outputs.writes)
    run_log.begin(config, format_plan(plan), resumed_at=position.step if start.resume is not None else None)
    log = TrainingLog(
        plan.steps.max_train_steps,
        open_trackers(config) if outputs.writes else [],
        show_bar=show_progress and outputs.writes,
        average_window=plan.batches_per_epoch,
        initial_step=position.step,
        images_per_step=images_per_step(plan),
        device=accelerator.device,
        run_log=run_log,
    )
    log.begin_run(plan.steps, position.step)
    loss_of = partial(diffusion_loss, setup.step_models, device=accelerator.device)
    evaluations = run_evaluations(config, start, setup, log, run_log, echo)

    def between_steps(*calls: Callable[[Position], None]) -> Callable[[Position], None]:
        # Saving, sampling and validating are not training: the speed the trackers get leaves them out.
        def run(position: Position) -> None:
            with log.not_timed():
                for call in calls:
                    call(position)

        return run

    try:
        with stop_on_signals() as stop:
            evaluations.at_start(position)
            hooks = LoopHooks(
                before_batch=text_encoder_stop(config, network, plan.steps.max_train_steps, echo),
                after_step=between_steps(outputs.after_step, evaluations.after_step),
                after_epoch=between_steps(outputs.after_epoch, evaluations.after_epoch),
                stop=stop,
                restore_generators=partial(restore_generators, start.resume.folder, accelerator)
                if start.resume is not None
                else LoopHooks.restore_generators,
            )
            max_norm, _ = effective_max_norm(network_spec(config), config.scale_weight_norms)
            result = run_epochs(
                accelerator,
                setup.parts,
                loss_of,
                plan.steps,
                config.max_grad_norm,
                log,
                hooks,
                position,
                max_norm=max_norm,
            )
            end = Position(plan.steps.num_epochs + 1, 0, result.steps)
            final = outputs.at_end(end)
            evaluations.at_end(result.steps, plan.steps.num_epochs)
            if outputs.writes:
                remember_speed(config, start, log, echo)
            log.end_run("finished", f"{final.name} after {result.steps} steps")
    except NonFiniteLoss as stopped:
        message = non_finite_message(stopped, outputs.epoch_files, config.mixed_precision)
        outputs.failed(message)
        log.end_run("failed", message)
        raise UserError(message) from None
    except UserError as error:
        outputs.failed(str(error))
        log.end_run("failed", str(error))
        raise
    except StopRequested as stopped:
        resume_with = outputs.at_stop(stopped.signal_name, stopped.position)
        log.end_run("stopped", resume_with.removeprefix("stopped "))
        raise RunStopped(resume_with, stopped.signal_name) from None
    finally:
        log.close()
    return TrainResult(
        lora_file=final,
        epoch_files=outputs.epoch_files,
        config_file=outputs.config_file,
        steps=result.steps,
        epochs=plan.steps.num_epochs,
        final_average_loss=result.final_average_loss,
        log_dir=log.run_dir,
    )


def non_finite_message(stop: NonFiniteLoss, epoch_files: list[Path], mixed_precision: str) -> str:
    """The one line a run stopped by a NaN or inf loss ends with."""
    kept = "no LoRA file was written"
    if epoch_files:
        kept = f"the last epoch file, {epoch_files[-1].name}, is intact"
    overflow = "an fp16 overflow (try --mixed_precision bf16, and --no_half_vae)"
    learning_rate = "a learning rate too high (lower --learning_rate / --unet_lr / --text_encoder_lr)"
    causes = [overflow, learning_rate] if mixed_precision == "fp16" else [learning_rate, overflow]
    return (
        f"the loss became {stop.value} at step {stop.step} (epoch {stop.epoch}), so training stopped there; "
        f"{kept}. Likely causes: {causes[0]}, or {causes[1]}"
    )


def resume_training(
    start: RunStart,
    accelerator: Accelerator,
    network: LoRANetwork,
    parts: TrainingParts,
    outputs: RunOutputs,
    echo: Callable[[str], None],
) -> Position:
    """Where training starts: at the beginning, or with --resume where the saved state stopped (its
    adapter, optimizer, schedule and scaler loaded)."""
    if start.resume is None:
        return Position()
    load_training_state(start.resume.folder, accelerator, network, parts)
    position, outputs.last_state = start.resume.record.position, start.resume.folder
    max_steps = start.plan.steps.max_train_steps
    echo(f"resuming {start.resume.folder.name}: epoch {position.epoch}, step {position.step} of {max_steps}")
    if position.step >= max_steps:
        echo(
            "note: the state is at the run's last step: nothing is left to train; the files are written again"
        )
    return position


def run_evaluations(
    config: TrainConfig,
    start: RunStart,
    setup: TrainingSetup,
    log: TrainingLog,
    run_log: RunLog,
    echo: Callable[[str], None],
) -> RunEvaluations:
    """The run's sample images (when its flags ask for them) and validation loss (when images are held
    out), drawn with the prepared model."""
    samples = None
    if options_of(SampleOptions, config).draws_samples:
        samples = TrainingSamples(config, start.bundle, setup.parts.model, start.accelerator, echo)
    return RunEvaluations(
        samples,
        setup.validation,
        setup.step_models,
        start.accelerator,
        setup.parts.optimizer,
        log,
        run_log,
        echo,
    )


def remember_speed(
    config: TrainConfig, start: RunStart, log: TrainingLog, echo: Callable[[str], None]
) -> None:
    """Record the run's measured seconds per step for this device and these settings, for `loracraft
    plan` to tell the next run how long it will take (`throughput_record.py`). A run too short to time
    leaves no record; a cache folder that cannot be written costs a warning."""
    seconds, steps = log.clock.mean, log.clock.total_steps
    if seconds is None or steps < MIN_TIMED_STEPS:
        return
    key = ThroughputKey.for_run(config, start.plan, start.bundle.family, start.accelerator.device)
    try:
        record_throughput(key, seconds, steps)
    except OSError as error:
        echo(f"warning: could not record the run's speed for `loracraft plan` ({error})")


def check_required(config: TrainConfig) -> None:
    for flag in ("pretrained_model_name_or_path", "output_dir"):
        if not getattr(config, flag):
            raise UserError(f"--{flag} is required")
    if not config.train_data_dir and not config.dataset_config:
        raise UserError("--train_data_dir (a folder of N_concept folders) or --dataset_config is required")
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file, not a folder")


@dataclass(frozen=True)
class RunStart:
    """What every run starts from: the config as the model's family adjusted it (`family_settings`),
    the accelerator, the seed, the dataset plan and the base model."""

    config: TrainConfig
    accelerator: Accelerator
    seed: int
    started_at: float
    plan: DatasetPlan
    bundle: ModelBundle
    resume: ResumePoint | None = None


def start_run(
    config: TrainConfig, echo: Callable[[str], None], *, sweep_stale_files: bool = True
) -> RunStart:
    """`sweep_stale_files` False leaves what killed runs left in --output_dir alone: `loracraft plan`
    may run beside a live training of the same name, whose half-written files those are."""
    check_required(config)
    check_trackers(config)
    spec = network_spec(config)
    check_buildable(spec)
    if spec.module != OFT:
        TargetChoice.of(spec)  # a bad preset file or pattern stops the run before anything loads
    accelerator = make_accelerator(
        config.mixed_precision,
        config.gradient_accumulation_steps,
        dynamo_backend=config.dynamo_backend if config.torch_compile else "no",
        full_fp16=config.full_fp16,
        kwargs_handlers=process_kwargs(config),
        deepspeed_plugin=deepspeed_plugin(config),
    )
    # With `accelerate launch` every process runs this; the plan and the notes are printed once.
    echo = main_process_echo(accelerator, echo)
    _, max_norm_note = effective_max_norm(spec, config.scale_weight_norms)
    if max_norm_note:
        echo(f"note: {max_norm_note}")
    if accelerator.is_main_process:
        check_output_folder(Path(config.output_dir))
        if sweep_stale_files:
            clean_stale_files(Path(config.output_dir), config.output_stem, echo)
    # The other processes read states from the folder only once the main one has swept it.
    accelerator.wait_for_everyone()
    # The state is checked first: a resumed run takes its seed (and the start time its files record).
    resume = resume_point(config)
    if config.fp8_base or config.fp8_base_unet:
        check_float8(accelerator.device)
    check_optimizer(config, accelerator.device, echo)
    check_lr_scheduler(config, echo)
    check_sample_prompts(options_of(SampleOptions, config))  # a bad prompt file stops the run here
    if resume is not None:
        seed, started_at = resume.record.seed, resume.record.started_at
    else:
        seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        started_at = now()
    set_seed(seed)
    # The dataset is scanned and planned before the model is loaded: its errors are cheaper to find.
    config = _noted(dataset_defaults(config, family_hint(config.pretrained_model_name_or_path)), echo)
    plan = plan_dataset(config, seed, accelerator.num_processes, echo)
    echo(format_plan(plan))
    mask_files(plan)  # a missing or unpaired mask image stops the run here, before any model loads
    bundle = load_model_bundle(
        config.pretrained_model_name_or_path,
        vae=config.vae,
        tokenizer_path=config.tokenizer_path,
        tokenizer_2_path=config.tokenizer_2_path,
    )
    echo(f"base model: {FAMILY_NAMES[bundle.family]} ({bundle.source.name})")
    check_network_blocks(config, bundle.family, echo)
    echo(consumers_line(network_spec(config), bundle.family))
    check_bucket_steps(plan, bundle.family)
    config = _noted(
        model_settings(config, bundle.family, bundle.prediction, config.pretrained_model_name_or_path), echo
    )
    for note in config.loss_notes:
        echo(f"note: {note}")
    # --network_weights (and --dim_from_weights) set the rank and alpha the files record.
    config, notes = initial_weights_settings(config, bundle.family)
    for note in notes:
        echo(f"note: {note}")
    if resume is not None:
        check_resumable(resume, config, plan, echo)
    prepare_base_model(config, bundle, accelerator.device, echo)
    return RunStart(config, accelerator, seed, started_at, plan, bundle, resume)


def _noted(settings: FamilySettings, echo: Callable[[str], None]) -> TrainConfig:
    for note in settings.notes:
        echo(f"note: {note}")
    return settings.config


def prepare_base_model(
    config: TrainConfig, bundle: ModelBundle, device: torch.device, echo: Callable[[str], None]
) -> None:
    """The loaded model as every later use needs it: --base_weights merged in (in its loaded precision,
    before the caches encode with it, so cached text-encoder outputs see the merge too), its attention,
    the VAE's dtype (the caches encode with it), and with --lowram on the device at once."""
    if config.base_weights:
        merge = BaseMerge.read(
            bundle.unet,
            bundle.text_encoders,
            bundle.family,
            config.base_weights,
            config.base_weights_multipliers,
        )
        merge.apply(echo)
    attention, note = attention_for(
        mem_eff_attn=config.mem_eff_attn, xformers=config.xformers, sdpa=config.sdpa
    )
    if note:
        echo(f"note: {note}")
    set_attention(bundle.unet, bundle.vae, attention)
    torch.nn.Module.to(bundle.vae, dtype=config_precision(config, bundle).vae)
    if vae_note := fp16_vae_note(config, bundle):
        echo(f"note: {vae_note}")
    if config.lowram:
        for model in (bundle.unet, *bundle.text_encoders, bundle.vae):
            model.to(device)


def cache_only(config: TrainConfig, echo: Callable[[str], None] = print) -> str:
    """`--cache_only`: fill the disk caches for this config's dataset and model; no training."""
    start = start_run(config, echo)
    return fill_caches_only(start.config, start.plan, start.bundle, start.accelerator.device, echo)


@dataclass(frozen=True)
class TrainingSetup:
    step_models: StepModels
    parts: TrainingParts
    validation: Validation | None = None


def setup_training(
    config: TrainConfig,
    plan: DatasetPlan,
    bundle: ModelBundle,
    accelerator: Accelerator,
    seed: int,
    echo: Callable[[str], None],
) -> TrainingSetup:
    """Caches, the model with its LoRA, optimizer and schedule, prepared by accelerate."""
    device = accelerator.device
    # The main process fills the disk caches first; any other finds them current and only reads them.
    with accelerator.main_process_first():
        text_states, text_state_files = cached_text_inputs(config, plan, bundle, device, echo)
        loader = make_batch_loader(
            config, plan, bundle, device, echo, text_states=text_states, text_state_files=text_state_files
        )
        # The held-out images go through the same caches, while the encoders are still on the device.
        validation = make_validation_set(config, plan.validation, bundle, device, echo)
    precision = config_precision(config, bundle)
    if bundle.vae.dtype != precision.vae:
        echo(f"note: {vae_upcast_note(precision.vae)}")
    encode = release_cached_encoders(config, bundle, device, echo)

    # Rebuilding the LoRA modules draws their init from the seeded RNG: the same seed gives the same file.
    set_seed(seed)
    model = build_model(config, bundle, echo)
    seed_step_draws(seed, accelerator)
    echo(describe_precision(precision, text_encoder_runs=len(model.text_encoders) > 0))
    network = model.network
    echo(
        f"LoRA: {network.num_unet_modules} U-Net modules, {network.num_text_encoder_modules} text-encoder "
        f"modules, rank {config.network_rank}, alpha {config.network_alpha:g}"
    )
    optimizer = build_optimizer(config, network_param_groups(network, config))
    lr_scheduler = build_lr_scheduler(
        config, optimizer, plan.steps.max_train_steps, accelerator.num_processes
    )
    parts = prepare_training(accelerator, model, loader, optimizer, lr_scheduler)
    step_models = StepModels(
        model=parts.model,
        noise_scheduler=training_noise_scheduler(config.zero_terminal_snr),
        vae_scaling_factor=bundle.vae.config.scaling_factor,
        encode_images=encode,
        options=options_of(LossOptions, config),
        size_conditioned=takes_size_conditioning(bundle.unet),
    )
    return TrainingSetup(step_models, parts, validation)


def release_cached_encoders(
    config: TrainConfig, bundle: ModelBundle, device: torch.device, echo: Callable[[str], None]
) -> Encoder | None:
    """After caching, the encoders whose outputs are cached leave the device (kohya frees them too),
    except with --lowram, where RAM is the scarcer memory. Returns how the step encodes images: None
    when the latents are cached."""
    parked, place = (device, f"on {device} (--lowram)") if config.lowram else ("cpu", "on the CPU")
    if config.cache_text_encoder_outputs:
        for text_encoder in bundle.text_encoders:
            text_encoder.to(parked)
        echo(f"text encoder: its outputs are cached, so it stays {place} during training")
    if config.cache_latents:
        bundle.vae.to(parked)
        echo(f"VAE: latents are cached, so the VAE stays {place} during training")
    # What the caches used on the GPU goes back to the driver before training (kohya cleans here too).
    release_cached_memory(device)
    if config.cache_latents:
        return None
    echo(f"VAE: encodes every batch's images on {device} during training (latents are not cached)")
    # The VAE runs in its own dtype (float32 with --no_half_vae), outside the precision context: it
    # encodes without gradients, one call a batch.
    vae = bundle.vae.to(device)

    def upcast(note: str) -> None:
        echo(f"note: {note}")

    return lambda pixels: encode_images(vae, pixels, len(pixels), config.latent_sampling, on_upcast=upcast)


def check_network_blocks(config: TrainConfig, family: str, echo: Callable[[str], None]) -> None:
    """Read the per-block network args for the base model's block count (a wrong count stops the run in
    one line before anything trains) and say once what kohya would do silently with them."""
    spec = network_spec(config)
    block_dims(spec.blocks, family, config.network_rank, config.network_alpha, spec.conv_dim, spec.conv_alpha)
    block_learning_rates(spec.blocks, family, config.effective_unet_lr)
    for warning in block_warnings(spec.blocks, family, spec.conv_dim):
        echo(f"note: {warning}")


def network_param_groups(network: LoRANetwork, config: TrainConfig) -> list[dict]:
    """The optimizer's groups of the run's network: kohya's names and rates, per block with block lr
    weights or block_lr, LoRA+'s "plus" groups."""
    spec = network_spec(config)
    return network.param_groups(
        config.effective_unet_lr,
        config.effective_text_encoder_lrs,
        loraplus_ratios(spec),
        block_learning_rates(spec.blocks, network.family, config.effective_unet_lr),
    )


def build_model(
    config: TrainConfig, bundle: ModelBundle, echo: Callable[[str], None] = print
) -> LoRADiffusionModel:
    """The frozen base in the run's dtypes (`precision.py`: the --mixed_precision dtype, float8 storage
    with --fp8_base) with the LoRA patched in; the LoRA's own weights are float32 unless full_fp16/bf16.

    The LoRA starts from --network_weights when given, with that file's alpha and, with --dim_from_weights, its
    rank (networks/initial_weights.py). The text encoder is left out when its outputs are cached (the
    step never calls it)."""
    initial = InitialWeights.read(config.network_weights, bundle.family) if config.network_weights else None
    if initial is not None:
        config, notes = initial.run_settings(config)
        for note in notes:
            echo(f"note: {note}")
    precision = config_precision(config, bundle)
    text_encoders = [] if config.cache_text_encoder_outputs else bundle.text_encoders
    cast_frozen_model(bundle.unet, precision.compute, precision.unet_storage)
    for text_encoder in text_encoders:
        cast_frozen_model(text_encoder, precision.compute, precision.text_encoder_storage)
    spec = network_spec(config)
    network = (
        build_kohya_oft_network(bundle.unet, bundle.family, spec, config.network_rank)
        if spec.module == OFT
        else _lora_network(config, spec, bundle, text_encoders, initial)
    )
    if initial is not None:
        initial.load_into(network)
    network.apply()
    network.to(precision.adapters)
    model = LoRADiffusionModel(
        bundle.unet,
        text_encoders,
        network,
        bundle.tokenizers,
        train_text_encoder=config.train_text_encoder,
        max_token_length=config.token_length,
        clip_skip=config.clip_skip,
        weighted_captions=config.weighted_captions,
    )
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def _lora_network(
    config: TrainConfig,
    spec: NetworkSpec,
    bundle: ModelBundle,
    text_encoders: list[torch.nn.Module],
    initial: InitialWeights | None,
) -> LoRANetwork:
    """The network of networks.lora, networks.dylora and lycoris.kohya: LyCORIS adapters on the chosen
    targets; with --dim_from_weights, exactly the file's modules at their own ranks (kohya's
    create_network_from_weights)."""
    blocks = block_dims(
        spec.blocks, bundle.family, config.network_rank, config.network_alpha, spec.conv_dim, spec.conv_alpha
    )
    return build_lora_network(
        bundle.unet,
        text_encoders,
        bundle.family,
        rank=config.network_rank,
        alpha=config.network_alpha,
        train_unet=config.train_unet,
        train_text_encoder=config.train_text_encoder,
        kind=adapter_kind(spec),
        conv_dim=spec.conv_dim,
        conv_alpha=spec.conv_alpha,
        blocks=blocks,
        from_file=initial.module_ranks() if initial is not None and config.dim_from_weights else None,
        choice=TargetChoice.of(spec),
    )
