"""Images to latents with the VAE, for the latent caches and for runs that encode every step."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import AutoencoderKL

LatentSampling = Literal["sample", "mean"]


def encode_images(
    vae: AutoencoderKL, pixels: torch.Tensor, vae_batch_size: int, sampling: LatentSampling
) -> torch.Tensor:
    """Unscaled float32 latents of images in [-1, 1], on the VAE's device.

    `sampling` is `--latent_sampling`: "sample" takes one random draw from the VAE posterior (what kohya
    caches), "mean" the posterior mean. A VAE with a wide posterior puts the draw's noise into every
    cached latent, where the LoRA learns it as if it were content.
    """
    with torch.no_grad():
        parts = []
        for chunk in pixels.split(vae_batch_size):
            posterior = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
            parts.append(posterior.mean if sampling == "mean" else posterior.sample())
    return torch.cat(parts).float()
