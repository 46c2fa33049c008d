import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import load_bucket_tensor
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.augment import (
    FaceBox,
    color_augment,
    face_box_from_name,
    face_crop_window,
    load_training_image,
    mask_to_latent_size,
    random_crop_box,
)
from loracraft.data.images import resize_image, to_tensor


def gradient(width: int, height: int) -> Image.Image:
    """Every pixel distinct enough to locate a crop: red follows x, green follows y."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [xs * 255 // max(1, width - 1), ys * 255 // max(1, height - 1), np.full_like(xs, 90)], -1
    )
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    gradient(96, 64).save(path)
    return path


def load(path, options, seed=0, resized=(96, 64), bucket=(64, 64)):
    return load_training_image(path, resized, bucket, options, random.Random(seed))


def test_no_options_is_the_centre_crop_without_mask(photo):
    image = load(photo, SubsetOptions())
    assert torch.equal(image.pixels, load_bucket_tensor(photo, (96, 64), (64, 64)))
    assert (image.mask, image.flipped, image.crop_ltrb, image.resized_size) == (
        None,
        False,
        (16, 0, 80, 64),
        (96, 64),
    )


def test_random_crop_cuts_the_resized_image_where_it_says(photo):
    resized = to_tensor(resize_image(Image.open(photo).convert("RGB"), (96, 64)))
    lefts = set()
    for seed in range(30):
        image = load(photo, SubsetOptions(random_crop=True), seed)
        left, top, right, bottom = image.crop_ltrb
        assert (top, bottom, right - left) == (0, 64, 64) and 0 <= left <= 32
        assert torch.equal(image.pixels, resized[:, top:bottom, left:right])
        lefts.add(left)
    assert len(lefts) > 10


def test_random_crop_box_covers_the_whole_range():
    rng = random.Random(1)
    boxes = {random_crop_box((70, 66), (64, 64), rng) for _ in range(400)}
    assert {box[0] for box in boxes} == set(range(7)) and {box[1] for box in boxes} == {0, 1, 2}


def test_same_seed_same_image_all_options(photo):
    options = SubsetOptions(flip_aug=True, color_aug=True, random_crop=True, alpha_mask=True)
    for seed in range(10):
        a, b = load(photo, options, seed), load(photo, options, seed)
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.mask, b.mask)
        assert (a.flipped, a.crop_ltrb) == (b.flipped, b.crop_ltrb)


def test_flip_mirrors_half_of_the_samples(photo):
    plain = load(photo, SubsetOptions())
    flips = [load(photo, SubsetOptions(flip_aug=True), seed) for seed in range(200)]
    assert 70 < sum(image.flipped for image in flips) < 130
    for image in flips[:20]:
        assert torch.equal(image.pixels, plain.pixels.flip(-1) if image.flipped else plain.pixels)


def test_alpha_mask_follows_crop_and_flip_while_pixels_stay_on_white(tmp_path):
    rgba = np.zeros((64, 96, 4), dtype=np.uint8)
    rgba[..., :3] = 40
    rgba[:, :48, 3] = 255  # left half opaque, right half transparent
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(path)
    for seed in range(12):
        image = load(path, SubsetOptions(alpha_mask=True, flip_aug=True, random_crop=True), seed)
        left = image.crop_ltrb[0]
        expected = (torch.arange(left, left + 64) < 48).float().expand(1, 64, 64)
        expected = expected.flip(-1) if image.flipped else expected
        assert image.mask.shape == (1, 64, 64) and torch.equal(image.mask, expected)
        # Transparent pixels are white (1.0); opaque ones keep their colour.
        assert torch.equal(image.pixels[0] == 1.0, expected[0] == 0)


def test_alpha_mask_is_ones_without_an_alpha_channel(photo):
    image = load(photo, SubsetOptions(alpha_mask=True))
    assert torch.equal(image.mask, torch.ones(1, 64, 64))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alice_120_80_40_50.png", FaceBox(120, 80, 40, 50)),
        ("a_b_120_80_40_50.jpg", FaceBox(120, 80, 40, 50)),
        ("120_80_40_50.png", None),  # kohya needs five tokens: a name and the four numbers
        ("alice_0_80_40_50.png", None),  # a zero centre means "no face" to kohya
        ("alice_120_80_0_50.png", None),
        ("alice_x_80_40_50.png", None),
        ("plain.png", None),
    ],
)
def test_face_box_from_name(name, expected):
    assert face_box_from_name(Path(name)) == expected


def test_face_crop_scales_the_face_into_the_range_and_centres_it():
    face = FaceBox(cx=600, cy=500, width=100, height=80)
    for seed in range(50):
        resized, box = face_crop_window(
            (1200, 1000), (256, 256), face, (2.0, 4.0), False, random.Random(seed)
        )
        scale = resized[0] / 1200
        # The face's longer side becomes 1/4 to 1/2 of the bucket's shorter side.
        assert 256 / 4 - 1 <= 100 * scale <= 256 / 2 + 1
        left, top, right, bottom = box
        assert (right - left, bottom - top) == (256, 256)
        assert 0 <= left and right <= resized[0] and 0 <= top and bottom <= resized[1]
        # Centred on the face, give or take kohya's jitter of face_size / 20 = 5 pixels (and rounding).
        assert abs((left + right) / 2 - 600 * scale) <= 6 and abs((top + bottom) / 2 - 500 * scale) <= 6


def test_face_crop_fixed_range_is_deterministic_and_never_below_the_bucket():
    face = FaceBox(cx=40, cy=30, width=20, height=20)
    first = face_crop_window((160, 120), (128, 128), face, (1.0, 1.0), False, random.Random(0))
    assert first == face_crop_window((160, 120), (128, 128), face, (1.0, 1.0), False, random.Random(9))
    resized, box = first
    assert resized[0] >= 128 and resized[1] >= 128
    assert box[0] == 0 and box[1] == 0  # the face near the corner pulls the crop to the edge


def test_face_crop_with_random_crop_wanders_around_the_face_but_stays_inside():
    face = FaceBox(cx=300, cy=200, width=60, height=60)
    lefts = set()
    for seed in range(40):
        resized, box = face_crop_window((600, 400), (128, 128), face, (2.0, 3.0), True, random.Random(seed))
        assert 0 <= box[0] and box[2] <= resized[0] and 0 <= box[1] and box[3] <= resized[1]
        lefts.add(box[0])
    assert len(lefts) > 20


def test_face_crop_is_used_from_the_file_name(tmp_path):
    path = tmp_path / "me_30_20_10_10.png"
    gradient(120, 80).save(path)
    image = load(path, SubsetOptions(face_crop_aug_range=(3.0, 3.0)), resized=(96, 64), bucket=(32, 32))
    # 32 / (10 * 3) > 1 would enlarge; kohya never enlarges for a face, so the scale is 1 and the
    # 32x32 window is centred on the face at (30, 20).
    assert image.resized_size == (120, 80) and image.crop_ltrb == (14, 4, 46, 36)
    assert image.pixels.shape == (3, 32, 32)


def test_color_aug_changes_a_third_of_images_a_little():
    img = gradient(32, 32)
    base = np.asarray(img, dtype=np.float64)
    changed = 0
    for seed in range(300):
        out = np.asarray(color_augment(img, random.Random(seed)), dtype=np.float64)
        if not np.array_equal(out, base):
            changed += 1
            # A gamma of 0.95-1.05 on [0, 1] values or a hue turn of at most 16 degrees: small changes
            # (kohya's gamma on 0-255 values would brighten mid-tones by up to 30%).
            assert abs(out.mean() - base.mean()) < 12
    assert 70 < changed < 130


def test_mask_to_latent_size_averages_areas():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1
    small = mask_to_latent_size(mask, (2, 2))
    assert torch.equal(small, torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]]))
    assert mask_to_latent_size(small, (2, 2)) is small
