import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data_helpers import load_bucket_tensor, make_kohya_dataset, write_test_image
from loracraft.config.schema import TrainConfig
from loracraft.data.buckets import BucketChoice
from loracraft.data.latent_cache import (
    cache_file_path,
    cache_latents_to_disk,
    encode_latents_in_memory,
    read_latent_file,
)
from loracraft.data.plan import build_epoch_plan
from loracraft.data.scan import scan_dreambooth_dir
from loracraft.errors import UserError


class FakeVae:
    """8x average pooling plus a mean channel: cheap, deterministic, content-dependent; records its calls."""

    def __init__(self):
        self.batches: list[tuple[int, ...]] = []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(pixels.shape))
        pooled = F.avg_pool2d(pixels, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)

    @property
    def encoded(self) -> int:
        return sum(shape[0] for shape in self.batches)


def plan_images(tree, resolution=(64, 64)):
    subsets, _ = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    plan = build_epoch_plan(
        subsets,
        resolution=resolution,
        train_batch_size=2,
        seed=0,
        max_train_epochs=1,
        max_train_steps=None,
        enable_bucket=True,
        min_bucket_reso=64,
        max_bucket_reso=256,
        bucket_reso_steps=64,
        bucket_no_upscale=False,
    )
    return plan.images


def run_disk_cache(images, vae_identity="vae-a", vae_batch_size=2):
    vae = FakeVae()
    paths, report = cache_latents_to_disk(
        images, encode=vae, vae_identity=vae_identity, vae_batch_size=vae_batch_size, progress=False
    )
    return vae, paths, report


@pytest.fixture
def tree(tmp_path):
    return make_kohya_dataset(tmp_path, reg_count=0)


def test_first_pass_encodes_and_writes_kohya_named_files_then_reuses_them(tree):
    images = plan_images(tree)
    vae, paths, report = run_disk_cache(images)
    assert (report.encoded, report.loaded, report.warnings) == (4, 0, ())
    assert [p.name for p in paths] == [
        "image_00_0096x0064_sd.npz", "image_01_0064x0096_sd.npz", "image_02_0064x0064_sd.npz", "image_03_0128x0080_sd.npz"
    ]  # fmt: skip
    # One tensor shape per VAE call, at most vae_batch_size images each.
    assert all(shape[0] <= 2 for shape in vae.batches)
    with np.load(paths[0]) as npz:
        assert npz["latents"].dtype == np.float32
        bucket = images[0].choice.bucket
        assert npz["latents"].shape == (4, bucket[1] // 8, bucket[0] // 8)
        assert list(npz["original_size"]) == [96, 64]
        expected = FakeVae()(
            load_bucket_tensor(images[0].record.path, images[0].choice.resized_size, bucket)[None]
        )
        assert np.allclose(npz["latents"], expected[0].numpy())

    vae, same_paths, report = run_disk_cache(images)
    assert (report.encoded, report.loaded, vae.batches) == (0, 4, [])
    assert same_paths == paths


def test_changed_image_content_is_reencoded_even_with_same_size_and_mtime(tree):
    images = plan_images(tree)
    run_disk_cache(images)
    target = tree.images[2]
    stat = target.stat()
    write_test_image(target, (64, 64), seed=999)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    vae, _, report = run_disk_cache(images)
    assert (report.encoded, report.loaded) == (1, 3)


def test_changed_bucket_or_vae_is_reencoded(tree):
    run_disk_cache(plan_images(tree))
    _, _, report = run_disk_cache(plan_images(tree, resolution=(128, 128)))
    assert report.encoded == 4
    _, _, report = run_disk_cache(plan_images(tree, resolution=(128, 128)), vae_identity="vae-b")
    assert report.encoded == 4


def test_corrupt_cache_file_is_reencoded_with_a_warning(tree):
    images = plan_images(tree)
    _, paths, _ = run_disk_cache(images)
    paths[1].write_bytes(b"PK\x03\x04 not really a zip")
    paths[3].write_bytes(paths[3].read_bytes()[:100])
    _, _, report = run_disk_cache(images)
    assert report.encoded == 2
    assert len(report.warnings) == 2
    assert report.warnings[0].startswith(f"latent cache {paths[1]} is unreadable")
    with np.load(paths[1]) as npz:
        assert npz["latents"].shape[0] == 4


def test_memory_cache_matches_disk_cache(tree):
    images = plan_images(tree)
    entries = encode_latents_in_memory(images, encode=FakeVae(), vae_batch_size=3, progress=False)
    in_memory = [entry.latents for entry in entries]
    _, paths, _ = run_disk_cache(images)
    for latent, path in zip(in_memory, paths, strict=True):
        with np.load(path) as npz:
            assert torch.equal(latent, torch.from_numpy(npz["latents"]))


def test_nan_latents_stop_with_a_real_flag_to_use_and_leave_no_partial_file(tree):
    images = plan_images(tree)

    def nan_vae(pixels):
        return torch.full((pixels.shape[0], 4, pixels.shape[2] // 8, pixels.shape[3] // 8), float("nan"))

    with pytest.raises(UserError, match="NaN/inf latents.*--vae") as error:
        cache_latents_to_disk(images, encode=nan_vae, vae_identity="x", vae_batch_size=1, progress=False)
    named = re.findall(r"--(\w+)", str(error.value))
    assert named and all(flag in TrainConfig.model_fields for flag in named)
    assert not list(tree.concept_dir.glob("*.npz")) and not list(tree.concept_dir.glob(".*tmp"))


def test_switching_latent_sampling_reencodes(tree):
    images = plan_images(tree)
    assert run_disk_cache_with(images, latent_sampling="sample")[2].encoded == 4
    _, paths, report = run_disk_cache_with(images, latent_sampling="mean")
    assert report.encoded == 4
    assert run_disk_cache_with(images, latent_sampling="mean")[2].encoded == 0
    assert np.load(paths[0])["latent_sampling"] == "mean"


def test_cache_file_name_pads_the_original_size(tmp_path):
    assert cache_file_path(tmp_path / "a.b.png", (640, 96), "sdxl").name == "a.b_0640x0096_sdxl.npz"


def run_disk_cache_with(images, **flags):
    vae = FakeVae()
    paths, report = cache_latents_to_disk(
        images, encode=vae, vae_identity="vae-a", vae_batch_size=2, progress=False, **flags
    )
    return vae, paths, report


def test_flip_aug_caches_the_mirrored_image_and_is_part_of_the_fingerprint(tree):
    images = plan_images(tree)
    vae, paths, report = run_disk_cache_with(images, flip_aug=True)
    assert report.encoded == 4 and vae.encoded == 8  # each image and its mirror
    entry = read_latent_file(paths[0])
    pixels = load_bucket_tensor(images[0].record.path, images[0].choice.resized_size, images[0].choice.bucket)
    assert torch.allclose(entry.latents_flipped, FakeVae()(pixels.flip(-1)[None])[0])
    assert torch.equal(entry.for_sample(True)[0], entry.latents_flipped)
    assert run_disk_cache_with(images, flip_aug=True)[2].encoded == 0
    assert run_disk_cache_with(images)[2].encoded == 4  # turning flip_aug off re-encodes
    assert "latents_flipped" not in np.load(paths[0]).files


def test_alpha_masks_are_cached_at_latent_size(tmp_path):
    folder = tmp_path / "img" / "1_cutout"
    folder.mkdir(parents=True)
    rgba = np.zeros((64, 128, 4), dtype=np.uint8)
    rgba[:, :64, 3] = 255  # left half opaque
    Image.fromarray(rgba, "RGBA").save(folder / "a.png")
    write_test_image(folder / "b.png", (64, 64), seed=0)
    subsets, _ = scan_dreambooth_dir(tmp_path / "img", is_reg=False, caption_extension=".txt")
    images = build_epoch_plan(
        subsets, resolution=(128, 64), train_batch_size=1, seed=0, max_train_epochs=1, max_train_steps=None,
        enable_bucket=False, min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=64,
    ).images  # fmt: skip
    in_memory = encode_latents_in_memory(
        images, encode=FakeVae(), vae_batch_size=2, alpha_mask=True, flip_aug=True
    )
    expected = torch.zeros(1, 8, 16)
    expected[..., :8] = 1
    assert torch.equal(in_memory[0].alpha_mask, expected)
    assert torch.equal(in_memory[0].for_sample(True)[1], expected.flip(-1))
    assert torch.equal(in_memory[1].alpha_mask, torch.ones(1, 8, 16))  # no alpha channel: all ones
    _, paths, _ = run_disk_cache_with(images, alpha_mask=True, flip_aug=True)
    with np.load(paths[0]) as npz:
        assert npz["alpha_mask"].shape == (8, 16) and npz["alpha_mask"].dtype == np.float32
    from_file = read_latent_file(paths[0])
    assert torch.equal(from_file.alpha_mask, expected)
    assert torch.equal(from_file.latents, in_memory[0].latents)


def test_an_image_planned_twice_with_other_buckets_gets_one_file_per_bucket(tree):
    images = plan_images(tree)
    first = images[0]
    assert first.choice.bucket == (64, 64)
    other = replace(first, choice=BucketChoice((96, 64), (96, 64), 0.0))
    vae, paths, report = run_disk_cache_with([first, other, first])
    assert paths[0] == paths[2] != paths[1]
    assert [p.name for p in paths[:2]] == [
        "image_00_0096x0064_64x64-from-96x64_sd.npz", "image_00_0096x0064_96x64-from-96x64_sd.npz"
    ]  # fmt: skip
    assert report.encoded == 2 and vae.encoded == 2  # the repeated entry is encoded once
    assert np.load(paths[1])["latents"].shape == (4, 8, 12)


def test_memory_entries_without_flip_or_mask_hold_latents_only(tree):
    images = plan_images(tree)
    entries = encode_latents_in_memory(images, encode=FakeVae(), vae_batch_size=2, progress=False)
    for entry in entries:
        assert entry.latents_flipped is None and entry.alpha_mask is None
    with pytest.raises(ValueError, match="without flip_aug"):
        entries[0].for_sample(True)


def test_a_killed_writers_temporary_file_is_removed_when_its_cache_is_written(tree):
    images = plan_images(tree)
    _, paths, _ = run_disk_cache(images)
    paths[1].unlink()
    # What atomic_path leaves when the process dies before the rename.
    leftover = paths[1].with_name(f".{paths[1].name}.k9x_2.tmp")
    leftover.write_bytes(b"half a file")
    unrelated = paths[1].with_name(".notes.txt.tmp")
    unrelated.write_bytes(b"mine")

    _, _, report = run_disk_cache(images)

    assert report.encoded == 1 and not leftover.exists() and unrelated.exists()
    assert report.warnings == (
        f"removed 1 unfinished latent cache file(s) a stopped run left, e.g. {leftover}",
    )
