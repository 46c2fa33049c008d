"""Per-sample work in `BucketBatchDataset`: caption processing, augmentation, flipped latents, masks, text
states; all seeded by (seed, epoch, sample) so runs and DataLoader workers agree."""

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data_helpers import make_kohya_dataset
from loracraft.config.dataset_options import DatasetOptions
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.augment import load_training_image
from loracraft.data.dataset import BucketBatchDataset, batch_loader
from loracraft.data.latent_cache import cache_latents_to_disk, encode_latents_in_memory
from loracraft.data.plan import DatasetSpec, build_run_plan, epoch_batches
from loracraft.data.scan import scan_dreambooth_dir
from loracraft.data.text_cache import cache_text_states, text_cache_file_paths

BUCKETS = dict(enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=64)


def dataset_options(resolution=(64, 64), batch_size=2) -> DatasetOptions:
    return DatasetOptions(resolution=resolution, train_batch_size=batch_size, **BUCKETS)


def fake_vae(pixels: torch.Tensor) -> torch.Tensor:
    pooled = F.avg_pool2d(pixels, 8)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


PLAIN = SubsetOptions()


def make_plan(tmp_path, options=PLAIN, repeats=3, seed=5):
    tree = make_kohya_dataset(tmp_path, repeats=repeats, reg_count=0)
    subsets, _ = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    subsets = tuple(replace(s, options=options) for s in subsets)
    spec = DatasetSpec(subsets, dataset_options())
    return build_run_plan([spec], seed=seed, max_train_epochs=2, max_train_steps=None)


def epoch_items(dataset: BucketBatchDataset, epoch: int) -> list[dict]:
    dataset.set_epoch(epoch)
    return list(dataset)


def comparable(items: list[dict]) -> list[dict]:
    return [{k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in item.items()} for item in items]


def test_captions_are_shuffled_per_sample_repeatably_and_keep_fixed_tokens(tmp_path):
    plan = make_plan(tmp_path, SubsetOptions(shuffle_caption=True, keep_tokens=1))
    first, second = BucketBatchDataset(plan), BucketBatchDataset(plan)
    epoch0 = comparable(epoch_items(first, 0))
    assert epoch0 == comparable(epoch_items(second, 0))
    epoch1 = comparable(epoch_items(first, 1))
    captions = [c for item in epoch0 + epoch1 for c in item["captions"]]
    tagged = [c for c in captions if "," in c]
    assert all(c.startswith("sks toy, ") for c in tagged)
    assert len(set(tagged)) > 3  # "red block" and "plain" swap places from sample to sample
    originals = {image.record.caption for image in plan.images}
    assert {", ".join(["sks toy", *sorted(c.split(", ")[1:])]) for c in tagged} <= {
        ", ".join(["sks toy", *sorted(o.split(", ")[1:])]) for o in originals
    }


def test_caption_dropout_every_n_epochs_counts_epochs_from_one(tmp_path):
    plan = make_plan(tmp_path, SubsetOptions(caption_dropout_every_n_epochs=2, caption_prefix="photo of"))
    dataset = BucketBatchDataset(plan)
    first = [c for item in epoch_items(dataset, 0) for c in item["captions"]]
    second = [c for item in epoch_items(dataset, 1) for c in item["captions"]]
    assert all(c.startswith("photo of sks toy") for c in first)
    assert set(second) == {""}


def test_each_subset_uses_its_own_caption_options(tmp_path):
    plan = make_plan(tmp_path)
    prefixed = replace(plan.subsets[0], options=SubsetOptions(caption_prefix="A"))
    other = replace(plan.subsets[0], options=SubsetOptions(caption_suffix="Z"))
    plan = build_run_plan(
        [DatasetSpec((prefixed,), dataset_options()), DatasetSpec((other,), dataset_options(batch_size=1))],
        seed=1,
        max_train_epochs=1,
        max_train_steps=None,
    )
    for item, batch in zip(BucketBatchDataset(plan), epoch_batches(plan, 0), strict=True):
        for caption, i in zip(item["captions"], batch, strict=True):
            suffixed = plan.images[i].subset_index == 1
            assert caption.endswith(" Z") if suffixed else caption.startswith("A ")


def test_flip_aug_on_pixels_flips_some_samples_and_mirrors_the_crop(tmp_path):
    plan = make_plan(tmp_path, SubsetOptions(flip_aug=True))
    dataset = BucketBatchDataset(plan)
    seen = set()
    for epoch in (0, 1):
        for item, batch in zip(epoch_items(dataset, epoch), epoch_batches(plan, epoch), strict=True):
            for pixels, crop, i in zip(item["pixels"], item["crop_top_lefts"], batch, strict=True):
                image = plan.images[i]
                plain = load_training_image(
                    image.record.path, image.choice.resized_size, image.choice.bucket, SubsetOptions(),
                    random.Random(0),
                )  # fmt: skip
                flipped = not torch.equal(pixels, plain.pixels)
                assert torch.equal(pixels, plain.pixels.flip(-1) if flipped else plain.pixels)
                left, _, right, _ = plain.crop_ltrb
                expected_left = image.choice.resized_size[0] - right if flipped else left
                assert crop.tolist() == [plain.crop_ltrb[1], expected_left]
                seen.add(flipped)
    assert seen == {True, False}


@pytest.mark.parametrize("on_disk", [False, True])
def test_cached_flip_aug_picks_flipped_or_plain_latents(tmp_path, on_disk):
    plan = make_plan(tmp_path, SubsetOptions(flip_aug=True))
    cached = encode_latents_in_memory(
        plan.images, encode=fake_vae, vae_batch_size=4, flip_aug=True, progress=False
    )
    if on_disk:
        files, _ = cache_latents_to_disk(
            plan.images, encode=fake_vae, vae_identity="fake", vae_batch_size=4, flip_aug=True, progress=False
        )
        dataset = BucketBatchDataset(plan, latent_files=files)
    else:
        dataset = BucketBatchDataset(plan, latents=cached)
    picks = []
    for epoch in (0, 1):
        for item, batch in zip(epoch_items(dataset, epoch), epoch_batches(plan, epoch), strict=True):
            assert "pixels" not in item
            for latents, i in zip(item["latents"], batch, strict=True):
                flipped = torch.allclose(latents, cached[i].latents_flipped)
                assert flipped or torch.allclose(latents, cached[i].latents)
                picks.append(flipped)
    assert set(picks) == {True, False}
    assert comparable(epoch_items(dataset, 1)) == comparable(
        epoch_items(BucketBatchDataset(plan, latents=cached), 1)
    )


def add_transparent_image(folder, name="zz_alpha.png"):
    rgba = np.full((64, 64, 4), 200, dtype=np.uint8)
    rgba[:, :32, 3] = 0  # left half transparent, right half opaque
    rgba[:, 32:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / name)


def test_alpha_mask_gives_masks_with_pixels_and_with_cached_latents(tmp_path):
    tree = make_kohya_dataset(tmp_path, repeats=1, reg_count=0, sizes=[(64, 64)] * 2, formats=["png"] * 2)
    add_transparent_image(tree.concept_dir)
    subsets, _ = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    masked = replace(subsets[0], options=SubsetOptions(alpha_mask=True))
    plan = build_run_plan(
        [DatasetSpec((masked,), dataset_options(batch_size=3))],
        seed=0,
        max_train_epochs=1,
        max_train_steps=None,
    )
    (item,) = BucketBatchDataset(plan)
    alpha_index = item["paths"].index(str(tree.concept_dir / "zz_alpha.png"))
    assert item["masks"].shape == (3, 1, 64, 64)
    assert (
        item["masks"][alpha_index, 0, :, :32].max() == 0 and item["masks"][alpha_index, 0, :, 32:].min() == 1
    )
    assert item["masks"].sum() == 64 * 64 * 2 + 64 * 32
    cached = encode_latents_in_memory(
        plan.images, encode=fake_vae, vae_batch_size=3, alpha_mask=True, progress=False
    )
    (latent_item,) = BucketBatchDataset(plan, latents=cached)
    assert latent_item["masks"].shape == (3, 1, 8, 8)
    assert latent_item["masks"][alpha_index, 0, :, :4].max() == 0


def test_no_alpha_mask_means_no_masks_key(tmp_path):
    item = BucketBatchDataset(make_plan(tmp_path))[0]
    assert "masks" not in item and "text_states" not in item
    assert set(item) == {"pixels", "captions", "paths", "loss_weights", "is_reg", "subset_indices",
                         "original_sizes_hw", "crop_top_lefts", "target_sizes_hw"}  # fmt: skip


def fake_text_encoder(captions: list[str]) -> torch.Tensor:
    return torch.stack([torch.full((5, 3), float(len(caption))) for caption in captions])


def test_text_states_from_memory_and_from_files(tmp_path):
    plan = make_plan(tmp_path)
    captions = [image.record.caption for image in plan.images]
    states = cache_text_states(
        captions, encode=fake_text_encoder, identity="te", batch_size=2, progress=False
    )
    paths = text_cache_file_paths([image.record.path for image in plan.images], captions)
    files, _ = cache_text_states(
        captions, encode=fake_text_encoder, identity="te", batch_size=2, files=paths, progress=False
    )
    in_memory, from_files = (
        BucketBatchDataset(plan, text_states=states),
        BucketBatchDataset(plan, text_state_files=files),
    )
    for a, b in zip(in_memory, from_files, strict=True):
        assert a["text_states"].shape == (len(a["captions"]), 5, 3)
        assert torch.equal(a["text_states"], b["text_states"])
        assert a["text_states"][:, 0, 0].tolist() == [float(len(c)) for c in a["captions"]]
    with pytest.raises(ValueError, match="text_states or text_state_files"):
        BucketBatchDataset(plan, text_states=states, text_state_files=files)


def test_latents_cached_without_flip_are_refused_for_a_flipping_subset(tmp_path):
    plan = make_plan(tmp_path, SubsetOptions(flip_aug=True), seed=11)
    plain = encode_latents_in_memory(plan.images, encode=fake_vae, vae_batch_size=4, progress=False)
    with pytest.raises(ValueError, match="cached without flip_aug"):
        epoch_items(BucketBatchDataset(plan, latents=plain), 0)


def test_two_workers_build_the_same_augmented_batches(tmp_path):
    plan = make_plan(
        tmp_path,
        SubsetOptions(
            shuffle_caption=True,
            caption_tag_dropout_rate=0.3,
            flip_aug=True,
            color_aug=True,
            random_crop=True,
        ),
    )
    reference = [comparable(epoch_items(BucketBatchDataset(plan), epoch)) for epoch in (0, 1)]
    dataset = BucketBatchDataset(plan)
    loader = batch_loader(dataset, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        assert comparable(list(loader)) == reference[epoch]


def test_token_warmup_follows_each_batchs_step_in_every_worker(tmp_path):
    """Captions grow from 1 tag to all by step 4, counted from each batch's place in the run; loader
    workers give the same captions (kohya's shared counter lags by their prefetch)."""
    plan = make_plan(tmp_path, SubsetOptions(token_warmup_min=1, token_warmup_step=4))
    per_epoch = plan.steps.steps_per_epoch
    dataset = BucketBatchDataset(plan)
    for epoch in (0, 1):
        for index, item in enumerate(epoch_items(dataset, epoch)):
            step = epoch * per_epoch + index
            for caption, path in zip(item["captions"], item["paths"], strict=True):
                full = next(image.record.caption for image in plan.images if str(image.record.path) == path)
                tags = full.split(", ")
                expected = tags if step >= 4 else tags[: (step * (len(tags) - 1)) // 4 + 1]
                assert caption == ", ".join(expected)
    loader = batch_loader(dataset, num_workers=2, persistent_workers=False)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        in_workers = [item["captions"] for item in loader]
        assert in_workers == [item["captions"] for item in epoch_items(BucketBatchDataset(plan), epoch)]
