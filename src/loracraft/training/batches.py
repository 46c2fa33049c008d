"""The run's batches: latents cached (in memory or on disk) when the options allow, then a loader."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from loracraft.config.schema import TrainConfig
from loracraft.data.dataset import BucketBatchDataset, batch_loader
from loracraft.data.latent_cache import cache_latents_to_disk, encode_latents_in_memory
from loracraft.data.plan import DatasetPlan
from loracraft.data.text_cache import TextOutput
from loracraft.models.bundle import ModelBundle
from loracraft.training.accelerator import shows_progress
from loracraft.training.caching import latent_job


def make_batch_loader(
    config: TrainConfig,
    plan: DatasetPlan,
    bundle: ModelBundle,
    device: torch.device,
    echo: Callable[[str], None],
    *,
    text_states: Sequence[TextOutput] | None = None,
    text_state_files: Sequence[Path] | None = None,
) -> DataLoader:
    """The loader of the run (one item per batch); `text_states`/`text_state_files` are cached
    text-encoder outputs, if any. With a latent cache the VAE encodes every image here, on `device`."""
    job = latent_job(config, plan, bundle, device)
    latents = latent_files = None
    if config.cache_latents_to_disk:
        latent_files, report = cache_latents_to_disk(
            plan.images,
            encode=job.encode,
            vae_identity=job.vae_identity,
            vae_batch_size=job.vae_batch_size,
            latent_sampling=job.latent_sampling,
            family=job.family,
            flip_aug=job.flip_aug,
            alpha_mask=job.alpha_mask,
            progress=shows_progress(),
            per_image_noise=job.per_image_noise,
        )
        for warning in report.warnings:
            echo(f"warning: {warning}")
        echo(f"latent cache: {report.encoded} encoded, {report.loaded} reused from disk")
    elif config.cache_latents:
        latents = encode_latents_in_memory(
            plan.images,
            encode=job.encode,
            vae_batch_size=job.vae_batch_size,
            flip_aug=job.flip_aug,
            alpha_mask=job.alpha_mask,
            progress=shows_progress(),
        )
    dataset = BucketBatchDataset(
        plan,
        prior_loss_weight=config.prior_loss_weight,
        latents=latents,
        latent_files=latent_files,
        text_states=text_states,
        text_state_files=text_state_files,
    )
    return batch_loader(
        dataset,
        num_workers=config.data_loader_workers,
        persistent_workers=config.persistent_data_loader_workers,
    )
