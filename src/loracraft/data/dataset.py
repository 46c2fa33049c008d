"""The training batches as a torch Dataset whose items are whole batches, kohya style.

Item `i` is batch `i` of the current epoch's plan order (`plan.epoch_batches`), so the DataLoader must
not batch or shuffle again: use `batch_loader`. The epoch lives in a one-element shared-memory
tensor, so `set_epoch` in the main process reaches DataLoader workers too, including persistent ones
(a plain attribute would stay at its old value in each worker's copy of the dataset).
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from loracraft.data.buckets import center_crop_box
from loracraft.data.images import load_bucket_tensor
from loracraft.data.latent_cache import load_cached_latents
from loracraft.data.plan import DatasetPlan, PlannedImage, epoch_batches


class BucketBatchDataset(Dataset):
    """Batches of one bucket each, as a dict:

    - `latents` (B, C, h, w) float32 when latents are cached (in memory or in files), else
      `pixels` (B, 3, H, W) float32 in [-1, 1];
    - `captions` (list of B str), `paths` (list of B str);
    - `loss_weights` (B,) float32: `prior_loss_weight` for reg samples, 1.0 otherwise; `is_reg` (B,) bool;
    - `original_sizes_hw`, `crop_top_lefts`, `target_sizes_hw` (B, 2) int64: SDXL's size conditioning
      (the image size before resizing, the crop offset in the resized image, the bucket size).
    """

    def __init__(
        self,
        plan: DatasetPlan,
        *,
        prior_loss_weight: float = 1.0,
        latents: Sequence[torch.Tensor] | None = None,
        latent_files: Sequence[Path] | None = None,
    ) -> None:
        if latents is not None and latent_files is not None:
            raise ValueError("pass latents or latent_files, not both")
        self.plan = plan
        self.prior_loss_weight = prior_loss_weight
        self.latents = latents
        self.latent_files = latent_files
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        # Each process computes an epoch's order once, on its first item of that epoch.
        self._order_epoch: int | None = None
        self._order: list[tuple[int, ...]] = []

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffled batch order the next items follow (call before iterating)."""
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    def _batch_order(self) -> list[tuple[int, ...]]:
        epoch = int(self._epoch[0])
        if self._order_epoch != epoch:
            self._order = epoch_batches(self.plan, epoch)
            self._order_epoch = epoch
        return self._order

    def _image_input(self, index: int, image: PlannedImage) -> tuple[str, torch.Tensor]:
        if self.latents is not None:
            return "latents", self.latents[index]
        if self.latent_files is not None:
            return "latents", load_cached_latents(self.latent_files[index])
        return "pixels", load_bucket_tensor(image.record.path, image.choice.resized_size, image.choice.bucket)

    def __getitem__(self, index: int) -> dict:
        batch = self._batch_order()[index]
        images = [self.plan.images[i] for i in batch]
        inputs = [self._image_input(i, image) for i, image in zip(batch, images, strict=True)]
        crops = [center_crop_box(image.choice.resized_size, image.choice.bucket) for image in images]
        return {
            inputs[0][0]: torch.stack([tensor for _, tensor in inputs]),
            "captions": [image.record.caption for image in images],
            "paths": [str(image.record.path) for image in images],
            "loss_weights": torch.tensor(
                [self.prior_loss_weight if image.record.is_reg else 1.0 for image in images],
                dtype=torch.float32,
            ),
            "is_reg": torch.tensor([image.record.is_reg for image in images], dtype=torch.bool),
            "original_sizes_hw": torch.tensor(
                [(image.record.height, image.record.width) for image in images]
            ),
            "crop_top_lefts": torch.tensor([(top, left) for left, top, _, _ in crops]),
            "target_sizes_hw": torch.tensor(
                [(image.choice.bucket[1], image.choice.bucket[0]) for image in images]
            ),
        }


def batch_loader(
    dataset: BucketBatchDataset,
    *,
    num_workers: int,
    persistent_workers: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader that hands out the dataset's batches as they are: no re-batching, no re-shuffling."""
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0,
        pin_memory=pin_memory,
    )
