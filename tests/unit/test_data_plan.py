import json
from collections import Counter
from pathlib import Path

import pytest

from loracraft.config.dataset_options import DatasetOptions
from loracraft.data.balance import balance_reg_repeats
from loracraft.data.metadata import (
    bucket_info,
    dataset_dirs,
    datasets_metadata,
    merged_dataset_dirs,
    tag_frequency,
)
from loracraft.data.plan import (
    DatasetSpec,
    build_epoch_plan,
    build_run_plan,
    count_steps,
    epoch_batches,
)
from loracraft.data.records import ImageRecord, Subset
from loracraft.data.summary import format_plan
from loracraft.errors import UserError


def subset(
    name: str, sizes: list[tuple[int, int]], *, repeats: int, is_reg: bool = False, caption: str = ""
) -> Subset:
    folder = Path("/data") / ("reg" if is_reg else "img") / name
    records = tuple(
        ImageRecord(folder / f"{i:03d}.png", caption or name, w, h, is_reg=is_reg, subset=name)
        for i, (w, h) in enumerate(sizes)
    )
    return Subset(folder, name.split("_", 1)[1], repeats, is_reg, records)


def plan_for(subsets, **kwargs):
    defaults = dict(
        resolution=(512, 512), train_batch_size=1, seed=42, max_train_epochs=1, max_train_steps=None
    )
    return build_epoch_plan(subsets, **{**defaults, **kwargs})


@pytest.mark.parametrize(
    ("train", "folder_repeats", "expected"),
    [
        (200, [1] * 300, [1] * 200 + [0] * 100),  # more reg images than train samples: the tail is unused
        (10, [1, 1, 1], [4, 3, 3]),  # fewer: one pass with folder repeats, then +1 per image, cycling
        (5, [10], [10]),  # the first pass keeps the folder's repeats even past the target
        (6, [2, 2, 2, 2], [2, 2, 2, 0]),
        (7, [], []),
    ],
)
def test_reg_balancing(train, folder_repeats, expected):
    assert balance_reg_repeats(train, folder_repeats) == expected


@pytest.mark.parametrize(
    ("batches", "accum", "processes", "epochs", "steps", "expected"),
    [
        (200, 1, 1, 10, None, (200, 10, 2000)),
        (201, 2, 1, 3, None, (101, 3, 303)),  # the last, partial accumulation still steps
        (50, 4, 1, None, 1000, (13, 77, 1000)),  # steps given: epochs = ceil(1000 / 13)
        (10, 1, 2, 3, None, (5, 3, 15)),  # two processes share each epoch's batches
        (200, 1, 1, 2, 5000, (200, 2, 400)),  # epochs override steps, like kohya
    ],
)
def test_step_formula(batches, accum, processes, epochs, steps, expected):
    count = count_steps(
        batches,
        gradient_accumulation_steps=accum,
        num_processes=processes,
        max_train_epochs=epochs,
        max_train_steps=steps,
    )
    assert (count.steps_per_epoch, count.num_epochs, count.max_train_steps) == expected


def test_guide_example_20_images_x10_with_300_reg():
    train = subset("10_sks dog", [(512, 512)] * 20, repeats=10)
    reg = subset("1_dog", [(512, 512)] * 300, repeats=1, is_reg=True)
    plan = plan_for([train, reg], train_batch_size=2, max_train_epochs=10)
    assert (plan.num_train_samples, plan.num_reg_samples, plan.num_reg_images) == (200, 200, 300)
    assert plan.unused_reg_images == 100
    assert plan.batches_per_epoch == 200
    assert (plan.steps.steps_per_epoch, plan.steps.max_train_steps) == (200, 2000)
    assert any("100 of 300 regularization images are unused" in w for w in plan.warnings)
    text = format_plan(plan)
    for line in [
        "10_sks dog: 20 images x 10 repeats = 200 samples",
        "1_dog: 300 images x 1 repeat, balanced to 200 samples (100 images unused)",
        "samples per epoch: 200 train + 200 reg = 400",
        "512x512: 400 samples -> 200 batches",
        "400 samples in batches of 2 = 200 batches per epoch",
        "200 batches / grad accumulation 1 = 200 optimizer steps per epoch",
        "10 epochs x 200 = 2000 optimizer steps",
    ]:
        assert line in text


def test_reg_images_double_the_steps():
    train = subset("5_sks", [(512, 512)] * 8, repeats=5)
    reg = subset("1_person", [(512, 512)] * 10, repeats=1, is_reg=True)
    alone, with_reg = plan_for([train], train_batch_size=4), plan_for([train, reg], train_batch_size=4)
    assert (alone.batches_per_epoch, with_reg.batches_per_epoch) == (10, 20)
    # 10 reg images must fill 40 samples: 4 repeats each.
    assert [image.repeats for image in with_reg.images if image.record.is_reg] == [4] * 10


def test_several_buckets_round_up_separately_then_accumulate():
    sizes = [(512, 512)] * 3 + [(1000, 600)] * 2 + [(600, 1000)]
    plan = plan_for(
        [subset("1_mix", sizes, repeats=1)],
        train_batch_size=2,
        enable_bucket=True,
        gradient_accumulation_steps=3,
    )
    assert plan.buckets == ((384, 640), (512, 512), (640, 384))
    assert [len(samples) for samples in plan.bucket_samples] == [1, 3, 2]
    assert plan.batches_per_epoch == 1 + 2 + 1
    assert plan.steps.steps_per_epoch == 2
    assert "each bucket rounds up on its own" in format_plan(plan)
    assert "4 batches / grad accumulation 3 = 2 optimizer steps per epoch" in format_plan(plan)


def test_steps_given_derive_epochs_and_say_so():
    plan = plan_for(
        [subset("3_a", [(512, 512)] * 10, repeats=3)],
        train_batch_size=4,
        max_train_epochs=None,
        max_train_steps=20,
    )
    assert (plan.batches_per_epoch, plan.steps.num_epochs, plan.steps.max_train_steps) == (8, 3, 20)
    assert "max_train_steps 20 / 8 per epoch = 3 epochs (the last one stops after 4 steps)" in format_plan(
        plan
    )


def test_epoch_batches_are_deterministic_single_bucket_and_complete():
    sizes = [(512, 512)] * 5 + [(1000, 600)] * 4 + [(600, 1000)] * 3
    plan = plan_for([subset("3_mix", sizes, repeats=3)], train_batch_size=4, enable_bucket=True)
    first = epoch_batches(plan, 0)
    assert first == epoch_batches(plan, 0)
    assert first != epoch_batches(plan, 1)
    assert len(first) == plan.batches_per_epoch
    assert Counter(i for batch in first for i in batch) == Counter(i for s in plan.bucket_samples for i in s)
    for batch in first:
        assert len({plan.images[i].choice.bucket for i in batch}) == 1
        assert 1 <= len(batch) <= 4
    assert sum(len(batch) < 4 for batch in first) <= len(plan.buckets)


def test_other_seed_other_order():
    plan_a = plan_for([subset("4_a", [(512, 512)] * 6, repeats=4)], train_batch_size=2, seed=1)
    plan_b = plan_for([subset("4_a", [(512, 512)] * 6, repeats=4)], train_batch_size=2, seed=2)
    assert epoch_batches(plan_a, 0) != epoch_batches(plan_b, 0)


def test_only_reg_folders_is_an_error():
    with pytest.raises(UserError, match="no training images"):
        plan_for([subset("1_dog", [(512, 512)], repeats=1, is_reg=True)])


NO_UPSCALE = dict(enable_bucket=True, bucket_no_upscale=True)


def test_no_upscale_images_below_one_step_are_refused_in_one_message_naming_each():
    sizes = [(40, 300), (512, 512), (50, 4000)] + [(63, 63)] * 5
    with pytest.raises(UserError) as err:
        plan_for([subset("1_a", sizes, repeats=1)], **NO_UPSCALE)
    assert str(err.value) == (
        "7 image(s) are smaller than --bucket_reso_steps 64 on a side, so --bucket_no_upscale has no bucket "
        "for them: /data/img/1_a/000.png (40x300), /data/img/1_a/002.png (50x4000), /data/img/1_a/003.png "
        "(63x63), /data/img/1_a/004.png (63x63), /data/img/1_a/005.png (63x63) and 2 more; enlarge or remove "
        "them, or turn off --bucket_no_upscale to have them enlarged"
    )


@pytest.mark.parametrize(
    ("size", "resolution", "bucket", "note"),
    [
        ((96, 64), (64, 64), (64, 64), "(96x64 -> 96x64, cropped to 64x64)"),
        ((100, 8000), (512, 512), (64, 4096), "(100x8000 -> 64x5120, cropped to 64x4096)"),
    ],
)
def test_no_upscale_image_that_would_shrink_below_a_step_trains_in_the_smallest_bucket_with_a_note(
    size, resolution, bucket, note
):
    plan = plan_for([subset("1_a", [size, (512, 512)], repeats=1)], resolution=resolution, **NO_UPSCALE)
    assert plan.images[0].choice.bucket == bucket
    assert bucket in plan.buckets
    (warning,) = plan.warnings
    assert warning.startswith(
        f"1 image(s) would shrink to under --bucket_reso_steps 64 on a side to fit the area of --resolution "
        f"{resolution[0]}x{resolution[1]} (kohya stops on them with ZeroDivisionError)"
    )
    assert warning.endswith(f"one step on the short side: /data/img/1_a/000.png {note}")


def test_metadata_shapes_match_kohya():
    train = subset("2_sks toy", [(512, 512), (1000, 600)], repeats=2, caption="sks toy, Red,  plain ,")
    reg = subset("1_toy", [(512, 512)] * 5, repeats=1, is_reg=True)
    plan = plan_for([train, reg], enable_bucket=True)
    info = json.loads(json.dumps(bucket_info(plan)))
    assert info["buckets"] == {
        "0": {"resolution": [512, 512], "count": 6},
        "1": {"resolution": [640, 384], "count": 2},
    }
    assert info["mean_img_ar_error"] == pytest.approx(0.0)
    assert dataset_dirs(plan, is_reg=False) == {"2_sks toy": {"n_repeats": 2, "img_count": 2}}
    assert dataset_dirs(plan, is_reg=True) == {"1_toy": {"n_repeats": 1, "img_count": 5}}
    assert tag_frequency(plan) == {"2_sks toy": {"sks toy": 2, "red": 2, "plain": 2}, "1_toy": {"1_toy": 5}}


def two_dataset_plan(**kwargs):
    """Dataset 0: 512px, batch 2, 6 train images x 2 + 4 reg; dataset 1: 768px, batch 3, the same folder
    as dataset 0's train subset plus a second one."""
    shared = subset("2_sks", [(512, 512)] * 6, repeats=2, caption="sks, red")
    reg = subset("1_dog", [(512, 512)] * 4, repeats=1, is_reg=True)
    other = subset("1_style", [(768, 768)] * 5, repeats=1)
    datasets = [
        DatasetSpec((shared, reg), DatasetOptions(train_batch_size=2), label="x.toml [[datasets]][0]"),
        DatasetSpec(
            (shared, other),
            DatasetOptions(resolution=(768, 768), train_batch_size=3, enable_bucket=True),
            "x.toml [[datasets]][1]",
        ),
    ]
    defaults = dict(seed=3, max_train_epochs=2, max_train_steps=None)
    return build_run_plan(datasets, **{**defaults, **kwargs})


def test_several_datasets_each_with_own_resolution_batch_size_and_reg_balance():
    plan = two_dataset_plan()
    first, second = plan.datasets
    # 12 train samples; 4 reg images balanced up to 12 samples within dataset 0 only.
    assert (first.num_train_samples, first.num_reg_samples, first.batches_per_epoch) == (12, 12, 12)
    # 6 images resized to 768x768 plus 5 native: 17 samples in batches of 3.
    assert (second.num_train_samples, second.num_reg_samples, second.buckets) == (17, 0, ((768, 768),))
    assert second.batches_per_epoch == 6
    assert plan.batches_per_epoch == 18 == plan.steps.steps_per_epoch
    assert plan.steps.max_train_steps == 36
    assert plan.buckets == ((512, 512), (768, 768))
    assert [plan.subsets[i].name for i in second.subset_indices] == ["2_sks", "1_style"]
    assert {plan.images[i].subset_index for s in second.bucket_samples for i in s} == {2, 3}


def test_epoch_batches_never_mix_datasets_and_use_each_batch_size():
    plan = two_dataset_plan()
    first_images = {i for s in plan.datasets[0].bucket_samples for i in s}
    batches = epoch_batches(plan, 0)
    assert len(batches) == plan.batches_per_epoch
    assert batches == epoch_batches(plan, 0) != epoch_batches(plan, 1)
    for batch in batches:
        inside_first = {i in first_images for i in batch}
        assert len(inside_first) == 1
        assert len(batch) <= (2 if inside_first.pop() else 3)
    # Batches of both datasets are shuffled together, not one dataset after the other.
    owners = [batch[0] in first_images for batch in batches]
    assert owners != sorted(owners) and owners != sorted(owners, reverse=True)


def test_format_plan_prints_every_dataset_and_the_sum():
    text = format_plan(two_dataset_plan())
    for line in [
        "Dataset 1 of 2: x.toml [[datasets]][0] (resolution 512x512, batch size 2)",
        "  train  2_sks: 6 images x 2 repeats = 12 samples",
        "  reg    1_dog: 4 images x 1 repeat, balanced to 12 samples",
        "  samples per epoch: 12 train + 12 reg = 24",
        "Dataset 2 of 2: x.toml [[datasets]][1] (resolution 768x768, batch size 3)",
        "Buckets (resolution 768x768, aspect-ratio buckets; mean aspect-ratio error 0.0000)",
        "  768x768: 17 samples -> 6 batches",
        "  x.toml [[datasets]][0]: 24 samples in batches of 2 = 12 batches",
        "  x.toml [[datasets]][1]: 17 samples in batches of 3 = 6 batches",
        "  12 + 6 = 18 batches per epoch (each bucket rounds up on its own)",
        "  2 epochs x 18 = 36 optimizer steps",
    ]:
        assert line in text


def test_reg_only_dataset_is_unused_with_a_warning_and_no_train_anywhere_is_an_error():
    train = subset("1_a", [(512, 512)] * 2, repeats=1)
    reg = subset("1_dog", [(512, 512)] * 3, repeats=1, is_reg=True)
    args = dict(seed=0, max_train_epochs=1, max_train_steps=None)
    plan = build_run_plan([DatasetSpec((train,)), DatasetSpec((reg,), label="L")], **args)
    assert plan.num_reg_samples == 0 and plan.batches_per_epoch == 2
    assert "L: no training images, so its regularization images are unused" in plan.warnings[0]
    with pytest.raises(UserError, match="no training images: .*is_reg = true in the dataset config"):
        build_run_plan([DatasetSpec((reg,))], **args)


def test_dataset_errors_and_warnings_name_the_dataset():
    small = subset("1_a", [(40, 300)], repeats=1)
    spec = DatasetSpec(
        (small,), DatasetOptions(enable_bucket=True, bucket_no_upscale=True), "x.toml [[datasets]][2]"
    )
    with pytest.raises(
        UserError,
        match=r"^x.toml \[\[datasets\]\]\[2\]: 1 image\(s\) are smaller .*/data/img/1_a/000.png \(40x300\)",
    ):
        build_run_plan([spec], seed=0, max_train_epochs=1, max_train_steps=None)
    odd = DatasetSpec(
        (subset("1_b", [(512, 512)], repeats=1),),
        DatasetOptions(enable_bucket=True, min_bucket_reso=200),
        "L",
    )
    plan = build_run_plan([odd], seed=0, max_train_epochs=1, max_train_steps=None)
    assert plan.warnings == ("L: --min_bucket_reso 200 rounded down to 192, a multiple of 64",)


def test_ss_datasets_metadata_and_merged_dirs():
    plan = two_dataset_plan()
    entries = json.loads(json.dumps(datasets_metadata(plan)))
    assert [entry["resolution"] for entry in entries] == [[512, 512], [768, 768]]
    first, second = entries
    assert (first["batch_size_per_device"], first["num_train_images"], first["num_reg_images"]) == (2, 12, 4)
    assert (first["enable_bucket"], first["min_bucket_reso"], second["min_bucket_reso"]) == (False, None, 256)
    assert first["bucket_info"]["buckets"] == {"0": {"resolution": [512, 512], "count": 24}}
    assert first["tag_frequency"] == {"2_sks": {"sks": 6, "red": 6}, "1_dog": {"1_dog": 4}}
    assert first["subsets"][1] == {
        "img_count": 4, "num_repeats": 1, "color_aug": False, "flip_aug": False, "random_crop": False,
        "shuffle_caption": False, "keep_tokens": 0, "keep_tokens_separator": "", "secondary_separator": None,
        "enable_wildcard": False, "caption_prefix": None, "caption_suffix": None, "image_dir": "1_dog",
        "class_tokens": "dog", "is_reg": True, "alpha_mask": False,
    }  # fmt: skip
    assert merged_dataset_dirs(plan) == {
        "2_sks": {"n_repeats": 2, "img_count": 6},
        "2_sks (2)": {"n_repeats": 2, "img_count": 6},
        "1_style": {"n_repeats": 1, "img_count": 5},
    }
    # A folder used by two datasets is counted once.
    assert tag_frequency(plan)["2_sks"] == {"sks": 6, "red": 6}
