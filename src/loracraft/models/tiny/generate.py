"""Text-to-image with the tiny model through diffusers' own SD pipeline and SD1.5's DDIM settings."""

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from loracraft.models.tiny.architecture import IMAGE_SIZE, SD15_SCHEDULER_CONFIG


def tiny_pipeline(
    unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer
) -> StableDiffusionPipeline:
    """A plain SD pipeline; a tiny model has no safety checker, so none is wired in."""
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(
    pipeline: StableDiffusionPipeline,
    prompts: list[str],
    seeds: list[int],
    steps: int = 20,
    guidance: float = 3.0,
) -> list[Image.Image]:
    """One image per (prompt, seed) pair, each from its own generator so batching never changes pixels."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    with torch.no_grad():
        result = pipeline(
            prompt=prompts,
            generator=generators,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
        )
    return result.images
