"""Drawing one sample image: the denoising loop over the models as they are (nothing is copied).

The loop is diffusers' text-to-image loop written out (scale the input, predict, classifier-free guidance,
scheduler step), so it runs the same on every diffusers version and needs no pipeline object, whose
idea of "the device" breaks when the text encoders are parked on the CPU. The U-Net is called with the
LoRA patched in as it is; SDXL gets its size conditioning (original size = target size = the image's,
crop 0, 0, as kohya's SDXL pipeline passes them) and TE2's pooled output.

Each image draws its starting noise (and an ancestral sampler's noise) from its own CPU generator seeded
with the image's seed: its random draws never depend on the other prompts, on the device, or on the
global random state, which this module never touches. The U-Net runs under `autocast` (the run's precision);
the VAE decodes outside it in its own dtype, and a half-precision VAE that overflows (NaN pixels, the
classic black SDXL sample) decodes once more in float32, then goes back to its dtype.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from loracraft.sampling.prompt_encoding import encode_prompts
from loracraft.sampling.prompts import SamplePrompt
from loracraft.sampling.samplers import make_sampler
from loracraft.training.diffusion_model import takes_size_conditioning


@dataclass(frozen=True)
class SamplingModels:
    """The models images are drawn with, where they are: the U-Net (with any LoRA patched in), the VAE
    and the text encoders (SD1/SD2: one; SDXL: TE1, TE2) with their tokenizers."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: Sequence[torch.nn.Module]
    tokenizers: Sequence
    clip_skip: int | None = None
    v_prediction: bool = False
    zero_terminal_snr: bool = False


@dataclass(frozen=True)
class RenderedImage:
    image: Image.Image
    seed: int
    """The seed drawn with: the prompt's, or the random one chosen for a prompt without."""
    sampler: str
    problem: str | None
    """Why the image is no picture (all black, NaN); None when it is fine."""


def render_image(
    models: SamplingModels,
    prompt: SamplePrompt,
    *,
    default_sampler: str,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
) -> RenderedImage:
    """Draw `prompt` (its sampler, or `default_sampler`) with the U-Net on `device`."""
    seed = prompt.seed if prompt.seed is not None else random.SystemRandom().randrange(2**32)
    sampler = prompt.sampler or default_sampler
    scheduler = make_sampler(
        sampler, v_prediction=models.v_prediction, zero_terminal_snr=models.zero_terminal_snr
    )
    generator = torch.Generator().manual_seed(seed)
    guided = prompt.scale > 1.0  # diffusers' and kohya's rule: a scale of 1 or less is no guidance
    with torch.no_grad():
        with autocast():
            condition = _conditioning(models, prompt, guided, device)
            latents = _denoise(models, scheduler, condition, prompt, guided, generator, device)
        pixels = _decode(models.vae, latents)
    image = _to_image(pixels)
    return RenderedImage(image, seed, sampler, _problem(latents, pixels, image))


def _problem(latents: torch.Tensor, pixels: torch.Tensor, image: Image.Image) -> str | None:
    if not torch.isfinite(latents).all():
        return "the U-Net gave NaN/inf latents"
    if not torch.isfinite(pixels).all():
        return "the VAE gave NaN/inf pixels, even in float32"
    if not np.asarray(image).any():
        return "the image is all black"
    return None


@dataclass(frozen=True)
class _Conditioning:
    states: torch.Tensor
    pooled: torch.Tensor | None
    time_ids: torch.Tensor | None


def _conditioning(
    models: SamplingModels, prompt: SamplePrompt, guided: bool, device: torch.device
) -> _Conditioning:
    """Text states (negative first when guided, as diffusers batches them) and SDXL's extra inputs."""
    texts = [prompt.negative_prompt or "", prompt.prompt] if guided else [prompt.prompt]
    states, pooled = encode_prompts(models.tokenizers, models.text_encoders, texts, models.clip_skip)
    if not takes_size_conditioning(models.unet):
        return _Conditioning(states.to(device), None, None)
    size = [prompt.height, prompt.width]
    time_ids = torch.tensor([size + [0, 0] + size] * len(texts), dtype=torch.float32, device=device)
    return _Conditioning(states.to(device), pooled.to(device), time_ids)


def _denoise(
    models: SamplingModels,
    scheduler: SchedulerMixin,
    condition: _Conditioning,
    prompt: SamplePrompt,
    guided: bool,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    unet = models.unet
    scale_factor = 2 ** (len(models.vae.config.block_out_channels) - 1)
    shape = (1, unet.config.in_channels, prompt.height // scale_factor, prompt.width // scale_factor)
    scheduler.set_timesteps(prompt.steps, device=device)
    latents = torch.randn(shape, generator=generator).to(device) * scheduler.init_noise_sigma
    step_arguments = (
        {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    )
    added = None
    if condition.time_ids is not None:
        added = {"text_embeds": condition.pooled, "time_ids": condition.time_ids}
    for timestep in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, timestep)
        prediction = unet(model_input, timestep, condition.states, added_cond_kwargs=added).sample.float()
        if guided:
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + prompt.scale * (conditional - unconditional)
        latents = scheduler.step(prediction, timestep, latents, **step_arguments).prev_sample
    return latents


def _decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (float32, CPU) from the VAE in its own dtype, or float32 where that overflows."""
    scaled = latents / vae.config.scaling_factor
    pixels = vae.decode(scaled.to(vae.device, vae.dtype)).sample
    half = vae.dtype
    if half != torch.float32 and not torch.isfinite(pixels).all():
        torch.nn.Module.to(vae, dtype=torch.float32)
        try:
            pixels = vae.decode(scaled.to(vae.device, torch.float32)).sample
        finally:
            torch.nn.Module.to(vae, dtype=half)
    return pixels.float().cpu()


def _to_image(pixels: torch.Tensor) -> Image.Image:
    # NaN pixels become 0 (black), as they do in every pipeline; the caller reports them.
    values = (torch.nan_to_num(pixels[0], nan=-1.0) / 2 + 0.5).clamp(0, 1)
    return Image.fromarray((values.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
