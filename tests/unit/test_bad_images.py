import codecs
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_helpers import make_kohya_dataset, write_test_image
from loracraft.config.dataset_options import DatasetOptions
from loracraft.data import images
from loracraft.data.image_check import BadImage, check_images, find_image_problem
from loracraft.data.latent_cache import cache_file_paths
from loracraft.data.plan import DatasetSpec, build_epoch_plan
from loracraft.data.records import ImageRecord
from loracraft.data.scan import scan_dreambooth_dir, scan_subset_dir
from loracraft.data.text_cache import text_cache_file_paths
from loracraft.errors import UserError
from loracraft.training.dataset_setup import screen_datasets


def noisy(path: Path, size=(64, 64)) -> Path:
    """An incompressible picture, so that a cut file loses pixel data, not just a trailer."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        path
    )
    return path


def truncate(path: Path, keep: float = 0.6) -> Path:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    return path


def scan(folder: Path):
    return scan_subset_dir(
        folder, num_repeats=1, class_tokens="thing", is_reg=False, caption_extension=".txt"
    )


def screen(scans, skip_bad_images: bool):
    """The run's screening of scanned folders (one dataset): header failures plus decode failures."""
    spec = DatasetSpec(
        tuple(s.subset for s in scans if s.subset.records), DatasetOptions(resolution=(64, 64))
    )
    specs, warnings = screen_datasets([spec], [item for s in scans for item in s.bad], skip_bad_images)
    return list(specs[0].subsets), warnings


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "1_thing"
    folder.mkdir()
    return folder


# --- decoding check before training


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_images_pass_the_header_scan_but_not_the_decode_check(folder, suffix):
    good = noisy(folder / f"good.{suffix}")
    cut = truncate(noisy(folder / f"cut.{suffix}"))
    scanned = scan(folder)  # headers are intact
    assert [r.path for r in scanned.subset.records] == [cut, good] and scanned.bad == ()
    bad = check_images(scanned.subset.records, progress=False)
    assert [item.path for item in bad] == [cut] and "truncated" in bad[0].reason
    assert find_image_problem(good) is None


def records_for(paths):
    return [ImageRecord(p, "c", 64, 64, is_reg=False, subset=p.parent.name) for p in paths]


def test_default_stops_with_one_error_listing_the_first_few_and_the_count(folder):
    for i in range(5):
        truncate(noisy(folder / f"cut{i}.png"))
    noisy(folder / "ok.png")
    with pytest.raises(UserError) as err:
        screen([scan(folder)], skip_bad_images=False)
    message = str(err.value)
    assert message.startswith("5 image(s) cannot be decoded: ")
    assert f"{folder / 'cut0.png'} (image file is truncated)" in message and "and 2 more" in message
    assert "--skip_bad_images" in message and "\n" not in message


def test_skip_bad_images_drops_each_with_a_warning_naming_it(folder, tmp_path):
    cut = truncate(noisy(folder / "cut.png"))
    good = noisy(folder / "ok.png")
    other = tmp_path / "2_other"
    other.mkdir()
    only_bad = truncate(noisy(other / "x.jpg"))
    kept, warnings = screen([scan(folder), scan(other)], skip_bad_images=True)
    assert [[r.path for r in s.records] for s in kept] == [[good]]  # the emptied subset is gone
    assert warnings == [
        f"skipped image {cut} (image file is truncated) because of --skip_bad_images",
        f"skipped image {only_bad} ({find_image_problem(only_bad).reason}) because of --skip_bad_images",
    ]


def test_skipping_every_training_image_is_an_error(folder):
    truncate(noisy(folder / "cut.png"))
    (folder / "empty.png").write_bytes(b"")
    with pytest.raises(UserError) as err:
        screen([scan(folder)], skip_bad_images=True)
    assert str(err.value) == (
        f"no training image is left after --skip_bad_images skipped 2 image(s): {folder / 'empty.png'} "
        f"(empty file); {folder / 'cut.png'} (image file is truncated); re-save or replace them"
    )


def test_check_keeps_record_order_with_many_images(folder):
    paths = [noisy(folder / f"{i:02d}.png", (16, 16)) for i in range(12)]
    truncate(paths[3], 0.5)
    truncate(paths[9], 0.5)
    assert [item.path for item in check_images(records_for(paths), progress=False)] == [paths[3], paths[9]]


# --- problems found from the header while scanning


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00"])
def test_unreadable_headers_come_back_from_the_scan_and_are_skipped_with_skip_bad_images(folder, content):
    noisy(folder / "ok.png")
    broken = folder / "broken.png"
    broken.write_bytes(content)
    scanned = scan(folder)
    assert [r.path.name for r in scanned.subset.records] == ["ok.png"]
    assert [item.path for item in scanned.bad] == [broken]
    assert not any("broken" in w for w in scanned.warnings)  # reported once, by the screening
    kept, warnings = screen([scanned], skip_bad_images=True)
    assert [r.path.name for s in kept for r in s.records] == ["ok.png"]
    assert warnings == [f"skipped image {broken} ({scanned.bad[0].reason}) because of --skip_bad_images"]
    if not content:
        assert scanned.bad[0].reason == "empty file"


def test_header_and_decode_failures_are_refused_in_one_message(folder):
    noisy(folder / "ok.png")
    (folder / "a_empty.jpg").write_bytes(b"")
    truncate(noisy(folder / "b_cut.png"))
    files = sorted(folder.iterdir())
    with pytest.raises(UserError) as err:
        screen([scan(folder)], skip_bad_images=False)
    assert str(err.value) == (
        f"2 image(s) cannot be decoded: {folder / 'a_empty.jpg'} (empty file); {folder / 'b_cut.png'} "
        "(image file is truncated). Re-save or remove them, or pass --skip_bad_images to train without them"
    )
    assert sorted(folder.iterdir()) == files


def test_a_folder_of_only_unreadable_images_is_not_reported_as_empty(folder):
    (folder / "a.png").write_bytes(b"not an image")
    scanned = scan(folder)
    assert scanned.subset.records == () and scanned.image_count == 1
    assert scanned.warnings == []  # not "has no images": the screening lists a.png


def test_decompression_bombs_are_refused_from_the_header(folder, monkeypatch):
    noisy(folder / "small.png", (8, 8))
    noisy(folder / "huge.png", (40, 30))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    scanned = scan(folder)
    assert [r.path.name for r in scanned.subset.records] == ["small.png"]
    assert scanned.bad == (
        BadImage(folder / "huge.png", "40x30 = 0 MP, over the 0.001 MP limit", "downscale it or remove it"),
    )
    assert find_image_problem(folder / "huge.png") == scanned.bad[0]


# --- captions in other encodings


@pytest.mark.parametrize(
    ("raw", "expected", "guess"),
    [
        ("café, naïve".encode("cp1252"), "café, naïve", "cp1252"),
        ("“quoted” tag".encode("cp1252"), "“quoted” tag", "cp1252"),
        (b"caf\xe9 \x81", "caf\xe9 \x81", "latin-1"),  # 0x81 is undefined in cp1252
        (codecs.BOM_UTF16_LE + "ünï, 日本\r\nline 2".encode("utf-16-le"), "ünï, 日本\nline 2", None),
        (codecs.BOM_UTF8 + "ünï".encode(), "ünï", None),
    ],
)
def test_caption_encoding_fallback_reads_and_warns(folder, raw, expected, guess):
    noisy(folder / "a.png")
    (folder / "a.txt").write_bytes(raw)
    scanned = scan(folder)
    warnings = scanned.warnings
    assert scanned.subset.records[0].caption == expected
    encoding_warnings = [w for w in warnings if "not UTF-8" in w]
    if guess is None:
        assert encoding_warnings == []
    else:
        assert encoding_warnings == [
            f"{folder}: 1 caption file(s) are not UTF-8 and were read with a guessed encoding: a.txt ({guess}); "
            "if their words look wrong in the tag list, re-save them as UTF-8"
        ]


# --- file names


def test_two_images_with_one_stem_both_train_warn_once_and_get_distinct_caches(folder):
    noisy(folder / "a.png")
    noisy(folder / "a.jpg")
    noisy(folder / "A.webp")  # one file with a.png on Windows and macOS
    noisy(folder / "b.png")
    (folder / "a.txt").write_text("shared caption", encoding="utf-8")
    scanned = scan(folder)
    subset, warnings = scanned.subset, scanned.warnings
    assert [(r.path.name, r.caption) for r in subset.records] == [
        ("A.webp", "thing"), ("a.jpg", "shared caption"), ("a.png", "shared caption"), ("b.png", "thing")
    ]  # fmt: skip
    stem_warnings = [w for w in warnings if "share a name" in w]
    assert len(stem_warnings) == 1 and "A.webp, a.jpg, a.png" in stem_warnings[0]
    plan = build_epoch_plan(
        [subset], resolution=(64, 64), train_batch_size=1, seed=0, max_train_epochs=1, max_train_steps=None,
        enable_bucket=False, min_bucket_reso=64, max_bucket_reso=64, bucket_reso_steps=64,
    )  # fmt: skip
    latent_names = [p.name for p in cache_file_paths(plan.images)]
    assert sorted(latent_names) == [
        "A.webp_0064x0064_sd.npz", "a.jpg_0064x0064_sd.npz", "a.png_0064x0064_sd.npz", "b_0064x0064_sd.npz"
    ]  # fmt: skip
    text_names = text_cache_file_paths([r.path for r in subset.records], [r.caption for r in subset.records])
    assert [p.name for p in text_names] == [
        "A.webp_te_sd.npz",
        "a.jpg_te_sd.npz",
        "a.png_te_sd.npz",
        "b_te_sd.npz",
    ]


def test_hidden_files_and_caches_in_the_folder_are_ignored(tmp_path):
    tree = make_kohya_dataset(tmp_path, reg_count=0)
    folder = tree.concept_dir
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._image_00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    write_test_image(folder / ".hidden.jpg", (64, 64), seed=1)
    np.savez(folder / "image_00_0096x0064_sd.npz", latents=np.zeros((4, 8, 12), np.float32))
    np.savez(folder / "image_00_te_sd.npz", hidden_states=np.zeros((77, 8), np.float32))
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    subsets, warnings = scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    assert [r.path for r in subsets[0].records] == list(tree.images)
    assert not any("unreadable" in w or "skipped image" in w for w in warnings)


def test_bad_image_is_a_plain_value():
    assert BadImage(Path("a.png"), "empty file") == BadImage(Path("a.png"), "empty file")
