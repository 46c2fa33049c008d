"""`plan_dataset` with a dataset TOML on disk: several datasets, per-subset options, location errors."""

from pathlib import Path

import pytest
import torch

from data_helpers import make_kohya_dataset, write_test_image
from loracraft.config.schema import TrainConfig
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.summary import format_plan
from loracraft.errors import UserError
from loracraft.training.batches import make_batch_loader
from loracraft.training.dataset_setup import plan_dataset

COMMON = dict(resolution="64,64", min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=64,
              bucket_no_upscale=False, max_train_epochs=1, caption_extension=".txt")  # fmt: skip


def run_plan(config: TrainConfig):
    lines: list[str] = []
    return plan_dataset(config, seed=1, num_processes=1, echo=lines.append), lines


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tree(tmp_path):
    return make_kohya_dataset(tmp_path / "data", reg_count=2)


def test_two_datasets_with_their_own_options(tmp_path, tree):
    text = f"""
[general]
shuffle_caption = true
keep_tokens = 1

[[datasets]]
batch_size = 2
  [[datasets.subsets]]
  image_dir = '{tree.concept_dir}'
  num_repeats = 3
  class_tokens = 'sks toy'
  flip_aug = true
  [[datasets.subsets]]
  image_dir = '{tree.reg_images[0].parent}'
  is_reg = true
  class_tokens = 'toy'

[[datasets]]
resolution = 128
batch_size = 1
enable_bucket = false
  [[datasets.subsets]]
  image_dir = '{tree.concept_dir}'
  caption_prefix = 'photo of'
"""
    config = TrainConfig(dataset_config=str(write_config(tmp_path, text)), flip_aug=False, **COMMON)
    plan, lines = run_plan(config)
    first, second = plan.datasets
    assert (first.batch_size, first.resolution, second.resolution, second.enable_bucket) == (
        2, (64, 64), (128, 128), False
    )  # fmt: skip
    train, reg, again = plan.subsets
    assert (train.num_repeats, train.class_tokens, train.options.flip_aug) == (3, "sks toy", True)
    assert train.options.shuffle_caption and train.options.keep_tokens == 1
    assert (reg.is_reg, reg.options.flip_aug) == (True, False)
    assert (again.num_repeats, again.options.caption_prefix) == (1, "photo of")
    augmentation = ("flip_aug", "color_aug", "random_crop", "face_crop_aug_range", "alpha_mask")
    assert all(
        getattr(again.options, name) == SubsetOptions.model_fields[name].default for name in augmentation
    )
    # 4 images x 3 = 12 train samples, 2 reg images balanced to 12; dataset 1: 4 samples, no bucketing.
    assert (first.num_train_samples, first.num_reg_samples, second.num_train_samples) == (12, 12, 4)
    assert second.buckets == ((128, 128),)
    assert plan.batches_per_epoch == first.batches_per_epoch + 4
    text = format_plan(plan)
    assert "Dataset 2 of 2: " in text and "[[datasets]][1] (resolution 128x128, batch size 1)" in text
    assert not any("ignored" in line for line in lines)


def test_plain_folders_take_options_from_flags(tree):
    config = TrainConfig(train_data_dir=str(tree.train_dir), reg_data_dir=str(tree.reg_dir), flip_aug=True,
                         caption_dropout_rate=0.2, **COMMON)  # fmt: skip
    plan, _ = run_plan(config)
    assert len(plan.datasets) == 1 and plan.datasets[0].label == ""
    assert all(s.options.flip_aug and s.options.caption_dropout_rate == 0.2 for s in plan.subsets)


def test_folder_flags_next_to_a_dataset_config_are_ignored_with_a_warning(tmp_path, tree):
    path = write_config(tmp_path, f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{tree.concept_dir}'\n")
    config = TrainConfig(dataset_config=str(path), train_data_dir=str(tmp_path / "elsewhere"), **COMMON)
    plan, lines = run_plan(config)
    assert [s.dir for s in plan.subsets] == [tree.concept_dir]
    assert any(
        line.startswith(
            f"warning: --dataset_config {path} is given, so --train_data_dir and --reg_data_dir are ignored"
        )
        for line in lines
    )


def test_missing_image_dir_names_the_subset(tmp_path, tree, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{tree.concept_dir}'\n[[datasets.subsets]]\nimage_dir = 'gone'\n"
    config = TrainConfig(dataset_config=str(write_config(tmp_path, text)), **COMMON)
    with pytest.raises(UserError) as info:
        run_plan(config)
    assert str(info.value) == (
        f"{tmp_path / 'data.toml'} [[datasets]][0].subsets[1]: image_dir gone does not exist or is not a folder "
        f"(relative paths are read from the current folder {tmp_path}, as in kohya)"
    )


def test_relative_image_dir_is_read_from_the_current_folder(tmp_path, tree, monkeypatch):
    monkeypatch.chdir(tree.concept_dir.parent)
    text = f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{tree.concept_dir.name}'\n"
    plan, _ = run_plan(TrainConfig(dataset_config=str(write_config(tmp_path, text)), **COMMON))
    assert len(plan.images) == 4


def test_subset_augmentation_that_blocks_the_latent_cache_names_the_subset(tmp_path, tree):
    text = f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{tree.concept_dir}'\ncolor_aug = true\n"
    config = TrainConfig(dataset_config=str(write_config(tmp_path, text)), cache_latents=True, **COMMON)
    with pytest.raises(
        UserError, match=r"data.toml \[\[datasets\]\]\[0\].subsets\[0\]: color_aug changes the pixels"
    ):
        run_plan(config)


def test_dynamic_captions_block_the_text_cache_per_subset(tmp_path, tree):
    text = f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{tree.concept_dir}'\nshuffle_caption = true\n"
    config = TrainConfig(dataset_config=str(write_config(tmp_path, text)), cache_text_encoder_outputs=True,
                         network_train_unet_only=True, **COMMON)  # fmt: skip
    with pytest.raises(
        UserError, match=r"subsets\[0\]: --cache_text_encoder_outputs needs captions that never change"
    ):
        run_plan(config)


def test_neither_folder_nor_config_is_an_error():
    with pytest.raises(UserError, match="^--train_data_dir or --dataset_config is required"):
        run_plan(TrainConfig(**COMMON))


def test_truncated_image_stops_the_run_or_is_skipped(tmp_path, tree):
    broken = write_test_image(tree.concept_dir / "zz_broken.png", (64, 64), seed=9)
    broken.write_bytes(broken.read_bytes()[:-200])
    config = dict(train_data_dir=str(tree.train_dir), **COMMON)
    with pytest.raises(UserError, match=r"1 image\(s\) cannot be decoded: .*zz_broken.png"):
        run_plan(TrainConfig(**config))
    plan, lines = run_plan(TrainConfig(skip_bad_images=True, **config))
    assert len(plan.images) == 4
    assert any("skipped image" in line and "zz_broken.png" in line for line in lines)


@pytest.mark.parametrize("to_disk", [False, True])
def test_batch_source_caches_flipped_latents_and_masks_for_the_subsets_that_need_them(
    tmp_path, tree, tiny_sd1_bundle, to_disk
):
    text = f"""
[[datasets]]
batch_size = 2
  [[datasets.subsets]]
  image_dir = '{tree.concept_dir}'
  flip_aug = true
  alpha_mask = true
"""
    config = TrainConfig(dataset_config=str(write_config(tmp_path, text)), cache_latents=True,
                         cache_latents_to_disk=to_disk, **COMMON)  # fmt: skip
    plan, _ = run_plan(config)
    lines: list[str] = []
    loader = make_batch_loader(config, plan, tiny_sd1_bundle, torch.device("cpu"), lines.append)
    loader.dataset.set_epoch(0)
    batches = list(loader)
    assert len(batches) == plan.batches_per_epoch
    for batch in batches:
        latents = batch["latents"]
        assert latents.shape[1] == 4
        assert batch["masks"].shape == (latents.shape[0], 1, *latents.shape[-2:])
    assert any("latent cache: 4 encoded" in line for line in lines) == to_disk
