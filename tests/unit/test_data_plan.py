import json
from collections import Counter
from pathlib import Path

import pytest

from loracraft.data.balance import balance_reg_repeats
from loracraft.data.metadata import bucket_info, dataset_dirs, tag_frequency
from loracraft.data.plan import build_epoch_plan, count_steps, epoch_batches
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
    defaults = dict(resolution=(512, 512), batch_size=1, seed=42, max_train_epochs=1, max_train_steps=None)
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
    plan = plan_for([train, reg], batch_size=2, max_train_epochs=10)
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
    alone, with_reg = plan_for([train], batch_size=4), plan_for([train, reg], batch_size=4)
    assert (alone.batches_per_epoch, with_reg.batches_per_epoch) == (10, 20)
    # 10 reg images must fill 40 samples: 4 repeats each.
    assert [image.repeats for image in with_reg.images if image.record.is_reg] == [4] * 10


def test_several_buckets_round_up_separately_then_accumulate():
    sizes = [(512, 512)] * 3 + [(1000, 600)] * 2 + [(600, 1000)]
    plan = plan_for(
        [subset("1_mix", sizes, repeats=1)], batch_size=2, enable_bucket=True, gradient_accumulation_steps=3
    )
    assert plan.buckets == ((384, 640), (512, 512), (640, 384))
    assert [len(samples) for samples in plan.bucket_samples] == [1, 3, 2]
    assert plan.batches_per_epoch == 1 + 2 + 1
    assert plan.steps.steps_per_epoch == 2
    assert "each bucket rounds up on its own" in format_plan(plan)
    assert "4 batches / grad accumulation 3 = 2 optimizer steps per epoch" in format_plan(plan)


def test_steps_given_derive_epochs_and_say_so():
    plan = plan_for(
        [subset("3_a", [(512, 512)] * 10, repeats=3)], batch_size=4, max_train_epochs=None, max_train_steps=20
    )
    assert (plan.batches_per_epoch, plan.steps.num_epochs, plan.steps.max_train_steps) == (8, 3, 20)
    assert "max_train_steps 20 / 8 per epoch = 3 epochs (the last one stops after 4 steps)" in format_plan(
        plan
    )


def test_epoch_batches_are_deterministic_single_bucket_and_complete():
    sizes = [(512, 512)] * 5 + [(1000, 600)] * 4 + [(600, 1000)] * 3
    plan = plan_for([subset("3_mix", sizes, repeats=3)], batch_size=4, enable_bucket=True)
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
    plan_a = plan_for([subset("4_a", [(512, 512)] * 6, repeats=4)], batch_size=2, seed=1)
    plan_b = plan_for([subset("4_a", [(512, 512)] * 6, repeats=4)], batch_size=2, seed=2)
    assert epoch_batches(plan_a, 0) != epoch_batches(plan_b, 0)


def test_only_reg_folders_is_an_error():
    with pytest.raises(UserError, match="no training images"):
        plan_for([subset("1_dog", [(512, 512)], repeats=1, is_reg=True)])


def test_no_upscale_image_below_one_step_names_the_file():
    plan_args = dict(enable_bucket=True, bucket_no_upscale=True)
    with pytest.raises(UserError, match=r"/data/img/1_a/000.png is 40x300.*--bucket_reso_steps 64"):
        plan_for([subset("1_a", [(40, 300)], repeats=1)], **plan_args)


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
