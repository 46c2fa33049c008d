"""Loss masks from a folder's `conditioning_data_dir` (kohya's `--masked_loss` with mask images).

Each mask here is its image's own red channel saved as a grey PNG, so wherever the mask lands it must
equal the red channel of the pixels it belongs to: that checks the resize, the crop and the flip, with or
without cached latents."""

import dataclasses

import pytest
import torch
from PIL import Image

from data_helpers import make_kohya_dataset
from loracraft.config.cli_args import make_train_parser, parse_train_flags
from loracraft.config.load import build_config
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.dataset import BucketBatchDataset
from loracraft.data.latent_cache import encode_latents_in_memory
from loracraft.data.masks import mask_files
from loracraft.data.plan import build_epoch_plan
from loracraft.data.scan import scan_dreambooth_dir
from loracraft.errors import UserError

SIZES = ((96, 64), (64, 96), (64, 64), (128, 80))


def write_red_channel_masks(images, folder):
    folder.mkdir()
    for image in images:
        with Image.open(image) as img:
            img.convert("RGB").getchannel("R").save(folder / f"{image.stem}.png")
    return folder


@pytest.fixture
def masked(tmp_path):
    tree = make_kohya_dataset(tmp_path, sizes=SIZES, formats=("png",) * 4, reg_count=0)
    masks = write_red_channel_masks(tree.images, tmp_path / "masks")
    return tree, masks


def make_plan(tree, masks, **options):
    subsets, _ = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    subset_options = SubsetOptions(conditioning_data_dir=str(masks), **options)
    subsets = [dataclasses.replace(subset, options=subset_options) for subset in subsets]
    return build_epoch_plan(
        subsets, resolution=(64, 64), train_batch_size=2, seed=3, max_train_epochs=2, max_train_steps=None,
        enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=64,
    )  # fmt: skip


def all_items(dataset: BucketBatchDataset):
    for epoch in range(2):
        dataset.set_epoch(epoch)
        yield from (dataset[i] for i in range(len(dataset)))


def test_every_image_gets_the_mask_of_its_stem(masked):
    tree, masks = masked
    plan = make_plan(tree, masks)
    assert [path.name for path in mask_files(plan)] == [
        f"{image.record.path.stem}.png" for image in plan.images
    ]


def test_masks_follow_the_crop_and_the_flip_of_their_pixels(masked):
    tree, masks = masked
    dataset = BucketBatchDataset(make_plan(tree, masks, flip_aug=True, random_crop=True))
    for item in all_items(dataset):
        red = (item["pixels"][:, :1] + 1) / 2
        assert item["masks"].shape == red.shape
        torch.testing.assert_close(item["masks"], red, rtol=0, atol=1.5 / 255)


def test_masks_with_cached_latents_are_at_latent_size_and_flip_with_them(masked):
    tree, masks = masked
    plan = make_plan(tree, masks, flip_aug=True)

    def red_pooled(pixels):  # a stand-in VAE whose first channel is the red channel, area-averaged by 8
        return torch.nn.functional.avg_pool2d(pixels, 8).repeat(1, 2, 1, 1)[:, :4]

    latents = encode_latents_in_memory(plan.images, encode=red_pooled, vae_batch_size=2, flip_aug=True)
    for item in all_items(BucketBatchDataset(plan, latents=latents)):
        red = (item["latents"][:, :1] + 1) / 2
        torch.testing.assert_close(item["masks"], red, rtol=0, atol=1.5 / 255)


def test_an_image_without_a_mask_is_a_one_line_error(masked):
    tree, masks = masked
    (masks / f"{tree.images[1].stem}.png").unlink()
    with pytest.raises(UserError, match=f"{tree.images[1].name} has no mask in --conditioning_data_dir"):
        mask_files(make_plan(tree, masks))


def test_a_mask_without_an_image_is_a_one_line_error(masked):
    tree, masks = masked
    Image.new("L", (64, 64)).save(masks / "stray.png")
    with pytest.raises(UserError, match=r"1 mask\(s\) without a training image \(stray\)"):
        mask_files(make_plan(tree, masks))


def test_a_mask_of_another_size_is_a_one_line_error(masked):
    tree, masks = masked
    Image.new("L", (10, 10)).save(masks / f"{tree.images[0].stem}.png")
    dataset = BucketBatchDataset(make_plan(tree, masks))
    with pytest.raises(UserError, match="is 10x10 but its image is 96x64"):
        list(all_items(dataset))


def test_conditioning_data_dir_needs_masked_loss(tmp_path):
    _, flags = parse_train_flags(make_train_parser(), ["--conditioning_data_dir", str(tmp_path)])
    with pytest.raises(UserError, match="add --masked_loss"):
        build_config({}, flags)
    _, flags = parse_train_flags(
        make_train_parser(), ["--conditioning_data_dir", str(tmp_path), "--masked_loss"]
    )
    assert build_config({}, flags).conditioning_data_dir == str(tmp_path)
