"""Shared fixtures: random tiny models with SD1's, SD2's and SDXL's exact topologies, saved the two ways
users bring models.

`tiny_sd1`, `tiny_sd2` and `tiny_sdxl` write each once per session as a diffusers folder and as a single
`.safetensors` in the family's original layout, with its tokenizers beside it (`NAME-tokenizer/`, and
for SDXL `NAME-tokenizer_2/`; see models/tokenizer_source.py); tests load them through the real
loaders, so no in-memory model is kept here. Each is its family's shipped config (models/configs/) with
widths and depths shrunk to the shapes of tests/model_helpers.py. Nothing touches the network.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import diffusers
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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

# The shipped configs with only widths and depths shrunk; the VAE scaling factor differs from the real
# ones so the single file has to carry it in its metadata.
TINY_UNET = {
    "sample_size": 8,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}
TINY_UNETS = {
    "sd1": TINY_UNET,
    # SD2's heads of 64 channels, scaled down to 16.
    "sd2": {**TINY_UNET, "attention_head_dim": [2, 2, 4, 4]},
    # SDXL's depths 1/2/10 as 1/2/2; the add-embedding takes TE2's 32-wide pooled output and six
    # 8-wide size embeddings.
    "sdxl": {
        "sample_size": 8,
        "block_out_channels": [32, 64, 64],
        "transformer_layers_per_block": [1, 2, 2],
        "cross_attention_dim": 64,
        "attention_head_dim": [2, 4, 4],
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 32 + 6 * 8,
    },
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
OPEN_CLIP_PAD = "!"


@dataclass(frozen=True)
class TinyModel:
    family: str
    diffusers_dir: Path
    single_file: Path
    tokenizer_dir: Path
    tokenizer_2_dir: Path | None = None


@dataclass
class _Modules:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection | None

    def configs(self) -> dict[str, dict]:
        configs = {
            "unet": dict(self.unet.config),
            "vae": dict(self.vae.config),
            "text_encoder": self.text_encoder.config.to_dict(),
        }
        if self.text_encoder_2 is not None:
            configs["text_encoder_2"] = self.text_encoder_2.config.to_dict()
        return configs


def _text_config(family: str, component: str, tokenizer: CLIPTokenizer, **extra) -> CLIPTextConfig:
    config = {
        **base_config(family, component),
        **TINY_TEXT_ENCODER,
        **extra,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return CLIPTextConfig(**model_kwargs(config))


def _build_models(family: str, tokenizer: CLIPTokenizer, tokenizer_2: CLIPTokenizer | None) -> _Modules:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**model_kwargs({**base_config(family, "unet"), **TINY_UNETS[family]}))
    vae = AutoencoderKL(**model_kwargs({**base_config(family, "vae"), **TINY_VAE}))
    text_encoder = CLIPTextModel(_text_config(family, "text_encoder", tokenizer))
    text_encoder_2 = None
    if tokenizer_2 is not None:
        config = _text_config(family, "text_encoder_2", tokenizer_2, projection_dim=32)
        text_encoder_2 = CLIPTextModelWithProjection(config)
    return _Modules(unet, vae, text_encoder, text_encoder_2)


def _pad_with(folder: Path, token: str) -> Path:
    """Make the tokenizer in `folder` pad with `token`, as SD2's tokenizer and SDXL's second one do."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        values = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**values, "pad_token": token}, indent=2))
    return folder


_PIPELINES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}


def _save_diffusers(folder: Path, family: str, models: _Modules, tokenizer_dirs: list[Path]) -> None:
    models.unet.save_pretrained(folder / "unet")
    models.vae.save_pretrained(folder / "vae")
    models.text_encoder.save_pretrained(folder / "text_encoder")
    scheduler_config = base_config(family, "scheduler")
    scheduler_class = getattr(diffusers, scheduler_config["_class_name"])
    scheduler_class.from_config(scheduler_config).save_config(folder / "scheduler")
    model_index = {
        "_class_name": _PIPELINES[family],
        "scheduler": ["diffusers", scheduler_config["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if models.text_encoder_2 is not None:
        models.text_encoder_2.save_pretrained(folder / "text_encoder_2")
        model_index |= {
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": True,
        }
    else:
        model_index |= {
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
        }
    for tokenizer_dir, name in zip(tokenizer_dirs, ("tokenizer", "tokenizer_2"), strict=False):
        shutil.copytree(tokenizer_dir, folder / name)
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))


def save_tiny_model(root: Path, family: str) -> TinyModel:
    """A tiny `family` model written as a diffusers folder and as a single file under `root`."""
    single_file = root / "single" / f"tiny-{family}.safetensors"
    tokenizer_dir = build_clip_tokenizer(TINY_WORDS, single_file.with_name(f"tiny-{family}-tokenizer"))
    tokenizer_dirs = [_pad_with(tokenizer_dir, OPEN_CLIP_PAD) if family == "sd2" else tokenizer_dir]
    if family == "sdxl":
        second = build_clip_tokenizer(TINY_WORDS, single_file.with_name(f"tiny-{family}-tokenizer_2"))
        tokenizer_dirs.append(_pad_with(second, OPEN_CLIP_PAD))
    tokenizers = [CLIPTokenizer.from_pretrained(folder) for folder in tokenizer_dirs]
    models = _build_models(family, tokenizers[0], tokenizers[1] if len(tokenizers) > 1 else None)
    _save_diffusers(root / "diffusers", family, models, tokenizer_dirs)
    checkpoint = to_ldm_checkpoint(
        models.unet, models.vae, models.text_encoder, models.text_encoder_2, family=family
    )
    write_checkpoint(single_file, checkpoint, config_metadata(models.configs()))
    return TinyModel(
        family=family,
        diffusers_dir=root / "diffusers",
        single_file=single_file,
        tokenizer_dir=tokenizer_dir,
        tokenizer_2_dir=tokenizer_dirs[1] if len(tokenizer_dirs) > 1 else None,
    )


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> TinyModel:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_sd1"), "sd1")


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory) -> TinyModel:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_sd2"), "sd2")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> TinyModel:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_sdxl"), "sdxl")


@pytest.fixture(scope="session")
def tiny_sd1_bundle(tiny_sd1) -> ModelBundle:
    """The tiny model loaded from its diffusers folder. Shared: tests must not modify it."""
    return load_model_bundle(tiny_sd1.diffusers_dir)


@pytest.fixture(scope="session")
def tiny_sd2_bundle(tiny_sd2) -> ModelBundle:
    """Shared: tests must not modify it."""
    return load_model_bundle(tiny_sd2.diffusers_dir)


@pytest.fixture(scope="session")
def tiny_sdxl_bundle(tiny_sdxl) -> ModelBundle:
    """Shared: tests must not modify it."""
    return load_model_bundle(tiny_sdxl.diffusers_dir)


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


@pytest.fixture(autouse=True, scope="session")
def _tests_cache_folder(tmp_path_factory):
    """A finished run records its speed in the user's cache folder (training/throughput_record.py); the
    tests' runs record theirs in a temporary one (child processes inherit it)."""
    os.environ["LORACRAFT_CACHE"] = str(tmp_path_factory.mktemp("loracraft-cache"))
