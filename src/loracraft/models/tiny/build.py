"""The loracraft-tiny recipe: data, the two training stages, and the files the package ships.

Every random choice flows from ``Recipe.seed``; with the same torch build and thread count the same
recipe gives the same weights. ``scripts/build_tiny_model.py`` runs it.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from loracraft.models.checkpoint_file import write_checkpoint
from loracraft.models.config_metadata import config_metadata
from loracraft.models.ldm_convert import to_ldm_checkpoint
from loracraft.models.tiny.architecture import (
    MAX_TOKENS,
    TEXT_ENCODER_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
    build_text_encoder,
    build_unet,
)
from loracraft.models.tiny.palette import BACKGROUNDS, BASE_COLOURS, COLOURS, SHAPES
from loracraft.models.tiny.shapes import caption_for, draw, sample_specs
from loracraft.models.tiny.train_base import train_base
from loracraft.models.tiny.train_vae import encode_latents, scaling_factor, to_tensor, train_vae
from loracraft.models.tokenizer_build import build_clip_tokenizer

CHECKPOINT_NAME = "loracraft-tiny.safetensors"
TOKENIZER_NAME = "loracraft-tiny-tokenizer"


@dataclass(frozen=True)
class Recipe:
    """The recipe of the shipped weights (the README's build log): about 26 minutes on two idle cores."""

    seed: int = 0
    vae_images: int = 4000
    vae_steps: int = 600
    vae_batch: int = 32
    vae_lr: float = 2e-3
    base_images: int = 6000
    unet_steps: int = 1800
    unet_batch: int = 64
    unet_lr: float = 1e-3


@dataclass(frozen=True)
class TinyModel:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer


def tokenizer_words() -> list[str]:
    """Every caption word, plus the VAE-only colour names so a LoRA can bind them as single tokens."""
    return [*caption_for("", "", "").split(), *COLOURS, *BACKGROUNDS, *SHAPES]


def _token_ids(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids


def build_tiny_model(out_dir: Path, recipe: Recipe, log: Callable[[str], None]) -> TinyModel:
    """Train both stages in fp32. The tokenizer is written into ``out_dir`` first: it sizes the text encoder."""
    torch.manual_seed(recipe.seed)
    tokenizer_dir = build_clip_tokenizer(tokenizer_words(), out_dir / TOKENIZER_NAME)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)

    start = time.perf_counter()
    # The VAE sees every palette colour; the U-Net's captions name only the base ones (palette.py says why).
    vae_specs = sample_specs(recipe.vae_images, recipe.seed + 1, colours=tuple(COLOURS))
    vae = train_vae(
        to_tensor([draw(s) for s in vae_specs]),
        recipe.vae_steps,
        recipe.vae_batch,
        recipe.vae_lr,
        recipe.seed + 2,
        log,
    )
    log(f"vae stage done in {time.perf_counter() - start:.0f} s")

    start = time.perf_counter()
    base_specs = sample_specs(recipe.base_images, recipe.seed + 3, colours=BASE_COLOURS)
    latents = encode_latents(vae, to_tensor([draw(s) for s in base_specs]))
    factor = scaling_factor(latents)
    vae.register_to_config(scaling_factor=factor)
    log(f"latent std {1 / factor:.4f} -> scaling factor {factor:.4f}")
    captions = [caption_for(s.shape, s.colour, s.background) for s in base_specs]
    unet = build_unet()
    text_encoder = build_text_encoder(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    train_base(
        unet,
        text_encoder,
        latents * factor,
        _token_ids(tokenizer, captions),
        _token_ids(tokenizer, [""])[0],
        recipe.unet_steps,
        recipe.unet_batch,
        recipe.unet_lr,
        recipe.seed + 4,
        log,
    )
    log(f"unet + text encoder stage done in {time.perf_counter() - start:.0f} s")
    return TinyModel(unet, vae, text_encoder, tokenizer)


def save_checkpoint(model: TinyModel, out_dir: Path) -> Path:
    """The SD single file, in fp16 to halve it (the build log compares recognition before and after)."""
    checkpoint = out_dir / CHECKPOINT_NAME
    tensors = {
        key: value.half() if value.is_floating_point() else value
        for key, value in to_ldm_checkpoint(model.unet, model.vae, model.text_encoder).items()
    }
    configs = {
        "unet": UNET_CONFIG,
        "vae": {**VAE_CONFIG, "scaling_factor": model.vae.config.scaling_factor},
        "text_encoder": TEXT_ENCODER_CONFIG,
    }
    write_checkpoint(checkpoint, tensors, {**config_metadata(configs), "loracraft.model": "loracraft-tiny"})
    return checkpoint
