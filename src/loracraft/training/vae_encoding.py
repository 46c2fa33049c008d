"""Images to latents with the VAE, for the latent caches and for runs that encode every step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    noise_seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """Unscaled float32 latents of images in [-1, 1], on the VAE's device.

    `sampling` is `--latent_sampling`: "sample" takes one random draw from the VAE posterior (what kohya
    caches), "mean" the posterior mean. A VAE with a wide posterior puts the draw's noise into every
    cached latent, where the LoRA learns it as if it were content.

    A half-precision VAE (--mixed_precision without --no_half_vae) can overflow: SDXL's VAE in fp16
    gives NaN latents, which kohya replaces with zeros. Here the VAE switches to float32 for good and
    encodes the chunk again; `on_upcast` gets `vae_upcast_note`. Checking costs a device sync per chunk,
    so only a half-precision VAE is checked.

    `noise_seeds` (one per image) give each image's posterior draw its own generator, so an image's
    latent does not depend on which images were encoded before it or beside it: a disk cache filled in
    two goes (a run killed while caching, then started again) holds what one go would have written.
    Without them the draws come from torch's global generator, as kohya's do.
    """
    seeds = list(noise_seeds) if noise_seeds is not None else None
    with torch.no_grad():
        parts = []
        for start, chunk in zip(
            range(0, len(pixels), vae_batch_size), pixels.split(vae_batch_size), strict=True
        ):
            chunk_seeds = seeds[start : start + len(chunk)] if seeds is not None else None
            latents = _posterior_latents(vae, chunk, sampling, chunk_seeds)
            if vae.dtype != torch.float32 and not torch.isfinite(latents).all():
                half = vae.dtype
                torch.nn.Module.to(vae, dtype=torch.float32)
                latents = _posterior_latents(vae, chunk, sampling, chunk_seeds)
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


def _posterior_latents(
    vae: AutoencoderKL, chunk: torch.Tensor, sampling: LatentSampling, seeds: Sequence[int] | None
) -> torch.Tensor:
    posterior = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
    if sampling == "mean":
        return posterior.mean
    if seeds is None:
        return posterior.sample()
    # diffusers' DiagonalGaussianDistribution.sample, with each image's noise from its own generator.
    noise = torch.stack(
        [
            torch.randn(posterior.mean.shape[1:], generator=torch.Generator().manual_seed(seed))
            for seed in seeds
        ]
    )
    return posterior.mean + posterior.std * noise.to(posterior.mean.device, posterior.mean.dtype)
