"""Shared fixtures: a random tiny model with SD1's exact topology, saved the two ways users bring models.

`tiny_sd1` writes it once per session as a diffusers folder and as an LDM single `.safetensors` with its
tokenizer beside it (`NAME-tokenizer/`, see models/tokenizer_source.py); tests load it through the real
loaders, so no in-memory model is kept here. Nothing touches the network.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from loracraft.models.bundle import ModelBundle
from loracraft.models.checkpoint_file import write_checkpoint
from loracraft.models.config_inference import base_config, model_kwargs
from loracraft.models.config_metadata import config_metadata
from loracraft.models.ldm_convert import to_ldm_checkpoint
from loracraft.models.loading import load_model_bundle
from loracraft.models.tokenizer_build import build_clip_tokenizer

TINY_WORDS = (
    "a an the of on in with and shape circle square triangle star red green blue yellow orange purple white "
    "black grey background small large photo picture drawing style sks ohwx zwx"
).split()

# SD1.5's configs with only widths and depths shrunk; the VAE scaling factor differs from SD1.5's 0.18215
# so the single file has to carry it in its metadata.
TINY_UNET = {
    "sample_size": 8,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}
TINY_VAE = {
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.5,
}
TINY_TEXT_ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
}


@dataclass(frozen=True)
class TinySD1:
    diffusers_dir: Path
    single_file: Path
    tokenizer_dir: Path


def _build_models(tokenizer: CLIPTokenizer) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**model_kwargs({**base_config("sd1", "unet"), **TINY_UNET}))
    vae = AutoencoderKL(**model_kwargs({**base_config("sd1", "vae"), **TINY_VAE}))
    text_config = {
        **base_config("sd1", "text_encoder"),
        **TINY_TEXT_ENCODER,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text_encoder = CLIPTextModel(CLIPTextConfig(**model_kwargs(text_config)))
    return unet, vae, text_encoder


def _save_diffusers(folder: Path, unet, vae, text_encoder, tokenizer_dir: Path) -> None:
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    shutil.copytree(tokenizer_dir, folder / "tokenizer")
    PNDMScheduler.from_config(base_config("sd1", "scheduler")).save_config(folder / "scheduler")
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> TinySD1:
    root = tmp_path_factory.mktemp("tiny_sd1")
    single_file = root / "single" / "tiny-sd1.safetensors"
    tokenizer_dir = build_clip_tokenizer(TINY_WORDS, single_file.with_name("tiny-sd1-tokenizer"))
    unet, vae, text_encoder = _build_models(CLIPTokenizer.from_pretrained(tokenizer_dir))
    _save_diffusers(root / "diffusers", unet, vae, text_encoder, tokenizer_dir)
    configs = {
        "unet": dict(unet.config),
        "vae": dict(vae.config),
        "text_encoder": text_encoder.config.to_dict(),
    }
    write_checkpoint(single_file, to_ldm_checkpoint(unet, vae, text_encoder), config_metadata(configs))
    return TinySD1(diffusers_dir=root / "diffusers", single_file=single_file, tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_sd1_bundle(tiny_sd1) -> ModelBundle:
    """The tiny model loaded from its diffusers folder. Shared: tests must not modify it."""
    return load_model_bundle(tiny_sd1.diffusers_dir)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly on machines without CUDA (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    # Tiny models: one thread is as fast, and torch's worker threads stall when the cores are shared.
    torch.set_num_threads(1)
