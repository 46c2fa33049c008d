"""`loracraft dataset prepare` and `loracraft dataset check` through the command line."""

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_helpers import make_kohya_dataset, write_test_image
from loracraft.cli import main
from loracraft.config.schema import TrainConfig
from loracraft.data.metadata import tag_frequency
from loracraft.tools.dataset_check import difference_hash, near_duplicates
from loracraft.training.dataset_setup import plan_dataset


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes: proof that nothing was moved or changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}  # fmt: skip


def noise_image(path: Path, size=(96, 96), seed=0) -> Path:
    """Smooth random blotches: structure at the scale a perceptual hash sees, different for every seed."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture
def user_images(tmp_path):
    """A flat folder of images with captions, as users keep them before preparing a dataset."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        noise_image(folder / f"p{i}.png", seed=i)
    (folder / "p0.txt").write_text("sks dog, grass\n", encoding="utf-8")
    (folder / "p1.caption").write_text("sks dog, sofa\n", encoding="utf-8")
    reg = tmp_path / "dogs"
    reg.mkdir()
    for i in range(2):
        noise_image(reg / f"d{i}.jpg", seed=10 + i)
    return folder, reg


def prepare(user_images, output: Path, *extra: str) -> int:
    folder, reg = user_images
    return main([
        "dataset", "prepare", "--instance_prompt", "sks", "--class_prompt", "dog", "--train_images", str(folder),
        "--repeats", "40", "--reg_images", str(reg), "--reg_repeats", "1", "--output", str(output), *extra,
    ])  # fmt: skip


def test_prepare_copies_into_the_kohya_tree_and_prints_the_train_flags(tmp_path, user_images, capsys):
    before = snapshot(tmp_path / "photos"), snapshot(tmp_path / "dogs")
    output = tmp_path / "project"
    assert prepare(user_images, output) == 0
    assert (snapshot(tmp_path / "photos"), snapshot(tmp_path / "dogs")) == before
    assert sorted(p.name for p in (output / "img" / "40_sks dog").iterdir()) == [
        "p0.png", "p0.txt", "p1.caption", "p1.png", "p2.png"
    ]  # fmt: skip
    assert sorted(p.name for p in (output / "reg" / "1_dog").iterdir()) == ["d0.jpg", "d1.jpg"]
    assert (output / "log").is_dir() and (output / "model").is_dir()
    assert snapshot(output / "img" / "40_sks dog")["p0.png"] == before[0]["p0.png"]
    out = capsys.readouterr().out
    assert "img/40_sks dog/: 3 images, 2 caption files" in out
    assert "reg/1_dog/: 2 images" in out
    assert f"--train_data_dir {output / 'img'}" in out and f"--reg_data_dir {output / 'reg'}" in out
    assert f"--output_dir {output / 'model'}" in out and f"--logging_dir {output / 'log'}" in out


def test_prepare_refuses_to_overwrite_and_writes_nothing(tmp_path, user_images, capsys):
    output = tmp_path / "project"
    concept = output / "img" / "40_sks dog"
    concept.mkdir(parents=True)
    (concept / "p2.png").write_bytes(b"the user's other picture")
    before = snapshot(tmp_path)
    assert prepare(user_images, output) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {concept / 'p2.png'} already exist(s); nothing was written. Choose a new --output folder "
        "or remove those files\n"
    )
    assert snapshot(tmp_path) == before
    assert not (output / "reg").exists() and not (output / "log").exists()


def test_prepare_twice_refuses_the_second_time(tmp_path, user_images, capsys):
    output = tmp_path / "project"
    assert prepare(user_images, output) == 0
    before = snapshot(tmp_path)
    assert prepare(user_images, output) == 2
    assert "and 6 more already exist(s); nothing was written" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("mode", "check"), [("hard", "inode"), ("symlink", "link")])
def test_prepare_links_instead_of_copying(tmp_path, user_images, mode, check):
    output = tmp_path / "project"
    assert prepare(user_images, output, "--link", mode) == 0
    source, target = tmp_path / "photos" / "p0.png", output / "img" / "40_sks dog" / "p0.png"
    if check == "inode":
        assert os.stat(source).st_ino == os.stat(target).st_ino
    else:
        assert target.is_symlink() and target.resolve() == source.resolve()
    assert source.exists()


def test_prepare_without_reg_prints_no_reg_flag(tmp_path, user_images, capsys):
    folder, _ = user_images
    args = ["dataset", "prepare", "--instance_prompt", "ohwx", "--train_images", str(folder), "--repeats", "10",
            "--output", str(tmp_path / "p")]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "p" / "img" / "10_ohwx").is_dir()
    assert "--reg_data_dir" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--reg_images": "dogs", "--class_prompt": ""}, "--reg_images needs --class_prompt: the reg folder is named after the class"),
        ({"--train_images": "missing"}, "--train_images {tmp}/missing does not exist or is not a folder"),
        ({"--train_images": "empty"}, "--train_images {tmp}/empty holds no images (.png .jpg .jpeg .webp .bmp) at its top level"),
        ({"--repeats": "0"}, "--repeats must be 1 or more, got 0"),
        ({"--instance_prompt": "a/b"}, "--instance_prompt 'a/b' cannot name a folder: remove /"),
        ({"--instance_prompt": " "}, "--instance_prompt is empty; give the token the LoRA learns, e.g. --instance_prompt sks"),
    ],
)  # fmt: skip
def test_prepare_bad_input(tmp_path, user_images, capsys, change, message):
    (tmp_path / "empty").mkdir()
    values = {
        "--instance_prompt": "sks",
        "--class_prompt": "dog",
        "--train_images": "photos",
        "--output": "out",
    }
    values.update(change)
    args = ["dataset", "prepare"]
    for flag, value in values.items():
        args += [
            flag,
            str(tmp_path / value) if flag in ("--train_images", "--reg_images", "--output") else value,
        ]
    assert main(args) == 2
    assert capsys.readouterr().err == f"error: {message.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "out").exists()


def check(capsys, *args: str) -> tuple[int, str]:
    code = main(["dataset", "check", *args])
    return code, capsys.readouterr().out


def test_check_a_good_dataset_reports_and_exits_zero(tmp_path, capsys):
    tree = make_kohya_dataset(tmp_path, sizes=[(64, 64)] * 4, formats=["png"] * 4)
    code, out = check(capsys, str(tree.train_dir), "--reg_data_dir", str(tree.reg_dir), "--resolution", "64",
                      "--caption_extension", ".txt", "--max_train_epochs", "3", "--train_batch_size", "2")  # fmt: skip
    assert code == 0, out
    assert (
        "train  img/2_sks toy: 4 images, repeats 2; 3 of 4 captioned (.txt), 1 use the folder caption 'sks toy'"
        in out
    )
    assert (
        "reg    reg/1_toy: 2 images, repeats 1; 0 of 2 captioned (.txt), 2 use the folder caption 'toy'"
        in out
    )
    assert "Most frequent tags" in out and "sks toy 4" in out and "plain 3" in out
    assert "64x64: 16 samples -> 8 batches" in out
    assert "3 epochs x 8 = 24 optimizer steps" in out
    assert out.rstrip().endswith("0 error(s), 0 warning(s): ready to train")


def test_check_finds_unreadable_small_duplicate_images_and_bad_folders(tmp_path, capsys):
    tree = make_kohya_dataset(tmp_path, reg_count=0, sizes=[(64, 64)] * 2, formats=["png"] * 2)
    noise_image(tree.concept_dir / "big.png", (128, 128), seed=3)
    Image.open(tree.concept_dir / "big.png").resize((100, 100)).save(
        tree.concept_dir / "big_copy.jpg", quality=90
    )
    (tree.concept_dir / "broken.png").write_bytes(b"\x89PNG not really")
    (tree.train_dir / "dog").mkdir()
    write_test_image(tree.train_dir / "loose.png", (64, 64), seed=5)
    code, out = check(capsys, str(tree.train_dir), "--resolution", "128", "--caption_extension", ".txt")
    assert code == 1
    assert f"error: img/2_sks toy: cannot decode image {tree.concept_dir / 'broken.png'}" in out
    assert (
        f"error: {tree.train_dir / 'dog'}: folder name is not N_concept (N = repeats >= 1, e.g. 10_mychar)"
        in out
    )
    assert f"error: {tree.train_dir}: 1 image(s) lie directly in it" in out
    assert "warning: img/2_sks toy: 3 image(s) smaller than the training resolution 128x128" in out
    assert "big_copy.jpg (100x100)" in out
    assert re.search(
        rf"warning: near-duplicate images \(dHash distance [0-4]\): {re.escape(str(tree.concept_dir))}/big.png ~ "
        rf"{re.escape(str(tree.concept_dir))}/big_copy.jpg\n",
        out,
    )
    assert "image_00.png ~" not in out  # different pictures are not duplicates
    assert out.rstrip().endswith("problems found")


def test_check_empty_or_missing_dataset_is_an_error(tmp_path, capsys):
    (tmp_path / "img" / "5_x").mkdir(parents=True)
    code, out = check(capsys, str(tmp_path / "img"))
    assert code == 1 and "error: img/5_x: no images in" in out
    code, out = check(capsys, str(tmp_path / "nothing"))
    assert code == 1 and f"error: {tmp_path / 'nothing'} does not exist" in out
    code, out = check(capsys, str(tmp_path / "img"), "--reg_data_dir", str(tmp_path / "noreg"))
    assert code == 1 and f"error: {tmp_path / 'noreg'} does not exist or is not a folder" in out


def test_check_reads_a_prepare_tree_and_a_dataset_toml(tmp_path, user_images, capsys):
    output = tmp_path / "project"
    assert prepare(user_images, output) == 0
    capsys.readouterr()
    code, out = check(capsys, str(output), "--resolution", "64")
    assert code == 0, out
    assert "train  img/40_sks dog: 3 images" in out and "reg    reg/1_dog: 2 images" in out
    toml = tmp_path / "data.toml"
    toml.write_text(
        f"[[datasets]]\nresolution = 64\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = '{output / 'img' / '40_sks dog'}'\n"
        "num_repeats = 2\ncaption_extension = '.txt'\n",
        encoding="utf-8",
    )
    code, out = check(capsys, str(toml))
    assert code == 0, out
    assert (
        f"{toml} [[datasets]][0].subsets[0]: 3 images, repeats 2; 1 of 3 captioned (.txt), 2 use the folder caption ''"
        in out
    )
    assert "6 samples in batches of 2 = 3 batches per epoch" in out


def test_check_reports_a_broken_toml_as_an_error(tmp_path, capsys):
    toml = tmp_path / "data.toml"
    toml.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nnum_repeat = 2\n", encoding="utf-8")
    code, out = check(capsys, str(toml))
    assert code == 1
    assert (
        f"error: {toml} [[datasets]][0].subsets[0]: unknown key 'num_repeat' (did you mean num_repeats?)"
        in out
    )


def test_check_rejects_unknown_flags(capsys):
    assert main(["dataset", "check", "x", "--resolutoin", "64"]) == 2
    assert capsys.readouterr().err == "error: unknown flag --resolutoin (did you mean --resolution?)\n"


def test_dataset_command_dispatch(capsys):
    assert main(["dataset", "chek"]) == 2
    assert (
        capsys.readouterr().err
        == "error: unknown dataset action 'chek' (did you mean check?); use prepare or check\n"
    )


def test_difference_hash_matches_resized_copies_and_separates_different_images(tmp_path):
    a = Image.open(noise_image(tmp_path / "a.png", (80, 60), seed=1))
    b = Image.open(noise_image(tmp_path / "b.png", (80, 60), seed=2))
    assert (difference_hash(a) ^ difference_hash(a.resize((40, 30)))).bit_count() <= 4
    assert (difference_hash(a) ^ difference_hash(b)).bit_count() > 16
    assert near_duplicates([]) == []


def test_check_reports_the_tags_the_lora_file_records_even_with_a_custom_separator(tmp_path, capsys):
    tree = make_kohya_dataset(tmp_path, reg_count=0, uncaptioned=())
    for image in tree.images[:2]:
        image.with_suffix(".txt").write_text(
            "sks toy; Red block; plain, shiny\nsecond line, unused\n", encoding="utf-8"
        )
    args = ["--resolution", "64", "--caption_extension", ".txt", "--caption_separator", ";"]
    code, out = check(capsys, str(tree.train_dir), *args)
    assert code == 0, out
    tag_line = out.split(
        "Most frequent tags (as the LoRA file's ss_tag_frequency counts them, training images only)\n"
    )[1]
    reported = dict(item.rsplit(" ", 1) for item in tag_line.splitlines()[0].strip().split(", "))
    config = TrainConfig(train_data_dir=str(tree.train_dir), resolution="64", caption_extension=".txt",
                         caption_separator=";", max_train_epochs=1)  # fmt: skip
    recorded = tag_frequency(plan_dataset(config, seed=0, num_processes=1, echo=lambda line: None))
    assert reported == {tag: str(count) for tag, count in recorded["2_sks toy"].items()}
    # kohya's ss_tag_frequency splits on "," whatever --caption_separator is, and reads the first line only.
    assert reported["sks toy; red block; plain"] == "2" and "unused" not in reported


def test_check_warns_about_the_files_training_warns_about(tmp_path, capsys):
    tree = make_kohya_dataset(tmp_path, reg_count=0, sizes=[(64, 64)] * 4, formats=["png"] * 4)
    tree.images[0].with_suffix(".txt").write_text("\nsks toy, red", encoding="utf-8")
    code, out = check(capsys, str(tree.train_dir), "--resolution", "64", "--caption_extension", ".txt")
    assert code == 0, out
    assert f"warning: {tree.concept_dir}: 1 caption file(s) start with an empty line: image_00.txt;" in out
    assert out.rstrip().endswith("0 error(s), 1 warning(s): ready to train")
