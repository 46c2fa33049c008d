import re
from pathlib import Path

import pytest
from PIL import Image

from data_helpers import make_kohya_dataset, write_test_image
from loracraft.data.scan import (
    find_subset_dirs,
    parse_subset_dir_name,
    scan_dreambooth_dir,
    scan_dreambooth_root,
    scan_subset_dir,
)
from loracraft.errors import UserError


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("10_sks dog", (10, "sks dog")),
        ("1_my_char_v2", (1, "my_char_v2")),  # underscores after the first are part of the concept
        ("007_x", (7, "x")),
        ("0_dog", None),  # repeats must be >= 1
        ("dog_10", None),
        ("10", None),
        ("10_", None),
        ("-1_dog", None),
    ],
)
def test_parse_subset_dir_name(name, expected):
    assert parse_subset_dir_name(name) == expected


def test_scan_reads_folders_captions_sizes_and_reg(tmp_path):
    tree = make_kohya_dataset(tmp_path)
    subsets, warnings = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    assert len(subsets) == 1
    subset = subsets[0]
    assert (subset.name, subset.class_tokens, subset.num_repeats, subset.is_reg) == (
        "2_sks toy",
        "sks toy",
        2,
        False,
    )
    assert [r.path for r in subset.records] == list(tree.images)
    assert [r.caption for r in subset.records] == list(tree.captions)
    assert [(r.width, r.height) for r in subset.records] == [(96, 64), (64, 96), (64, 64), (128, 80)]
    assert warnings == [
        f"{tree.concept_dir}: 1 of 4 images have no .txt caption file; they use the folder caption 'sks toy'"
    ]

    reg, reg_warnings = scan_dreambooth_dir(tree.reg_dir, is_reg=True, caption_extension=".txt")
    assert reg_warnings == []  # uncaptioned reg images are the normal kohya setup
    assert [(r.caption, r.is_reg) for r in reg[0].records] == [("toy", True), ("toy", True)]


def test_txt_fallback_when_caption_extension_files_are_missing(tmp_path):
    tree = make_kohya_dataset(tmp_path, uncaptioned=())
    (tree.concept_dir / "image_00.caption").write_text("from the caption file", encoding="utf-8")
    subsets, warnings = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".caption")
    captions = [r.caption for r in subsets[0].records]
    assert captions == ["from the caption file", *tree.captions[1:]]
    assert warnings == [
        f"{tree.concept_dir}: 3 of 4 images have no .caption caption, so their .txt file was used "
        "(pass --caption_extension .txt to make that explicit)"
    ]


def test_caption_file_rules(tmp_path):
    folder = tmp_path / "3_my_char"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_test_image(folder / name, (64, 64), seed=0)
    (folder / "a.txt").write_text("\ufefffirst line, tags  \n\n second line \n", encoding="utf-8")
    (folder / "b.txt").write_text("  \n", encoding="utf-8")
    scan = scan_subset_dir(
        folder, num_repeats=3, class_tokens="my_char", is_reg=False, caption_extension=".txt"
    )
    # Every non-empty line is kept: training takes the first, or a random one with --enable_wildcard.
    assert [r.caption for r in scan.subset.records] == ["first line, tags\nsecond line", "my_char", "my_char"]
    assert any("1 of 3 caption files are empty" in w for w in scan.warnings)


def test_non_utf8_caption_is_read_with_a_fallback_and_named(tmp_path):
    tree = make_kohya_dataset(tmp_path, reg_count=0)
    caption = tree.concept_dir / "image_00.txt"
    caption.write_bytes("caf\xe9, tag".encode("cp1252"))
    subsets, warnings = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    assert subsets[0].records[0].caption == "caf\xe9, tag"
    assert any("image_00.txt" in w and "UTF-8" in w for w in warnings), warnings


def test_misnamed_folders_loose_hidden_and_nested_files_are_skipped(tmp_path):
    tree = make_kohya_dataset(tmp_path, reg_count=0)
    for folder in ("dog", "0_cat", "x_10"):
        (tree.train_dir / folder).mkdir()
        write_test_image(tree.train_dir / folder / "a.png", (64, 64), seed=1)
    (tree.train_dir / ".cache").mkdir()
    write_test_image(tree.train_dir / "loose.png", (64, 64), seed=2)
    write_test_image(tree.concept_dir / ".hidden.png", (64, 64), seed=3)
    (tree.concept_dir / "._image_00.png").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    (tree.concept_dir / "nested").mkdir()
    write_test_image(tree.concept_dir / "nested" / "deep.png", (64, 64), seed=4)
    write_test_image(tree.concept_dir / "UPPER.PNG", (64, 64), seed=5)
    (tree.concept_dir / "notes.md").write_text("not an image")

    subsets, warnings = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    assert [s.name for s in subsets] == ["2_sks toy"]
    assert [r.path.name for r in subsets[0].records] == [
        "UPPER.PNG", "image_00.png", "image_01.jpg", "image_02.webp", "image_03.png"
    ]  # fmt: skip
    assert [w for w in warnings if "skipped folder" in w] == [
        f"--train_data_dir {tree.train_dir}: skipped folder '{name}': not named N_concept with N = repeats "
        "per epoch, a whole number >= 1 (e.g. 10_mychar)"
        for name in ("0_cat", "dog", "x_10")
    ]
    assert any("ignored 1 image(s) lying directly in it" in w for w in warnings)


def test_empty_concept_folder_is_skipped_with_a_warning(tmp_path):
    tree = make_kohya_dataset(tmp_path, reg_count=0)
    (tree.train_dir / "5_empty").mkdir()
    subsets, warnings = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    assert [s.name for s in subsets] == ["2_sks toy"]
    assert any(w.startswith(f"{tree.train_dir / '5_empty'} has no images") for w in warnings)


def test_exif_rotated_jpeg_reports_the_displayed_size(tmp_path):
    folder = tmp_path / "1_phone"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    Image.new("RGB", (96, 64), "red").save(folder / "photo.jpg", exif=exif)
    scan = scan_subset_dir(
        folder, num_repeats=1, class_tokens="phone", is_reg=False, caption_extension=".txt"
    )
    assert (scan.subset.records[0].width, scan.subset.records[0].height) == (64, 96)


@pytest.mark.parametrize(("is_reg", "flag"), [(False, "--train_data_dir"), (True, "--reg_data_dir")])
def test_missing_root_names_the_flag(tmp_path, is_reg, flag):
    with pytest.raises(UserError, match=f"{flag} {tmp_path / 'nope'} does not exist"):
        scan_dreambooth_dir(tmp_path / "nope", is_reg=is_reg, caption_extension=".txt")


def test_no_images_names_the_folder_and_the_layout(tmp_path):
    (tmp_path / "dog").mkdir()
    write_test_image(tmp_path / "dog" / "a.png", (64, 64), seed=0)
    write_test_image(tmp_path / "b.png", (64, 64), seed=0)
    with pytest.raises(
        UserError, match=f"--train_data_dir {tmp_path} has no images in N_concept/ subfolders.*10_mychar"
    ):
        scan_dreambooth_dir(tmp_path, is_reg=False, caption_extension=".txt")


@pytest.mark.parametrize("content", [b"", b"this is not a png at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_corrupt_or_empty_image_is_listed_and_nothing_is_written(tmp_path, content):
    tree = make_kohya_dataset(tmp_path, reg_count=0)
    broken = tree.concept_dir / "broken.png"
    broken.write_bytes(content)
    before = files_under(tmp_path)
    with pytest.raises(
        UserError, match=rf"^1 image\(s\) cannot be decoded: {re.escape(str(broken))} \(.*--skip_bad_images"
    ):
        scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    assert files_under(tmp_path) == before


def test_root_scan_returns_the_unreadable_images_of_every_folder(tmp_path):
    tree = make_kohya_dataset(tmp_path, reg_count=0)
    other = tree.train_dir / "1_other"
    other.mkdir()
    (other / "only.png").write_bytes(b"")
    (tree.concept_dir / "broken.jpg").write_bytes(b"not a jpeg")
    result = scan_dreambooth_root(tree.train_dir, is_reg=False, caption_extension=".txt")
    assert [item.path for item in result.bad] == [other / "only.png", tree.concept_dir / "broken.jpg"]
    assert [s.name for s in result.subsets] == ["2_sks toy"]  # 1_other has no readable image
    assert not any("1_other" in w for w in result.warnings)


def test_a_root_whose_only_images_are_unreadable_leaves_the_refusal_to_the_caller(tmp_path):
    folder = tmp_path / "img" / "1_x"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"")
    result = scan_dreambooth_root(tmp_path / "img", is_reg=False, caption_extension=".txt")
    assert (result.subsets, [item.path for item in result.bad]) == ((), [folder / "a.png"])


def test_subset_dirs_sort_the_root(tmp_path):
    for name in ("2_b", "1_a", "dog", ".cache"):
        (tmp_path / name).mkdir()
    write_test_image(tmp_path / "loose.png", (8, 8), seed=0)
    (tmp_path / "notes.txt").write_text("x")
    dirs = find_subset_dirs(tmp_path)
    assert dirs.folders == ((tmp_path / "1_a", 1, "a"), (tmp_path / "2_b", 2, "b"))
    assert (dirs.misnamed, dirs.loose_images) == ((tmp_path / "dog",), 1)
