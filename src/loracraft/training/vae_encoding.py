"""Images to latents with the VAE, for the latent caches and for runs that encode every step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from diffusers import AutoencoderKL

LatentSampling = Literal["sample", "mean"]


def encode_images(
    vae: AutoencoderKL,
    pixels: torch.Tensor,
    vae_batch_size: int,
    sampling: LatentSampling,
    on_upcast: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Unscaled float32 latents of images in [-1, 1], on the VAE's device.

    `sampling` is `--latent_sampling`: "sample" takes one random draw from the VAE posterior (what kohya
    caches), "mean" the posterior mean. A VAE with a wide posterior puts the draw's noise into every
    cached latent, where the LoRA learns it as if it were content.

    A half-precision VAE (--mixed_precision without --no_half_vae) can overflow: SDXL's VAE in fp16
    gives NaN latents, which kohya replaces with zeros. Here the VAE switches to float32 for good and
    encodes the chunk again; `on_upcast` gets `vae_upcast_note`. Checking costs a device sync per chunk,
    so only a half-precision VAE is checked.
    """
    with torch.no_grad():
        parts = []
        for chunk in pixels.split(vae_batch_size):
            latents = _posterior_latents(vae, chunk, sampling)
            if vae.dtype != torch.float32 and not torch.isfinite(latents).all():
                half = vae.dtype
                torch.nn.Module.to(vae, dtype=torch.float32)
                latents = _posterior_latents(vae, chunk, sampling)
                if on_upcast is not None:
                    on_upcast(vae_upcast_note(half))
            parts.append(latents.float())
    return torch.cat(parts)


def vae_upcast_note(half: torch.dtype) -> str:
    """What a run says when its VAE left `half` for float32."""
    name = str(half).removeprefix("torch.")
    return (
        f"the VAE gave NaN/inf latents in {name} (a half-precision overflow), so it runs in float32 for "
        "the rest of the run; --no_half_vae starts it there"
    )


def _posterior_latents(vae: AutoencoderKL, chunk: torch.Tensor, sampling: LatentSampling) -> torch.Tensor:
    posterior = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
    return posterior.mean if sampling == "mean" else posterior.sample()
