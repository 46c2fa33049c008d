"""The run's batches: latents cached (in memory or on disk) when the options allow, then a loader."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from loracraft.config.schema import TrainConfig
from loracraft.data.dataset import BucketBatchDataset, batch_loader
from loracraft.data.latent_cache import cache_latents_to_disk, encode_latents_in_memory
from loracraft.data.plan import DatasetPlan
from loracraft.models.bundle import ModelBundle
from loracraft.training.step import encode_images


class BatchSource:
    """Iterates one epoch's batches at a time through a DataLoader."""

    def __init__(self, dataset: BucketBatchDataset, num_workers: int, persistent_workers: bool):
        self.dataset = dataset
        self.loader = batch_loader(dataset, num_workers=num_workers, persistent_workers=persistent_workers)

    def epoch(self, epoch: int) -> Iterator[dict]:
        self.dataset.set_epoch(epoch)
        return iter(self.loader)


def vae_identity(bundle: ModelBundle) -> str:
    """A fingerprint of the VAE weights: a disk cache made with another VAE is stale."""
    digest = hashlib.sha256()
    for name, tensor in sorted(bundle.vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def make_batch_source(
    config: TrainConfig,
    plan: DatasetPlan,
    bundle: ModelBundle,
    device: torch.device,
    echo: Callable[[str], None],
    *,
    text_states: Sequence[torch.Tensor] | None = None,
    text_state_files: Sequence[Path] | None = None,
) -> BatchSource:
    """The loader of the run; `text_states`/`text_state_files` are cached text-encoder outputs, if any."""

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return encode_images(bundle.vae, pixels.to(device), config.vae_batch_size).cpu()

    # One subset that flips or masks makes every cache entry hold the mirrored latents or the mask.
    flip_aug = any(subset.augment.flip_aug for subset in plan.subsets)
    alpha_mask = any(subset.augment.alpha_mask for subset in plan.subsets)
    latents = latent_files = None
    if config.cache_latents_to_disk:
        latent_files, report = cache_latents_to_disk(
            plan.images,
            encode=encode,
            vae_identity=vae_identity(bundle),
            vae_batch_size=config.vae_batch_size,
            flip_aug=flip_aug,
            alpha_mask=alpha_mask,
        )
        for warning in report.warnings:
            echo(f"warning: {warning}")
        echo(f"latent cache: {report.encoded} encoded, {report.loaded} reused from disk")
    elif config.cache_latents:
        latents = encode_latents_in_memory(
            plan.images,
            encode=encode,
            vae_batch_size=config.vae_batch_size,
            flip_aug=flip_aug,
            alpha_mask=alpha_mask,
        )
    dataset = BucketBatchDataset(
        plan,
        prior_loss_weight=config.prior_loss_weight,
        latents=latents,
        latent_files=latent_files,
        text_states=text_states,
        text_state_files=text_state_files,
    )
    return BatchSource(dataset, config.max_data_loader_n_workers, config.persistent_data_loader_workers)
