"""One training step: the diffusion loss of a batch, read top to bottom.

`sample_losses` gives each sample's loss; training averages them (`diffusion_loss`). The validation loss
(`validation.py`) passes its own fixed noise and timesteps instead of random ones."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DDPMScheduler
from torch import nn

from loracraft.config.loss_options import LossOptions
from loracraft.data.latent_cache import Encoder
from loracraft.training.diffusion_model import size_conditioning
from loracraft.training.losses import (
    elementwise_loss,
    huber_threshold,
    masked_mean,
    snr_weighted,
    training_target,
)
from loracraft.training.noise import perturbed_noise, sample_noise
from loracraft.training.timesteps import sample_timesteps, snr


@dataclass(frozen=True)
class StepModels:
    """What a step needs.

    `model` is the prepared `LoRADiffusionModel` (the U-Net, the text encoder and the LoRA, run under the
    run's precision context). `noise_scheduler` is the training schedule (`timesteps.training_noise_scheduler`).
    `encode_images` turns a batch's pixels into unscaled latents with the VAE; it is None when the latents
    are cached, so the step holds no VAE. `options` are the run's noise, timestep and loss settings.
    """

    model: nn.Module
    noise_scheduler: DDPMScheduler
    vae_scaling_factor: float
    encode_images: Encoder | None
    options: LossOptions = field(default_factory=LossOptions)
    size_conditioned: bool = False
    """SDXL: the model takes each image's size and crop (`diffusion_model.size_conditioning`)."""


@dataclass(frozen=True)
class FixedDraws:
    """Noise (shaped like the batch's latents) and one timestep per sample, chosen by the caller."""

    noise: torch.Tensor
    timesteps: torch.Tensor


def diffusion_loss(models: StepModels, batch: dict, device: torch.device) -> torch.Tensor:
    """The batch's diffusion loss: noise or v prediction, each sample weighted, then averaged."""
    return sample_losses(models, batch, device).mean()


def sample_losses(
    models: StepModels, batch: dict, device: torch.device, draws: FixedDraws | None = None
) -> torch.Tensor:
    """Each sample's diffusion loss (B,), weighted as training weighs it. With `draws`, the latents are
    noised with exactly that noise at those timesteps (no offset, multires noise or input perturbation)."""
    options, scheduler = models.options, models.noise_scheduler
    # Latents come from the cache when it is on; otherwise the VAE encodes the images now.
    if "latents" in batch:
        latents = batch["latents"].to(device)
    else:
        latents = models.encode_images(batch["pixels"].to(device))
    latents = latents * models.vae_scaling_factor

    # Sample the noise to add (with offset and multires noise when on) and a random timestep for each image.
    # Input perturbation noises the latents a little more than the target says.
    if draws is None:
        noise = sample_noise(latents, options)
        timesteps = sample_timesteps(*options.timestep_range, latents.shape[0], device)
        added_noise = perturbed_noise(noise, options)
    else:
        noise = draws.noise.to(device, latents.dtype)
        timesteps = draws.timesteps.to(device)
        added_noise = noise

    # Forward diffusion: noisy latents at each image's timestep.
    noisy_latents = scheduler.add_noise(latents, added_noise, timesteps)

    # The U-Net predicts the noise (or v), conditioned on the captions (encoded inside the model, through
    # the text encoders' LoRA) or on the cached text-encoder outputs; SDXL's also on each image's size
    # and crop.
    conditioning = {key: batch[key].to(device) for key in ("text_states", "text_pooled") if key in batch}
    if models.size_conditioned:
        conditioning["time_ids"] = size_conditioning(batch).to(device)
    model_pred = models.model(noisy_latents, timesteps, batch["captions"], **conditioning)

    # The loss of every element against the target, in float32.
    alphas_cumprod_t = scheduler.alphas_cumprod.to(device)[timesteps]
    target = training_target(latents, noise, alphas_cumprod_t, options.v_parameterization)
    huber_c = None
    if options.loss_type in ("huber", "smooth_l1"):
        huber_c = huber_threshold(
            options.huber_schedule,
            options.huber_c,
            options.huber_scale,
            timesteps,
            alphas_cumprod_t,
            scheduler.config.num_train_timesteps,
        )
    loss = elementwise_loss(model_pred.float(), target.float(), options.loss_type, huber_c)

    # Per-sample mean (over the mask's area when the batch has masks), weighted (prior_loss_weight for reg
    # images), weighted by the SNR options.
    if "masks" in batch:
        loss = masked_mean(loss, batch["masks"].to(device))
    else:
        loss = loss.mean(dim=(1, 2, 3))
    loss = loss * batch["loss_weights"].to(device)
    return snr_weighted(loss, snr(alphas_cumprod_t), options)
