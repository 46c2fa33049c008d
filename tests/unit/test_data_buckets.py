import pytest

from loracraft.data.buckets import (
    adjust_bucket_limits,
    center_crop_box,
    cover_size,
    fits_one_step,
    make_bucket_resolutions,
    select_bucket,
    select_bucket_no_upscale,
    shrinks_below_one_step,
)
from loracraft.errors import UserError

# Hand-computed from kohya §4.4 for area 512*512: width w gets height floor(262144 / w / 64) * 64, capped at 1024.
BUCKETS_512 = sorted(
    {(512, 512)}
    | {
        pair
        for w, h in [
            (256, 1024),
            (320, 768),
            (384, 640),
            (448, 576),
            (704, 320),
            (832, 256),
            (896, 256),
            (960, 256),
        ]
        for pair in [(w, h), (h, w)]
    }
)


def test_bucket_list_for_512_is_the_hand_computed_17():
    buckets = make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert buckets == BUCKETS_512
    assert len(buckets) == 17


@pytest.mark.parametrize(
    ("max_size", "count", "members"),
    [
        (1024, 25, [(256, 1024), (768, 1024), (1024, 1024)]),
        (2048, 41, [(1024, 1024), (256, 2048), (2048, 512)]),
    ],
)
def test_bucket_list_for_1024(max_size, count, members):
    buckets = make_bucket_resolutions((1024, 1024), 256, max_size, 64)
    assert len(buckets) == count
    assert all(m in buckets for m in members)
    assert buckets == sorted(buckets)
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 1024 * 1024 for w, h in buckets)


@pytest.mark.parametrize(
    ("size", "bucket", "resized", "ar_error"),
    [
        ((1000, 600), (640, 384), (640, 384), 0.0),  # 5:3 is a bucket's exact aspect ratio
        ((1000, 500), (704, 320), (704, 352), 2.2 - 2.0),  # nearest aspect 2.2; height overflows by 32
        ((512, 512), (512, 512), (512, 512), 0.0),  # exact bucket: used as is
        ((100, 100), (512, 512), (512, 512), 0.0),  # small images are upscaled to cover
        ((600, 1000), (384, 640), (384, 640), 0.0),
    ],
)
def test_select_bucket_normal_mode(size, bucket, resized, ar_error):
    choice = select_bucket(*size, BUCKETS_512)
    assert choice.bucket == bucket
    assert choice.resized_size == resized
    assert choice.ar_error == pytest.approx(ar_error)


def test_select_bucket_without_bucketing_uses_the_resolution():
    choice = select_bucket(1000, 500, [(512, 512)])
    assert choice.bucket == (512, 512)
    assert choice.resized_size == (1024, 512)
    assert choice.ar_error == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("size", "bucket", "resized"),
    [
        ((300, 200), (256, 192), (300, 200)),  # small: never upscaled, cropped to multiples of 64
        ((2000, 1000), (640, 320), (640, 320)),  # large: shrunk to the area, height rounded to the step
        ((1000, 600), (640, 384), (640, 384)),
        ((512, 512), (512, 512), (512, 512)),
    ],
)
def test_select_bucket_no_upscale(size, bucket, resized):
    choice = select_bucket_no_upscale(*size, 512 * 512, 64)
    assert choice.bucket == bucket
    assert choice.resized_size == resized
    assert choice.resized_size[0] <= size[0] and choice.resized_size[1] <= size[1]


@pytest.mark.parametrize(
    ("size", "max_area", "bucket", "resized"),
    [
        # kohya's rounding leaves the short side at zero steps here (its select_bucket divides by zero):
        # the short side shrinks to one step instead, and the long side is cropped to the step.
        ((96, 64), 64 * 64, (64, 64), (96, 64)),
        ((64, 96), 64 * 64, (64, 64), (64, 96)),
        ((100, 8000), 512 * 512, (64, 4096), (64, 5120)),  # long side capped to the area: 64 x 4096
        ((8000, 100), 512 * 512, (4096, 64), (5120, 64)),
    ],
)
def test_no_upscale_image_that_would_shrink_below_a_step_gets_the_smallest_bucket_of_its_shape(
    size, max_area, bucket, resized
):
    assert shrinks_below_one_step(*size, max_area, 64)
    choice = select_bucket_no_upscale(*size, max_area, 64)
    assert (choice.bucket, choice.resized_size) == (bucket, resized)
    assert choice.ar_error == pytest.approx(bucket[0] / bucket[1] - size[0] / size[1])
    assert all(r >= b for r, b in zip(choice.resized_size, bucket, strict=True))  # cropped, never padded


@pytest.mark.parametrize(
    ("size", "max_area"),
    [((300, 200), 512 * 512), ((2000, 1000), 512 * 512), ((64, 64), 64 * 64), ((50, 4000), 512 * 512)],
)
def test_images_kohya_shrinks_to_a_whole_step_are_not_flagged(size, max_area):
    assert not shrinks_below_one_step(*size, max_area, 64)


def test_a_narrow_image_kohya_can_shrink_keeps_kohyas_bucket():
    # The short side shrinks to 66 px, which rounds to one step: kohya's own result, no fallback.
    choice = select_bucket_no_upscale(200, 12000, 512 * 512, 64)
    assert (choice.bucket, choice.resized_size) == ((64, 3840), (64, 3840))


@pytest.mark.parametrize(
    ("size", "fits"),
    [((40, 300), False), ((50, 4000), False), ((63, 63), False), ((64, 64), True), ((96, 64), True)],
)
def test_an_image_under_one_step_on_a_side_has_no_bucket_without_enlarging(size, fits):
    assert fits_one_step(*size, 64) is fits
    if not fits:
        with pytest.raises(ValueError, match="no bucket of 64-pixel steps"):
            select_bucket_no_upscale(*size, 512 * 512, 64)


@pytest.mark.parametrize(
    ("size", "bucket", "expected"),
    [((1000, 500), (704, 320), (704, 352)), ((300, 900), (256, 768), (256, 768))],
)
def test_cover_size_covers_the_bucket(size, bucket, expected):
    assert cover_size(*size, bucket) == expected


def test_center_crop_box_centres_the_window():
    assert center_crop_box((704, 352), (704, 320)) == (0, 16, 704, 336)
    assert center_crop_box((301, 200), (256, 192)) == (22, 4, 278, 196)


def test_bucket_limits_round_to_the_step_with_warnings():
    assert adjust_bucket_limits((512, 512), 256, 1024, 64) == (256, 1024, [])
    low, high, warnings = adjust_bucket_limits((512, 512), 300, 1000, 64)
    assert (low, high) == (256, 1024)
    assert "--min_bucket_reso 300" in warnings[0] and "--max_bucket_reso 1000" in warnings[1]


def test_min_bucket_reso_below_the_step_is_refused_not_rounded_to_zero():
    with pytest.raises(
        UserError, match=r"^--min_bucket_reso 64 is smaller than --bucket_reso_steps 128; set it to 128"
    ):
        adjust_bucket_limits((512, 512), 64, 1024, 128)


def test_resolution_outside_bucket_limits_names_the_flags():
    with pytest.raises(UserError, match="--min_bucket_reso 768"):
        adjust_bucket_limits((512, 512), 768, 1024, 64)
