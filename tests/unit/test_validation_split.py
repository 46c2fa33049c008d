"""Holding images out for the validation loss: kohya's split per folder with its overlap fixed, the
folders held out whole, the dataset-TOML keys, and the held-out images' plan and printed lines."""

import random
from dataclasses import replace
from pathlib import Path

import pytest

from loracraft.config.dataset_config import load_dataset_config
from loracraft.config.dataset_options import DatasetOptions
from loracraft.config.schema import TrainConfig
from loracraft.data.plan import DatasetSpec, build_run_plan
from loracraft.data.records import ImageRecord, Subset
from loracraft.data.summary import format_plan
from loracraft.data.validation_split import SubsetSplit, held_out_count, split_datasets, split_subset
from loracraft.errors import UserError


def folder(name: str, count: int, *, is_reg: bool = False, repeats: int = 2, sizes=((64, 64),)) -> Subset:
    """A folder of `count` images named image_00.png, ... (kohya sorts them the same way)."""
    records = tuple(
        ImageRecord(Path(name) / f"image_{i:02d}.png", name, *sizes[i % len(sizes)], is_reg, name)
        for i in range(count)
    )
    return Subset(Path(name), name, repeats, is_reg, records)


def names(subset: Subset | None) -> list[str]:
    return [] if subset is None else [record.path.name for record in subset.records]


# kohya's split_train_val (library/train_util.py, sd-scripts 48d368fa) on n images: (n, validation_split,
# its training count ceil(n * (1 - split)), its validation count n - (n - round(n * split)), images in both).
KOHYA_COUNTS = [
    (3, 0.5, 2, 2, 1),
    (4, 0.25, 3, 1, 0),
    (5, 0.5, 3, 2, 0),
    (10, 0.15, 9, 2, 1),
    (10, 0.2, 8, 2, 0),
    (7, 0.3, 5, 2, 0),
    (2, 0.5, 1, 1, 0),
    (3, 0.1, 3, 0, 0),
    (20, 0.05, 19, 1, 0),
    (9, 0.5, 5, 4, 0),
    (1, 0.5, 1, 0, 0),
    (6, 0.25, 5, 2, 1),
    (4, 0.1, 4, 0, 0),
    (11, 0.5, 6, 6, 1),
    (2, 0.9, 1, 2, 1),
    (10, 0.3, 7, 3, 0),
]


@pytest.mark.parametrize(("n", "split", "kohya_train", "kohya_validation", "kohya_both"), KOHYA_COUNTS)
def test_every_image_is_in_exactly_one_set(n, split, kohya_train, kohya_validation, kohya_both):
    parts = split_subset(folder("1_x", n), split, seed=1)
    train, validation = names(parts.train), names(parts.validation)
    assert not set(train) & set(validation)
    assert sorted(train + validation) == names(folder("1_x", n))
    # kohya's validation count where it holds out some but not all; one image otherwise, when it can.
    expected = min(max(kohya_validation, 1), n - 1)
    assert len(validation) == held_out_count(n, split) == expected
    # kohya's sets overlap by exactly the image its two roundings count twice.
    assert kohya_both == kohya_train + kohya_validation - n


# kohya's validation and training images for 10, 3 and 8 images named image_00.png ... with a seed.
KOHYA_SETS = [
    (10, 0.2, 42, ["image_00.png", "image_01.png"], [f"image_{i:02d}.png" for i in range(2, 10)]),
    (3, 0.5, 7, ["image_00.png", "image_01.png"], ["image_00.png", "image_02.png"]),
    (8, 0.25, 2024, ["image_01.png", "image_07.png"], ["image_00.png", *(f"image_{i:02d}.png" for i in range(2, 7))]),
]  # fmt: skip


@pytest.mark.parametrize(("n", "split", "seed", "kohya_validation", "kohya_train"), KOHYA_SETS)
def test_the_held_out_images_are_kohyas_and_the_rest_trains(n, split, seed, kohya_validation, kohya_train):
    parts = split_subset(folder("1_x", n), split, seed)
    assert names(parts.validation) == kohya_validation
    assert names(parts.train) == [name for name in names(folder("1_x", n)) if name not in kohya_validation]
    assert set(names(parts.train)) <= set(kohya_train)


def test_the_split_leaves_the_global_generator_alone():
    random.seed(5)
    before = random.getstate()
    split_subset(folder("1_x", 10), 0.3, seed=9)
    assert random.getstate() == before


def test_validation_images_count_once_and_training_keeps_its_repeats():
    parts = split_subset(folder("3_x", 4, repeats=3), 0.25, seed=0)
    assert (parts.train.num_repeats, parts.validation.num_repeats) == (3, 1)
    assert parts.warning is None


def test_a_share_that_rounds_to_none_holds_one_image_out_and_says_so():
    parts = split_subset(folder("1_x", 4), 0.1, seed=0)
    assert (len(parts.train.records), len(parts.validation.records)) == (3, 1)
    assert parts.warning == (
        "validation_split 0.1 of the 4 images in 1_x rounds to none; one is held out, so that concept has "
        "a validation loss"
    )


def test_a_single_image_keeps_training_and_says_so():
    parts = split_subset(folder("1_x", 1), 0.5, seed=0)
    assert (names(parts.train), parts.validation) == (["image_00.png"], None)
    assert parts.warning == (
        "1_x has a single image, so validation_split 0.5 cannot hold one out; it trains, and that concept "
        "has no validation loss"
    )


@pytest.mark.parametrize("split", [0.0, 0.5])
def test_reg_folders_never_split(split):
    reg = folder("1_reg", 6, is_reg=True)
    assert split_subset(reg, split, seed=0) == SubsetSplit(reg, None)


def spec(*subsets: Subset, label: str = "", **options) -> DatasetSpec:
    return DatasetSpec(subsets, DatasetOptions(resolution=(64, 64), **options), label)


def test_a_datasets_seed_chooses_its_images_and_the_run_seed_stands_in():
    concept = folder("1_x", 10)
    with_run_seed = split_datasets([spec(concept, validation_split=0.2)], (), run_seed=42)
    with_own_seed = split_datasets([spec(concept, validation_split=0.2, validation_seed=42)], (), run_seed=3)
    assert names(with_run_seed.validation[0].subsets[0]) == ["image_00.png", "image_01.png"]
    assert names(with_own_seed.validation[0].subsets[0]) == ["image_00.png", "image_01.png"]
    assert with_own_seed.train[0].subsets == with_run_seed.train[0].subsets


def test_held_out_folders_validate_whole_and_a_dataset_left_empty_leaves_training():
    trains, held = folder("2_a", 3), folder("4_b", 2)
    split = split_datasets(
        [spec(trains, held, label="x [[datasets]][0]"), spec(folder("2_c", 2), label="x [[datasets]][1]")],
        {Path("4_b"), Path("2_c")},
        run_seed=0,
    )
    assert [s.subsets for s in split.train] == [(trains,)]
    assert [s.subsets for s in split.validation] == [
        (replace(held, num_repeats=1),),
        (replace(folder("2_c", 2), num_repeats=1),),
    ]
    assert split.warnings == ()


def test_split_warnings_name_the_dataset():
    split = split_datasets(
        [spec(folder("1_x", 1), label="x.toml [[datasets]][0]", validation_split=0.5)], (), 0
    )
    assert split.warnings[0].startswith("x.toml [[datasets]][0]: 1_x has a single image")


def test_a_run_whose_every_training_folder_is_held_out_stops():
    with pytest.raises(UserError) as error:
        split_datasets([spec(folder("1_a", 2), folder("1_reg", 2, is_reg=True))], {Path("1_a")}, 0)
    assert str(error.value) == (
        "no training images: every training folder is held out for validation (is_validation = true in the "
        "dataset config); leave at least one to train"
    )


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_keys_of_the_split_and_the_held_out_subset(tmp_path):
    path = write_toml(
        tmp_path,
        "[general]\nvalidation_split = 0.25\n[[datasets]]\nvalidation_seed = 4\n"
        "[[datasets.subsets]]\nimage_dir = 'a'\n[[datasets.subsets]]\nimage_dir = 'b'\nis_validation = true\n"
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'c'\n",
    )
    first, second = load_dataset_config(path, TrainConfig(validation_seed=9))
    assert (first.options.validation_split, first.options.validation_seed) == (0.25, 4)
    assert (second.options.validation_split, second.options.validation_seed) == (0.25, 9)
    assert [subset.is_validation for subset in first.subsets] == [False, True]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nis_reg = true\nis_validation = true\n",
            "[[datasets]][0].subsets[0]: is_reg and is_validation exclude each other: validation images are "
            "measured, reg images train; pick one",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nis_validation = true\n"
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = './a'\n",
            "[[datasets]][0].subsets[0]: image_dir a is a validation subset (is_validation = true) but also "
            "trains as [[datasets]][1].subsets[0]; a folder is either held out or trained, so remove one",
        ),
        (
            "[[datasets]]\nis_validation = true\n[[datasets.subsets]]\nimage_dir = 'a'\n",
            "[[datasets]][0]: 'is_validation' belongs in a [[datasets.subsets]] table",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nvalidation_split = 0.1\n",
            "[[datasets]][0].subsets[0]: 'validation_split' is a dataset key; put it in [[datasets]] or [general]",
        ),
        (
            "[general]\nvalidation_split = 1.0\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n",
            "[general]: validation_split: Input should be less than 1 (got 1.0)",
        ),
    ],
)  # fmt: skip
def test_toml_mistakes_are_one_line_naming_the_table(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as error:
        load_dataset_config(write_toml(tmp_path, text), TrainConfig())
    assert str(error.value) == f"{tmp_path / 'x.toml'} {message}"


def planned(specs, split_seed: int = 0, **steps):
    """The training plan with its validation plan, as the run builds them (one epoch of the held-out)."""
    split = split_datasets(specs, {Path("1_held")}, split_seed)
    plan = build_run_plan(split.train, seed=0, max_train_epochs=2, max_train_steps=None, **steps)
    validation = build_run_plan(split.validation, seed=0, max_train_epochs=1, max_train_steps=None)
    return replace(plan, validation=validation)


def test_a_small_bucketed_dataset_always_has_a_validation_batch():
    """kohya's validation of a few bucketed images can come out with no batch at all (lora-scripts-next
    #341); each held-out image here lands in a bucket, and each bucket gives a batch."""
    sizes = ((96, 64), (64, 96), (64, 64), (128, 64), (64, 128))
    dataset = spec(
        folder("2_a", 5, sizes=sizes),
        folder("1_b", 2, sizes=sizes[3:]),
        validation_split=0.2,
        enable_bucket=True,
        min_bucket_reso=64,
        max_bucket_reso=128,
        train_batch_size=4,
    )
    plan = planned([dataset])
    validation = plan.validation
    assert len(validation.images) == 2 and validation.batches_per_epoch >= 1
    assert validation.batches_per_epoch == len(validation.buckets)
    assert plan.num_train_samples == (4 + 1) * 2


def test_the_printed_plan_shows_what_trains_and_what_validates():
    plan = planned([spec(folder("2_a", 4), folder("1_held", 2), validation_split=0.25)])
    text = format_plan(plan)
    assert "  train  2_a: 3 images x 2 repeats = 6 samples" in text
    assert text.endswith(
        "Validation set (held out, never trained; each image once per evaluation)\n"
        "  2_a: 3 images train, 1 image validate (validation_split 0.25)\n"
        "  1_held: 2 images validate (is_validation subset: the folder never trains)\n"
        "  64x64: 3 samples -> 3 batches\n"
        "  3 batches per evaluation"
    )


def test_several_datasets_print_their_validation_part_each():
    plan = planned([
        spec(folder("2_a", 4), label="x [[datasets]][0]", validation_split=0.5),
        spec(folder("2_c", 4), label="x [[datasets]][1]", validation_split=0.25, train_batch_size=2),
    ])  # fmt: skip
    lines = format_plan(plan).split("Validation set")[1].splitlines()[1:]
    assert lines == [
        "  x [[datasets]][0] (batch size 1)",
        "  2_a: 2 images train, 2 images validate (validation_split 0.5)",
        "  64x64: 2 samples -> 2 batches",
        "  x [[datasets]][1] (batch size 2)",
        "  2_c: 3 images train, 1 image validate (validation_split 0.25)",
        "  64x64: 1 sample -> 1 batch",
        "  3 batches per evaluation",
    ]
