"""Run settings: where the data comes from, how captions are encoded and what is cached."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from loracraft.config.fields import CACHING, CAPTIONS, DATASET, flag
from loracraft.config.values import OptionalPath


class DataOptions(BaseModel):
    """The run's data sources, text-encoder input and caches (the per-folder options are SubsetOptions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_data_dir: OptionalPath = flag(
        None,
        DATASET,
        "Folder of kohya concept folders named N_concept (N = repeats), each holding images and captions.",
    )
    reg_data_dir: OptionalPath = flag(
        None,
        DATASET,
        "Folder of regularization concept folders (N_class). Balanced against the training images as kohya "
        "does, so each epoch holds about as many reg samples as training samples (steps roughly double).",
    )
    dataset_config: OptionalPath = flag(
        None,
        DATASET,
        "kohya dataset TOML ([general], [[datasets]], [[datasets.subsets]]). Its keys override these flags "
        "(subset > dataset > general > flags); train_data_dir and reg_data_dir are then ignored.",
    )
    prior_loss_weight: float = flag(
        1.0, DATASET, "Loss weight of regularization images.", ss_key="ss_prior_loss_weight", ge=0
    )

    clip_skip: int | None = flag(
        None,
        CAPTIONS,
        "Use the output of the N-th text-encoder layer from the end (2 for NovelAI-based anime models); "
        "1 or empty is the last layer.",
        ss_key="ss_clip_skip",
        gui_default=1,
        ge=1,
        le=12,
    )
    max_token_length: Literal[75, 150, 225] | None = flag(
        None,
        CAPTIONS,
        "Caption length in tokens: 75, 150 or 225 (long captions are encoded in 75-token chunks); "
        "empty = 75.",
        ss_key="ss_max_token_length",
        gui_default=75,
    )
    weighted_captions: bool = flag(
        False, CAPTIONS, "Read A1111 emphasis in captions: (word:1.3), (word) = x1.1, [word] = /1.1."
    )

    cache_latents: bool = flag(
        False,
        CACHING,
        "Encode every image with the VAE once before training and keep the latents in memory (much "
        "faster steps; needs no color_aug, random_crop or face_crop_aug_range).",
        ss_key="ss_cache_latents",
        gui_default=True,
    )
    cache_latents_to_disk: bool = flag(
        False,
        CACHING,
        "Keep latent caches as .npz files beside the images, reused by later runs; recomputed when the image, "
        "its bucket or the VAE changed. Implies cache_latents.",
    )
    vae_batch_size: int = flag(1, CACHING, "Images per VAE call when caching latents.", ge=1)
    latent_sampling: Literal["sample", "mean"] = flag(
        "sample",
        CACHING,
        "How an image's latent is read from the VAE: 'sample' draws from the VAE's posterior, as kohya "
        "does; 'mean' takes the posterior mean. Real SD VAEs have a tiny posterior spread, so the choice "
        "matters little there; a VAE with a wide spread (loracraft's tiny model) makes the draw's noise "
        "part of what the LoRA learns, and 'mean' avoids that (loracraft's own option).",
    )
    max_data_loader_n_workers: int = flag(
        8,
        CACHING,
        "Data-loader worker processes, at most one per CPU core. 0 loads in the training process, which is "
        "fastest when latents are cached (and the kohya_ss GUI's choice).",
        ge=0,
        gui_default=0,
        resume_safe=True,
    )
    persistent_data_loader_workers: bool = flag(
        False,
        CACHING,
        "Keep data-loader workers alive between epochs (no pause at each epoch start).",
        resume_safe=True,
    )
    cache_text_encoder_outputs: bool = flag(
        False,
        CACHING,
        "Encode every caption once before training. Needs static captions (no shuffle, dropout or wildcards) "
        "and a frozen text encoder (--network_train_unet_only). kohya: SDXL only; loracraft caches SD1's too.",
    )
    cache_text_encoder_outputs_to_disk: bool = flag(
        False,
        CACHING,
        "Keep text-encoder output caches as files beside the images. Implies cache_text_encoder_outputs. "
        "kohya: SDXL only.",
    )
    cache_only: bool = flag(
        False,
        CACHING,
        "Write the latent disk caches (and text-encoder caches with cache_text_encoder_outputs) beside the "
        "images, then exit without training: prepare on one machine, train on another (loracraft's own "
        "option; kohya has it in its separate caching scripts).",
    )
    skip_bad_images: bool = flag(
        False,
        CACHING,
        "Skip unreadable images with a warning naming each. Default: stop before training and list them "
        "(loracraft's own option).",
    )

    @model_validator(mode="before")
    @classmethod
    def _disk_cache_implies_cache(cls, data: object) -> object:
        # kohya: --cache_latents_to_disk implies --cache_latents.
        if isinstance(data, dict) and data.get("cache_latents_to_disk") is True:
            data = {**data, "cache_latents": True}
        if isinstance(data, dict) and data.get("cache_text_encoder_outputs_to_disk") is True:
            data = {**data, "cache_text_encoder_outputs": True}
        return data

    @property
    def token_length(self) -> int:
        """--max_token_length, or 75 (one CLIP window) when it is not given."""
        return self.max_token_length or 75

    @property
    def data_loader_workers(self) -> int:
        """--max_data_loader_n_workers, at most one per CPU core (as kohya caps it)."""
        return min(self.max_data_loader_n_workers, os.cpu_count() or 1)
