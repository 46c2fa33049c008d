"""One training step: the diffusion loss of a batch, read top to bottom."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from loracraft.models.text_encoding import encode_captions, encode_weighted_captions


@dataclass
class StepModels:
    """What a step needs: the frozen base (with LoRA patched in) and how to read captions."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: object
    vae: AutoencoderKL
    noise_scheduler: DDPMScheduler
    vae_scaling_factor: float
    weight_dtype: torch.dtype
    train_text_encoder: bool
    max_token_length: int
    clip_skip: int | None
    weighted_captions: bool = False

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        encode = encode_weighted_captions if self.weighted_captions else encode_captions
        return encode(self.tokenizer, self.text_encoder, captions, self.max_token_length, self.clip_skip)


def encode_images(vae: AutoencoderKL, pixels: torch.Tensor, vae_batch_size: int) -> torch.Tensor:
    """Unscaled latents of images in [-1, 1]; a random draw from the VAE posterior, as kohya caches."""
    with torch.no_grad():
        parts = [
            vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist.sample()
            for chunk in pixels.split(vae_batch_size)
        ]
    return torch.cat(parts).float()


def training_target(
    noise_scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the U-Net learns to predict: the added noise (epsilon prediction, SD1's parameterization).

    It takes what a v-prediction target needs too (the scheduler, clean latents, timesteps)."""
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
    # Latents come from the cache when it is on; otherwise encode the images now.
    if "latents" in batch:
        latents = batch["latents"].to(device)
    else:
        latents = encode_images(models.vae, batch["pixels"].to(device), vae_batch_size=len(batch["pixels"]))
    latents = latents * models.vae_scaling_factor

    # Text conditioning from the cache, or encoded now; gradients reach the text encoder only when its
    # LoRA is trained.
    if "text_states" in batch:
        encoder_hidden_states = batch["text_states"].to(device)
    else:
        with torch.set_grad_enabled(models.train_text_encoder):
            encoder_hidden_states = models.encode_text(batch["captions"])

    # Sample the noise to add and a random timestep for each image.
    noise = torch.randn_like(latents)
    num_timesteps = models.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_timesteps, (latents.shape[0],), device=device).long()

    # Forward diffusion: noisy latents at each image's timestep.
    noisy_latents = models.noise_scheduler.add_noise(latents, noise, timesteps)

    # The U-Net predicts the noise that was added.
    model_pred = models.unet(
        noisy_latents.to(models.weight_dtype), timesteps, encoder_hidden_states.to(models.weight_dtype)
    ).sample

    # Per-sample MSE against the target, weighted (prior_loss_weight for reg images), then averaged.
    target = training_target(models.noise_scheduler, latents, noise, timesteps)
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    if "masks" in batch:
        loss = masked_mean(loss, batch["masks"].to(device))
    else:
        loss = loss.mean(dim=(1, 2, 3))
    loss = loss * batch["loss_weights"].to(device)
    return loss.mean()
