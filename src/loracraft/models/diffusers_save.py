"""A ModelBundle written as a diffusers pipeline folder: what `from_pretrained` (diffusers'
StableDiffusionPipeline / StableDiffusionXLPipeline, and models/diffusers_folder.py) loads.

`unet/`, `vae/`, `text_encoder/` (and SDXL's `text_encoder_2/`) by each model's own `save_pretrained`
(safetensors), `tokenizer/` (`tokenizer_2/`) by the tokenizers', `scheduler/` from the bundle's scheduler
config, and `model_index.json` naming the pipeline and each component's class. The folder is built
beside the target and renamed into place (atomic.atomic_folder).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import diffusers
import torch
from transformers import PreTrainedTokenizerBase

from loracraft.atomic import atomic_folder
from loracraft.models.bundle import ModelBundle
from loracraft.models.tokenizer_source import TOKENIZER_FILES

PIPELINES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}


def save_bundle_folder(
    bundle: ModelBundle, folder: str | os.PathLike, dtype: torch.dtype | None = None
) -> None:
    """Write `bundle` as a diffusers folder at `folder`, its models cast to `dtype` when given (the bundle's
    models are cast in place)."""
    with atomic_folder(folder) as tmp:
        _write(bundle, tmp, dtype)


def _write(bundle: ModelBundle, folder: Path, dtype: torch.dtype | None) -> None:
    models = {"unet": bundle.unet, "vae": bundle.vae, "text_encoder": bundle.text_encoder}
    if bundle.text_encoder_2 is not None:
        models["text_encoder_2"] = bundle.text_encoder_2
    for name, model in models.items():
        if dtype is not None:
            model.to(dtype)
        model.save_pretrained(folder / name)
    tokenizers = dict(zip(("tokenizer", "tokenizer_2"), bundle.tokenizers, strict=False))
    for name, tokenizer in tokenizers.items():
        _save_tokenizer(tokenizer, folder / name)
    scheduler_class = bundle.scheduler_config["_class_name"]
    getattr(diffusers, scheduler_class).from_config(bundle.scheduler_config).save_config(folder / "scheduler")
    index = {
        "_class_name": PIPELINES[bundle.family],
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", scheduler_class],
        **{name: [_library(model), type(model).__name__] for name, model in models.items()},
        **{name: ["transformers", type(tokenizer).__name__] for name, tokenizer in tokenizers.items()},
    }
    if bundle.family == "sdxl":
        index["force_zeros_for_empty_prompt"] = True
    else:
        index |= {
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True), encoding="utf-8")


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """The tokenizer's own save, plus vocab.json and merges.txt from the folder it was read from where the
    save leaves them out (transformers 5 writes tokenizer.json only): loracraft's loader and older
    diffusers read those."""
    tokenizer.save_pretrained(folder)
    source = Path(tokenizer.name_or_path)
    for name in TOKENIZER_FILES:
        if not (folder / name).exists() and (source / name).is_file():
            shutil.copyfile(source / name, folder / name)


def _library(model: torch.nn.Module) -> str:
    return "diffusers" if isinstance(model, diffusers.ModelMixin) else "transformers"
