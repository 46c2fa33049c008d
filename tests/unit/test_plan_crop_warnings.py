"""Images whose bucket's centre crop throws away most of them (a 20000x20 banner) are named once, at planning
time, with their size and their bucket."""

from pathlib import Path

import pytest

from loracraft.config.dataset_options import DatasetOptions
from loracraft.data.buckets import BucketChoice, select_bucket
from loracraft.data.plan import DatasetSpec, build_epoch_plan, build_run_plan
from loracraft.data.records import ImageRecord, Subset

FOLDER = Path("/data/img/1_x")


def one_folder(*sizes: tuple[int, int]) -> Subset:
    records = tuple(
        ImageRecord(FOLDER / f"{w}x{h}.png", "x", w, h, is_reg=False, subset="1_x") for w, h in sizes
    )
    return Subset(FOLDER, "x", 1, False, records)


def plan_warnings(*sizes: tuple[int, int], **options) -> tuple[str, ...]:
    settings = dict(resolution=(512, 512), enable_bucket=True) | options
    return build_epoch_plan(
        [one_folder(*sizes)], seed=0, max_train_epochs=1, max_train_steps=None, **settings
    ).warnings


@pytest.mark.parametrize(
    ("choice", "kept"),
    [
        (BucketChoice((512, 512), (512, 512), 0.0), 1.0),
        (BucketChoice((512, 512), (1024, 512), 1.0), 0.5),
        (BucketChoice((1024, 256), (256000, 256), 0.0), 0.004),
    ],
)
def test_kept_area_is_the_share_of_the_resized_image_inside_the_bucket(choice, kept):
    assert choice.kept_area == pytest.approx(kept)


def test_an_extreme_banner_is_named_with_its_size_and_bucket():
    buckets_at_512 = [(1024, 256), (512, 512)]
    assert select_bucket(20000, 20, buckets_at_512).bucket == (1024, 256)
    (warning,) = plan_warnings((20000, 20), (512, 512), (768, 512))
    assert warning == (
        f"{FOLDER / '20000x20.png'} (20000x20) lands in bucket 1024x256, whose centre crop keeps under 1% of it: "
        "no bucket comes near its aspect ratio; crop the image to the part that matters or remove it"
    )


def test_images_that_keep_half_or_more_are_not_named():
    # 3:1 keeps 3/4 in the 4:1 bucket; 2:1 keeps exactly half of itself in a square.
    assert plan_warnings((1536, 512), (2048, 256)) == ()
    assert plan_warnings((1024, 512), enable_bucket=False) == ()


def test_without_buckets_the_fix_is_enable_bucket():
    (warning,) = plan_warnings((1536, 512), enable_bucket=False)
    assert warning == (
        f"{FOLDER / '1536x512.png'} (1536x512) lands in bucket 512x512, whose centre crop keeps 33% of it: without "
        "--enable_bucket every image trains at 512x512; pass --enable_bucket, or crop the image to the part "
        "that matters"
    )


def test_many_such_images_are_named_five_times_then_counted():
    warnings = plan_warnings(*[(20000, 20 + i) for i in range(8)])
    assert [w.split(" ", 1)[0] for w in warnings[:5]] == [
        str(FOLDER / f"20000x{20 + i}.png") for i in range(5)
    ]
    assert warnings[5:] == ("3 more image(s) lose over half of their area to the centre crop",)


def test_the_warning_names_the_dataset_of_a_dataset_config():
    spec = DatasetSpec(
        (one_folder((20000, 20)),), DatasetOptions(enable_bucket=True), "x.toml [[datasets]][1]"
    )
    plan = build_run_plan([spec], seed=0, max_train_epochs=1, max_train_steps=None)
    (warning,) = plan.warnings
    assert warning.startswith(f"x.toml [[datasets]][1]: {FOLDER / '20000x20.png'} (20000x20) lands in bucket")
