"""ModelBundle: everything training needs from a base model, in fp32, frozen, in eval mode, on the CPU."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer


@dataclass
class ModelBundle:
    family: str  # "sd1" | "sd2" | "sdxl"
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    vae: AutoencoderKL
    scheduler_config: dict[str, Any]  # for DDPMScheduler.from_config (noise) and samplers
    source: Path
    vae_source: Path | None = None  # the --vae that replaced the model's own VAE
