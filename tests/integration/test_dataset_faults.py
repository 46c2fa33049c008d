"""Hostile inputs through a run's dataset setup and the command line: one line naming the path or flag and
the fix, and nothing the user made is lost."""

import os
import random
import time
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from data_helpers import make_kohya_dataset, write_test_image
from loracraft.cli import main
from loracraft.config.schema import TrainConfig
from loracraft.data.caption_files import MAX_CAPTION_BYTES
from loracraft.data.captions import CaptionMoment, process_caption
from loracraft.errors import UserError
from loracraft.models.text_encoding import tokenize_captions
from loracraft.training.dataset_setup import plan_dataset

COMMON = dict(enable_bucket=True, resolution="64,64", min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=64,
              bucket_no_upscale=False, max_train_epochs=1, caption_extension=".txt")  # fmt: skip


def run_plan(train_dir: Path, **settings):
    lines: list[str] = []
    config = TrainConfig(**{**COMMON, **settings}, train_data_dir=str(train_dir))
    return plan_dataset(config, seed=1, num_processes=1, echo=lines.append), lines


def snapshot(root: Path) -> dict[Path, object]:
    """Every entry under `root`: a file's bytes, a link's target, None for a folder."""
    return {
        path: os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        for path in root.rglob("*")
    }


@pytest.fixture
def tree(tmp_path):
    return make_kohya_dataset(tmp_path / "data", reg_count=0)


def test_a_run_refuses_an_image_link_to_itself_and_skips_it_with_skip_bad_images(tree, tmp_path):
    loop = tree.concept_dir / "loop.png"
    loop.symlink_to("loop.png")
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as err:
        run_plan(tree.train_dir)
    assert str(err.value) == (
        f"1 image(s) cannot be decoded: {loop} (a symbolic link that leads back to itself: remove the broken "
        "link). Re-save or remove them, or pass --skip_bad_images to train without them"
    )
    plan, lines = run_plan(tree.train_dir, skip_bad_images=True)
    assert (
        f"warning: skipped image {loop} (a symbolic link that leads back to itself) because of --skip_bad_images"
        in lines
    )
    assert sorted(image.record.path for image in plan.images) == sorted(tree.images)
    assert snapshot(tmp_path) == before


def test_a_banner_image_is_named_once_with_its_bucket(tree):
    banner = write_test_image(tree.concept_dir / "banner.png", (20000, 20), seed=9)
    plan, lines = run_plan(tree.train_dir, resolution="128,128", max_bucket_reso=256)
    assert [line for line in lines if "centre crop" in line] == [
        f"warning: {banner} (20000x20) lands in bucket 256x64, whose centre crop keeps under 1% of it: no bucket "
        "comes near its aspect ratio; crop the image to the part that matters or remove it"
    ]
    assert banner in {image.record.path for image in plan.images}


def test_a_huge_caption_file_is_named_and_cut_so_steps_stay_fast(tree, tiny_sd1):
    caption = tree.concept_dir / "image_00.txt"
    caption.write_text("zxq, " + "tag, " * 1_000_000, encoding="utf-8")  # 5 MB
    plan, lines = run_plan(tree.train_dir)
    assert (
        f"warning: caption file {caption} is over 64 KiB; only its first 64 KiB were read (far more than a "
        "caption's 225 tokens): check that it is a caption"
    ) in lines
    (record,) = [image.record for image in plan.images if image.record.path == tree.images[0]]
    assert record.caption.startswith("zxq, tag, tag") and len(record.caption) <= MAX_CAPTION_BYTES
    # What each step does with a caption; the whole 5 MB took ~10 s here with the tiny tokenizer.
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd1.tokenizer_dir)
    options = plan.subsets[plan.images[0].subset_index].options.model_copy(update={"shuffle_caption": True})
    started = time.perf_counter()
    tokenize_captions(
        tokenizer, [process_caption(record.caption, options, random.Random(0), CaptionMoment())]
    )
    assert time.perf_counter() - started < 2.0


def prepare(photos: Path, output: Path) -> int:
    return main([
        "dataset", "prepare", "--instance_prompt", "sks", "--class_prompt", "dog",
        "--train_images", str(photos), "--output", str(output),
    ])  # fmt: skip


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        write_test_image(folder / f"p{i}.png", (64, 64), seed=i)
    (folder / "p0.txt").write_text("sks dog, grass\n", encoding="utf-8")
    return folder


def test_prepare_refuses_an_output_that_is_a_file(tmp_path, photos, capsys):
    output = tmp_path / "project.txt"
    output.write_text("my notes", encoding="utf-8")
    before = snapshot(tmp_path)
    assert prepare(photos, output) == 2
    assert capsys.readouterr().err == (
        f"error: --output {output} is an existing file, not a folder; nothing was written. Give a folder path "
        "(a new folder is created)\n"
    )
    assert snapshot(tmp_path) == before


def test_prepare_refuses_a_file_where_the_tree_needs_a_folder(tmp_path, photos, capsys):
    output = tmp_path / "project"
    output.mkdir()
    (output / "img").write_text("not a folder", encoding="utf-8")
    before = snapshot(tmp_path)
    assert prepare(photos, output) == 2
    assert capsys.readouterr().err == (
        f"error: {output / 'img'} is a file where the tree needs a folder; nothing was written. Move that file "
        "or choose another --output folder\n"
    )
    assert snapshot(tmp_path) == before


def test_prepare_refuses_broken_links_among_the_images(tmp_path, photos, capsys):
    (photos / "p2.png").symlink_to("p2.png")
    (photos / "p3.png").symlink_to(tmp_path / "gone.png")
    before = snapshot(tmp_path)
    assert prepare(photos, tmp_path / "project") == 2
    assert capsys.readouterr().err == (
        f"error: --train_images: {photos / 'p2.png'} and 1 more: broken symbolic link(s), to nothing or to "
        "themselves; nothing was written. Remove them or restore their targets\n"
    )
    assert snapshot(tmp_path) == before


def test_train_answers_a_negative_learning_rate_with_the_range_check(tmp_path, capsys):
    argv = ["train", "--pretrained_model_name_or_path", str(tmp_path / "model.safetensors"),
            "--train_data_dir", str(tmp_path), "--learning_rate", "-1e-4"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "error: --learning_rate: Input should be greater than or equal to 0 (got '-1e-4')\n"
    )
