"""What the run caches before training: fingerprints of the encoders, static captions, text states, and
the `--cache_only` pass that fills the disk caches and stops."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from loracraft.config.schema import TrainConfig
from loracraft.data.cache_fill import LatentCacheJob, TextCacheJob, fill_disk_caches
from loracraft.data.captions import CaptionMoment, process_caption
from loracraft.data.plan import DatasetPlan
from loracraft.data.text_cache import TextOutput, cache_text_states, text_cache_file_paths
from loracraft.models.bundle import ModelBundle
from loracraft.models.text_encoding import (
    encode_captions,
    encode_sdxl_captions,
    encode_weighted_captions,
)
from loracraft.training.accelerator import release_cached_memory, shows_progress
from loracraft.training.vae_encoding import encode_images

TextInputs = tuple[list[torch.Tensor] | None, list[Path] | None]


def weights_fingerprint(module: torch.nn.Module, *extra: object) -> str:
    """A short hash of a module's weights (and settings): a disk cache made with other weights is stale."""
    digest = hashlib.sha256(repr(extra).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def static_captions(plan: DatasetPlan) -> list[str]:
    """Each planned image's final caption. Only for static caption options (the config enforces it),
    where the random source and the epoch cannot change the result."""
    return [
        process_caption(
            image.record.caption, plan.subsets[image.subset_index].options, random.Random(0), CaptionMoment()
        )
        for image in plan.images
    ]


def text_encoder_job(config: TrainConfig, bundle: ModelBundle, device: torch.device) -> TextCacheJob:
    """How captions become cached text-encoder outputs: states, with SDXL's pooled output beside them."""

    def encode(captions: list[str]) -> TextOutput:
        text_encoders = [text_encoder.to(device) for text_encoder in bundle.text_encoders]
        with torch.no_grad():
            if bundle.family == "sdxl":
                states, pooled = encode_sdxl_captions(
                    bundle.tokenizers, text_encoders, captions, config.token_length, config.weighted_captions
                )
                return states.float().cpu(), pooled.float().cpu()
            encode_fn = encode_weighted_captions if config.weighted_captions else encode_captions
            states = encode_fn(
                bundle.tokenizer, text_encoders[0], captions, config.token_length, config.clip_skip
            )
        return states.float().cpu()

    # SDXL ignores clip_skip, so it does not make its caches stale.
    clip_skip = None if bundle.family == "sdxl" else config.clip_skip
    identity = weights_fingerprint(
        torch.nn.ModuleList(bundle.text_encoders), clip_skip, config.token_length, config.weighted_captions
    )
    return TextCacheJob(
        captions=(),
        encode=encode,
        identity=identity,
        batch_size=config.vae_batch_size,
        family=cache_family(bundle.family),
    )


def cache_family(family: str) -> str:
    """The family tag of cache file names: SD1 and SD2 share kohya's `sd`, SDXL has its own."""
    return "sdxl" if family == "sdxl" else "sd"


def cached_text_inputs(
    config: TrainConfig,
    plan: DatasetPlan,
    bundle: ModelBundle,
    device: torch.device,
    echo: Callable[[str], None],
) -> TextInputs:
    """Text-encoder outputs for every planned image when --cache_text_encoder_outputs is on."""
    if not config.cache_text_encoder_outputs:
        return None, None
    job = text_encoder_job(config, bundle, device)
    captions = static_captions(plan)
    if not config.cache_text_encoder_outputs_to_disk:
        states = cache_text_states(
            captions,
            encode=job.encode,
            identity=job.identity,
            batch_size=job.batch_size,
            progress=shows_progress(),
        )
        return states, None
    files = text_cache_file_paths([image.record.path for image in plan.images], captions, job.family)
    files, report = cache_text_states(
        captions,
        encode=job.encode,
        identity=job.identity,
        batch_size=job.batch_size,
        files=files,
        progress=shows_progress(),
    )
    for warning in report.warnings:
        echo(f"warning: {warning}")
    echo(f"text-encoder cache: {report.encoded} encoded, {report.loaded} reused from disk")
    return None, files


def latent_job(
    config: TrainConfig, plan: DatasetPlan, bundle: ModelBundle, device: torch.device
) -> LatentCacheJob:
    def encode(pixels: torch.Tensor, noise_seeds: Sequence[int] | None = None) -> torch.Tensor:
        # The VAE goes to the device at the first image to encode: a current disk cache needs none.
        vae = bundle.vae.to(device)
        latents = encode_images(
            vae, pixels, config.vae_batch_size, config.latent_sampling, noise_seeds=noise_seeds
        ).cpu()
        # kohya frees the GPU's cached memory after every cached batch, so a small GPU does not fill up
        # across bucket shapes; --highvram keeps it.
        if not config.highvram:
            release_cached_memory(device)
        return latents

    # One subset that flips or masks makes every cache entry hold the mirrored latents or the mask.
    return LatentCacheJob(
        encode=encode,
        vae_identity=weights_fingerprint(bundle.vae),
        vae_batch_size=config.vae_batch_size,
        latent_sampling=config.latent_sampling,
        family=cache_family(bundle.family),
        flip_aug=any(subset.options.flip_aug for subset in plan.subsets),
        alpha_mask=any(subset.options.alpha_mask for subset in plan.subsets),
        per_image_noise=True,
    )


def fill_caches_only(
    config: TrainConfig,
    plan: DatasetPlan,
    bundle: ModelBundle,
    device: torch.device,
    echo: Callable[[str], None],
) -> str:
    """`--cache_only`: write the latent disk caches (and text-encoder caches when enabled) of the
    training images and of the held-out validation images, then stop."""
    summaries = []
    for part in (plan, plan.validation):
        if part is None:
            continue
        text = None
        if config.cache_text_encoder_outputs:
            job = text_encoder_job(config, bundle, device)
            text = TextCacheJob(static_captions(part), job.encode, job.identity, job.batch_size, job.family)
        summary, warnings = fill_disk_caches(
            part.images, latents=latent_job(config, part, bundle, device), text=text
        )
        for warning in warnings:
            echo(f"warning: {warning}")
        summaries.append(
            summary if part is plan else f"validation set: {summary.removeprefix('cache_only: ')}"
        )
    return "\n".join(summaries)
