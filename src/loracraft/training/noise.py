"""The noise a step adds to the latents: Gaussian, then kohya's offset and multires (pyramid) noise.

`sample_noise` draws in kohya's order (`get_noise_noisy_latents_and_timesteps`): the noise, the offset's
strength and shift, then the multires layers, with their sizes from Python's `random`. Everything is drawn
on the latents' device (kohya draws the multires layers on the CPU and copies them, which waits for the
GPU), so on the CPU a seed gives kohya's noise. The math is in the small functions.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from loracraft.config.loss_options import LossOptions


def offset_noise(
    noise: torch.Tensor, latents: torch.Tensor, offset: float | torch.Tensor, adaptive_scale: float | None
) -> torch.Tensor:
    """Offset noise (crosslabs.org/blog/diffusion-with-offset-noise): one N(0, offset^2) shift per image and
    channel, so the model can change an image's mean brightness.

    With `adaptive_scale`, the offset grows with |mean of each latent channel|, clamped at 0."""
    if adaptive_scale is not None:
        latent_mean = latents.mean(dim=(2, 3), keepdim=True).abs()
        offset = torch.clamp(offset + adaptive_scale * latent_mean, min=0.0)
    shift = torch.randn((latents.shape[0], latents.shape[1], 1, 1), device=latents.device)
    return noise + offset * shift


def pyramid_noise(
    noise: torch.Tensor, iterations: int, discount: float, rng: random.Random | None = None
) -> torch.Tensor:
    """Multires noise: `noise` plus layers of bilinearly upsampled noise, layer i drawn at 1/r^i of the size
    (r uniform in [2, 4), fresh per layer) and scaled by discount^i, stopping at a 1-pixel side; the sum
    is divided by its standard deviation (over the whole batch) to unit variance again.

    Layer 0 is full size: it adds a second full-resolution noise, as kohya's loop does."""
    uniform = (rng or random).random
    batch, channels, height, width = noise.shape
    total = noise.clone()
    for i in range(iterations):
        r = uniform() * 2 + 2
        layer_h, layer_w = max(1, int(height / (r**i))), max(1, int(width / (r**i)))
        layer = torch.randn(batch, channels, layer_h, layer_w, device=noise.device)
        total += F.interpolate(layer, size=(height, width), mode="bilinear") * discount**i
        if layer_h == 1 or layer_w == 1:
            break
    return total / total.std()


def random_strength(strength: float, random_strength: bool, device: torch.device) -> float | torch.Tensor:
    """`strength`, or with `random_strength` strength * U[0, 1), one draw per batch as kohya draws it."""
    if not random_strength:
        return strength
    return torch.rand(1, device=device) * strength


def sample_noise(latents: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The noise to add to `latents` (and, for noise prediction, the target): N(0, 1), then offset noise,
    then multires noise, each when its option is on."""
    noise = torch.randn_like(latents)
    if options.noise_offset:
        offset = random_strength(options.noise_offset, options.noise_offset_random_strength, latents.device)
        noise = offset_noise(noise, latents, offset, options.adaptive_noise_scale)
    if options.multires_noise_iterations:
        noise = pyramid_noise(noise, options.multires_noise_iterations, options.multires_noise_discount)
    return noise


def perturbed_noise(noise: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The noise the latents are noised with: with `ip_noise_gamma`, `noise` plus gamma * N(0, 1) (input
    perturbation, arXiv 2301.11706); the target stays `noise`."""
    if not options.ip_noise_gamma:
        return noise
    gamma = random_strength(options.ip_noise_gamma, options.ip_noise_gamma_random_strength, noise.device)
    return noise + gamma * torch.randn_like(noise)
