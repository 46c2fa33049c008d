"""Buckets against kohya's own: the bucket, resize and aspect-ratio error that sd-scripts' BucketManager
computes for the same image and flags (tests/data/kohya/behavior_traces.json, produced by running its
code). Where kohya crashes or makes a zero-width bucket, loracraft deliberately differs (README)."""

import json
from pathlib import Path

import pytest

from loracraft.data.plan import build_epoch_plan
from loracraft.data.records import ImageRecord, Subset
from loracraft.errors import UserError

CASES = json.loads((Path(__file__).parents[1] / "data" / "kohya" / "behavior_traces.json").read_text())[
    "bucket_cases"
]["cases"]
SETTINGS = ("enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")


def plan_one(case: dict):
    width, height = case["image"]
    record = ImageRecord(Path("a.png"), "a", width, height, is_reg=False, subset="1_a")
    subset = Subset(Path("1_a"), "a", 1, False, (record,))
    options = {name: case[name] for name in SETTINGS}
    return build_epoch_plan(
        [subset],
        resolution=tuple(case["resolution"]),
        seed=0,
        max_train_epochs=1,
        max_train_steps=None,
        **options,
    )


def case_id(case: dict) -> str:
    mode = "no_upscale" if case["bucket_no_upscale"] else "buckets" if case["enable_bucket"] else "square"
    return (
        f"{case['image'][0]}x{case['image'][1]}@{case['resolution'][0]}-{mode}-min{case['min_bucket_reso']}"
    )


TRACED = [case for case in CASES if "error" not in case and 0 not in case["bucket_reso"]]


@pytest.mark.parametrize("case", TRACED, ids=case_id)
def test_bucket_resize_and_error_are_kohyas(case):
    choice = plan_one(case).images[0].choice
    assert list(choice.bucket) == case["bucket_reso"]
    assert list(choice.resized_size) == case["resized_size"]
    assert choice.ar_error == pytest.approx(case["ar_error"])


def test_bucket_limits_that_no_upscale_ignores_are_not_checked():
    """kohya asserts --min_bucket_reso <= --resolution even under --bucket_no_upscale, which ignores both."""
    (case,) = [case for case in CASES if case.get("error", "").startswith("AssertionError")]
    assert case["bucket_no_upscale"] and case["min_bucket_reso"] > case["resolution"][0]
    assert plan_one(case).images[0].choice.bucket == (64, 64)


def test_where_kohya_crashes_or_makes_an_empty_bucket_we_differ_on_purpose():
    crashes = next(case for case in CASES if case.get("error", "").startswith("ZeroDivisionError"))
    assert plan_one(crashes).images[0].choice.bucket == (64, 64)  # the smallest bucket of its shape
    empty = next(case for case in CASES if "error" not in case and 0 in case["bucket_reso"])
    with pytest.raises(UserError, match=r"smaller than --bucket_reso_steps 64 on a side.*a.png \(50x4000\)"):
        plan_one(empty)
