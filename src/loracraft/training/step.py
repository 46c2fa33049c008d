"""One training step: the diffusion loss of a batch, read top to bottom."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from loracraft.data.latent_cache import Encoder


@dataclass(frozen=True)
class StepModels:
    """What a step needs.

    `model` is the prepared `LoRADiffusionModel` (the U-Net, the text encoder and the LoRA, run under the
    run's precision context). `encode_images` turns a batch's pixels into unscaled latents with the VAE;
    it is None when the latents are cached, so the step holds no VAE.
    """

    model: nn.Module
    noise_scheduler: DDPMScheduler
    vae_scaling_factor: float
    encode_images: Encoder | None


def training_target(noise: torch.Tensor) -> torch.Tensor:
    """What the U-Net learns to predict: the added noise (epsilon prediction, SD1's parameterization)."""
    return noise


def masked_mean(loss: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of the loss over the masked area (alpha_mask).

    The pixel mask is shrunk to latent size by area averaging. kohya divides by every element, so a
    half-transparent image trains at half strength; dividing by the mask's own area keeps the strength.
    """
    mask = F.interpolate(masks.float(), size=loss.shape[-2:], mode="area")
    weighted = (loss * mask).sum(dim=(1, 2, 3))
    area = mask.sum(dim=(1, 2, 3)) * loss.shape[1]
    return weighted / area.clamp(min=1e-6)


def diffusion_loss(models: StepModels, batch: dict, device: torch.device) -> torch.Tensor:
    """Epsilon-prediction MSE of one batch, each sample weighted by its loss weight."""
    # Latents come from the cache when it is on; otherwise the VAE encodes the images now.
    if "latents" in batch:
        latents = batch["latents"].to(device)
    else:
        latents = models.encode_images(batch["pixels"].to(device))
    latents = latents * models.vae_scaling_factor

    # Sample the noise to add and a random timestep for each image.
    noise = torch.randn_like(latents)
    num_timesteps = models.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_timesteps, (latents.shape[0],), device=device).long()

    # Forward diffusion: noisy latents at each image's timestep.
    noisy_latents = models.noise_scheduler.add_noise(latents, noise, timesteps)

    # The U-Net predicts the noise that was added, conditioned on the captions (encoded inside the
    # model, through the text encoder's LoRA) or on the cached text-encoder outputs.
    text_states = batch["text_states"].to(device) if "text_states" in batch else None
    model_pred = models.model(noisy_latents, timesteps, batch["captions"], text_states)

    # Per-sample MSE against the target, weighted (prior_loss_weight for reg images), then averaged.
    target = training_target(noise)
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    if "masks" in batch:
        loss = masked_mean(loss, batch["masks"].to(device))
    else:
        loss = loss.mean(dim=(1, 2, 3))
    loss = loss * batch["loss_weights"].to(device)
    return loss.mean()
