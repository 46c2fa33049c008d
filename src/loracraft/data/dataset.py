"""The training batches as a torch Dataset whose items are whole batches, kohya style.

Item `i` is batch `i` of the current epoch's plan order (`plan.epoch_batches`), so the DataLoader must
not batch or shuffle again: use `batch_loader`. The epoch lives in a one-element shared-memory
tensor, so `set_epoch` in the main process reaches DataLoader workers too, including persistent ones
(a plain attribute would stay at its old value in each worker's copy of the dataset).

Every sample draws its randomness (caption shuffle and dropout, crop, colour, flip) from its own
`random.Random` seeded by (plan seed, epoch, batch index, position in the batch): the same seed gives
the same batches on every run, whichever worker builds them.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from loracraft.data.augment import FLIP_PROBABILITY, load_training_image, mask_to_latent_size
from loracraft.data.buckets import center_crop_box
from loracraft.data.captions import CaptionMoment, process_caption
from loracraft.data.images import Box
from loracraft.data.latent_cache import CachedLatents, read_latent_file
from loracraft.data.masks import load_mask, mask_files
from loracraft.data.plan import DatasetPlan, epoch_batches
from loracraft.data.records import Subset
from loracraft.data.text_cache import TextOutput, load_cached_text_output


@dataclass(frozen=True)
class _Sample:
    inputs: torch.Tensor  # latents (C, h, w) or pixels (3, H, W)
    mask: torch.Tensor | None
    caption: str
    crop_top_left: tuple[int, int]


def _crop_top_left(crop: Box, resized_width: int, flipped: bool) -> tuple[int, int]:
    """SDXL's crop conditioning (top, left); a flipped sample's left is measured from the other side."""
    left, top, right, _ = crop
    return top, resized_width - right if flipped else left


class BucketBatchDataset(Dataset):
    """Batches of one bucket each, as a dict:

    - `latents` (B, C, h, w) float32 when latents are cached (in memory or in files), else
      `pixels` (B, 3, H, W) float32 in [-1, 1], augmented as the sample's subset says;
    - `captions` (list of B str) after the subset's caption processing; `paths` (list of B str);
    - `loss_weights` (B,) float32: `prior_loss_weight` for reg samples, 1.0 otherwise; `is_reg` (B,) bool;
    - `subset_indices` (B,) int64: each sample's folder in `plan.subsets` (a loss per concept);
    - `original_sizes_hw`, `crop_top_lefts`, `target_sizes_hw` (B, 2) int64: SDXL's size conditioning
      (the image size before resizing, the crop offset in the resized image, the bucket size);
    - `masks` (B, 1, H, W) float32 in [0, 1] when any subset has `alpha_mask` or a
      `conditioning_data_dir` of mask images (ones for the samples of subsets without either): at pixel size with `pixels`, at latent size with cached `latents`
      (`augment.mask_to_latent_size` brings either to the latent size);
    - `text_states` (B, tokens, width) when text-encoder outputs are cached (in memory or in files), and
      `text_pooled` (B, width) when they hold a pooled output (SDXL).

    `latents` (or `latent_files`) are index-aligned with `plan.images`; with them a `flip_aug` sample
    takes the cached mirrored latents half of the time, so they must be cached with `flip_aug` (and
    with `alpha_mask` when a subset uses it).
    """

    def __init__(
        self,
        plan: DatasetPlan,
        *,
        prior_loss_weight: float = 1.0,
        latents: Sequence[CachedLatents | torch.Tensor] | None = None,
        latent_files: Sequence[Path] | None = None,
        text_states: Sequence[TextOutput] | None = None,
        text_state_files: Sequence[Path] | None = None,
    ) -> None:
        if latents is not None and latent_files is not None:
            raise ValueError("pass latents or latent_files, not both")
        if text_states is not None and text_state_files is not None:
            raise ValueError("pass text_states or text_state_files, not both")
        self.plan = plan
        self.prior_loss_weight = prior_loss_weight
        # Plain tensors are latents cached without flip_aug or alpha_mask.
        self.latents = None if latents is None else [
            entry if isinstance(entry, CachedLatents) else CachedLatents(entry) for entry in latents
        ]  # fmt: skip
        self.latent_files = latent_files
        self.text_states = text_states
        self.text_state_files = text_state_files
        self.mask_files = mask_files(plan)
        self.with_masks = any(
            subset.options.alpha_mask or subset.options.conditioning_data_dir for subset in plan.subsets
        )
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        # Each process computes an epoch's order once, on its first item of that epoch.
        self._order_epoch: int | None = None
        self._order: list[tuple[int, ...]] = []

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (counted from 0) whose batch order and augmentations the next items follow."""
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    @property
    def caches_latents(self) -> bool:
        return self.latents is not None or self.latent_files is not None

    def _batch_order(self, epoch: int) -> list[tuple[int, ...]]:
        if self._order_epoch != epoch:
            self._order = epoch_batches(self.plan, epoch)
            self._order_epoch = epoch
        return self._order

    def _cached(self, index: int) -> CachedLatents:
        if self.latents is not None:
            return self.latents[index]
        return read_latent_file(self.latent_files[index])

    def _text_output(self, index: int) -> TextOutput:
        if self.text_states is not None:
            return self.text_states[index]
        return load_cached_text_output(self.text_state_files[index])

    def _cached_sample(self, index: int, subset: Subset, caption: str, rng: random.Random) -> _Sample:
        image = self.plan.images[index]
        flipped = subset.options.flip_aug and rng.random() < FLIP_PROBABILITY
        latents, mask = self._cached(index).for_sample(flipped)
        if subset.options.alpha_mask and mask is None:
            raise ValueError(f"latents of {image.record.path} were cached without alpha_mask")
        crop = center_crop_box(image.choice.resized_size, image.choice.bucket)
        mask = mask if subset.options.alpha_mask else None
        mask_file = self.mask_files[index]
        if mask_file is not None:
            # Mask images are read at every step, as kohya reads them, so an edited mask is never stale.
            size = (image.record.width, image.record.height)
            mask = load_mask(mask_file, size, image.choice.resized_size, crop)
            mask = mask_to_latent_size((mask.flip(-1) if flipped else mask)[None], latents.shape[-2:])[0]
        return _Sample(latents, mask, caption, _crop_top_left(crop, image.choice.resized_size[0], flipped))

    def _sample(self, epoch: int, batch_index: int, position: int, index: int) -> _Sample:
        image = self.plan.images[index]
        subset = self.plan.subsets[image.subset_index]
        # A str seed is hashed with SHA-512, the same in every process (unlike hash() of a tuple).
        rng = random.Random(f"{self.plan.seed}:{epoch}:{batch_index}:{position}")
        caption = process_caption(image.record.caption, subset.options, rng, self._moment(epoch, batch_index))
        if self.caches_latents:
            return self._cached_sample(index, subset, caption, rng)
        choice = image.choice
        loaded = load_training_image(
            image.record.path, choice.resized_size, choice.bucket, subset.options, rng, self.mask_files[index]
        )
        return _Sample(
            loaded.pixels, loaded.mask, caption,
            _crop_top_left(loaded.crop_ltrb, loaded.resized_size[0], loaded.flipped),
        )  # fmt: skip

    def _moment(self, epoch: int, batch_index: int) -> CaptionMoment:
        """Captions count epochs from 1, as kohya's current_epoch does (caption_dropout_every_n_epochs);
        the step is the optimizer steps done before this batch's, from its place in the run."""
        steps = self.plan.steps
        step = epoch * steps.steps_per_epoch + batch_index // self.plan.gradient_accumulation_steps
        return CaptionMoment(epoch + 1, step, steps.max_train_steps)

    def _masks(self, samples: Sequence[_Sample]) -> torch.Tensor:
        # Samples of subsets without alpha_mask train on every pixel.
        ones = torch.ones(1, *samples[0].inputs.shape[-2:])
        return torch.stack([ones if sample.mask is None else sample.mask for sample in samples])

    def __getitem__(self, index: int) -> dict:
        epoch = int(self._epoch[0])
        batch = self._batch_order(epoch)[index]
        images = [self.plan.images[i] for i in batch]
        samples = [self._sample(epoch, index, position, i) for position, i in enumerate(batch)]
        item = {
            "latents" if self.caches_latents else "pixels": torch.stack([s.inputs for s in samples]),
            "captions": [sample.caption for sample in samples],
            "paths": [str(image.record.path) for image in images],
            "loss_weights": torch.tensor(
                [self.prior_loss_weight if image.record.is_reg else 1.0 for image in images],
                dtype=torch.float32,
            ),
            "is_reg": torch.tensor([image.record.is_reg for image in images], dtype=torch.bool),
            "subset_indices": torch.tensor([image.subset_index for image in images], dtype=torch.int64),
            "original_sizes_hw": torch.tensor(
                [(image.record.height, image.record.width) for image in images]
            ),
            "crop_top_lefts": torch.tensor([sample.crop_top_left for sample in samples]),
            "target_sizes_hw": torch.tensor(
                [(image.choice.bucket[1], image.choice.bucket[0]) for image in images]
            ),
        }
        if self.with_masks:
            item["masks"] = self._masks(samples)
        if self.text_states is not None or self.text_state_files is not None:
            outputs = [self._text_output(i) for i in batch]
            if isinstance(outputs[0], tuple):
                item["text_pooled"] = torch.stack([pooled for _, pooled in outputs])
                outputs = [states for states, _ in outputs]
            item["text_states"] = torch.stack(outputs)
        return item


def only_item(items: list[dict]) -> dict:
    """The loader's collate: each index batch holds one index, whose item is already a whole batch.

    A module-level function, so DataLoader workers started by spawning (Windows, macOS) can pickle it."""
    (item,) = items
    return item


def batch_loader(
    dataset: BucketBatchDataset,
    *,
    num_workers: int,
    persistent_workers: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader that hands out the dataset's batches as they are: no re-batching, no re-shuffling.

    Its batch sampler yields one index at a time ([0], [1], ...) and `only_item` unwraps it. That is
    what accelerate can split across processes: `accelerator.prepare` wraps the batch sampler in
    `BatchSamplerShard`, so process r of N loads batches r, r+N, ... of every epoch (whole batches, so
    buckets stay intact, as in kohya's multi-GPU runs), and `accelerate.skip_first_batches` skips
    indices without loading their batches."""
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(SequentialSampler(dataset), batch_size=1, drop_last=False),
        collate_fn=only_item,
        num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0,
        pin_memory=pin_memory,
    )
