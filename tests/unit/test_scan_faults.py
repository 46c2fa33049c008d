"""Hostile folders: broken symbolic links, folders and files the user cannot read, misnamed concept
folders and huge caption files each give one line naming the path and the fix, and change no file."""

import os
from pathlib import Path

import pytest

from data_helpers import make_kohya_dataset, write_test_image
from loracraft.data.caption_files import MAX_CAPTION_BYTES, CaptionSource, find_caption
from loracraft.data.image_check import BadImage
from loracraft.data.scan import scan_dreambooth_dir, scan_dreambooth_root, scan_subset_dir
from loracraft.errors import UserError

NOT_N_CONCEPT = "not named N_concept with N = repeats per epoch, a whole number >= 1"

needs_non_root = pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its permissions")


def snapshot(root: Path) -> dict[Path, object]:
    """Every entry under `root`: a file's bytes, a link's target, None for a folder."""
    return {
        path: os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        for path in root.rglob("*")
    }


def scan_root(root: Path):
    return scan_dreambooth_root(root, is_reg=False, caption_extension=".txt")


@pytest.fixture
def tree(tmp_path):
    return make_kohya_dataset(tmp_path, reg_count=0)


# --- broken symbolic links


def test_an_image_link_to_itself_is_a_bad_image_named_with_the_fix(tree, tmp_path):
    loop = tree.concept_dir / "loop.png"
    loop.symlink_to("loop.png")
    before = snapshot(tmp_path)
    result = scan_root(tree.train_dir)
    assert result.bad == (
        BadImage(loop, "a symbolic link that leads back to itself", "remove the broken link"),
    )
    assert [r.path for r in result.subsets[0].records] == list(tree.images)
    with pytest.raises(UserError) as err:
        scan_dreambooth_dir(tree.train_dir, is_reg=False, caption_extension=".txt")
    assert str(err.value) == (
        f"1 image(s) cannot be decoded: {loop} (a symbolic link that leads back to itself: remove the broken "
        "link). Re-save or remove them, or pass --skip_bad_images to train without them"
    )
    assert snapshot(tmp_path) == before


def test_an_image_link_to_nothing_is_a_bad_image_instead_of_silently_left_out(tree):
    dangling = tree.concept_dir / "moved.png"
    dangling.symlink_to(tree.concept_dir.parent / "elsewhere.png")
    assert scan_root(tree.train_dir).bad == (
        BadImage(
            dangling,
            "a symbolic link to something that does not exist",
            "remove the broken link or restore its target",
        ),
    )


def test_a_caption_link_to_itself_stops_the_scan_naming_it(tree, tmp_path):
    caption = tree.concept_dir / "image_00.txt"
    caption.unlink()
    caption.symlink_to("image_00.txt")
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as err:
        scan_root(tree.train_dir)
    assert str(err.value) == (
        f"cannot read caption file {caption} (a symbolic link that leads back to itself); remove the broken link"
    )
    assert snapshot(tmp_path) == before


def test_a_broken_link_in_the_root_is_skipped_with_a_warning(tree):
    (tree.train_dir / "5_gone").symlink_to(tree.train_dir / "nowhere")
    result = scan_root(tree.train_dir)
    assert [s.name for s in result.subsets] == ["2_sks toy"]
    assert (
        f"--train_data_dir {tree.train_dir}: skipped 5_gone: a broken symbolic link; remove it or restore its target"
        in result.warnings
    )


def test_a_root_of_only_broken_links_names_them(tmp_path):
    (tmp_path / "10_loop").symlink_to("10_loop")
    with pytest.raises(UserError) as err:
        scan_root(tmp_path)
    assert str(err.value) == (
        f"--train_data_dir {tmp_path} has no images in N_concept/ subfolders; skipped '10_loop': a broken "
        "symbolic link; remove it or restore its target"
    )


# --- permissions (root reads everything, so these run as an ordinary user only)


@pytest.fixture
def locked(request):
    """chmod 000 the path given, and give it back its mode after the test."""
    locked_paths = []

    def lock(path: Path) -> Path:
        locked_paths.append((path, path.stat().st_mode))
        path.chmod(0)
        return path

    yield lock
    for path, mode in locked_paths:
        path.chmod(mode)


@needs_non_root
def test_an_unreadable_concept_folder_stops_the_scan_naming_it(tree, tmp_path, locked):
    before = snapshot(tmp_path)
    locked(tree.concept_dir)
    with pytest.raises(UserError) as err:
        scan_root(tree.train_dir)
    assert str(err.value) == (
        f"cannot read image folder {tree.concept_dir} (permission denied); fix the folder's permissions "
        "(e.g. chmod u+rx)"
    )
    tree.concept_dir.chmod(0o755)
    assert snapshot(tmp_path) == before


def test_a_concept_folder_the_system_refuses_is_one_line_as_root_too(tree, tmp_path, monkeypatch):
    # Root reads any folder, so what the system answers an ordinary user is simulated here.
    scandir = os.scandir

    def refuse_the_concept_folder(path):
        if Path(path) == tree.concept_dir:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr("loracraft.data.scan.os.scandir", refuse_the_concept_folder)
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as err:
        scan_root(tree.train_dir)
    assert str(err.value) == (
        f"cannot read image folder {tree.concept_dir} (permission denied); fix the folder's permissions "
        "(e.g. chmod u+rx)"
    )
    assert snapshot(tmp_path) == before


@needs_non_root
def test_an_unreadable_root_names_the_flag(tree, locked):
    locked(tree.train_dir)
    with pytest.raises(UserError) as err:
        scan_dreambooth_root(tree.train_dir, is_reg=True, caption_extension=".txt")
    assert str(err.value) == (
        f"cannot read --reg_data_dir {tree.train_dir} (permission denied); fix the folder's permissions "
        "(e.g. chmod u+rx)"
    )


@needs_non_root
def test_unreadable_captions_stop_and_unreadable_images_are_bad_images(tree, locked):
    image = locked(tree.images[1])
    assert scan_root(tree.train_dir).bad == (
        BadImage(image, "permission denied", "fix the file's permissions (e.g. chmod u+r)"),
    )
    caption = locked(tree.concept_dir / "image_00.txt")
    with pytest.raises(UserError) as err:
        scan_root(tree.train_dir)
    assert str(err.value) == (
        f"cannot read caption file {caption} (permission denied); fix the file's permissions (e.g. chmod u+r)"
    )


# --- folders that are not N_concept


def test_a_root_of_misnamed_folders_names_each_and_the_reason(tmp_path):
    for name in ("zxq", "0_x", "-3_x", "abc_x"):
        (tmp_path / name).mkdir()
        write_test_image(tmp_path / name / "a.png", (64, 64), seed=0)
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as err:
        scan_root(tmp_path)
    assert str(err.value) == (
        f"--train_data_dir {tmp_path} has no images in N_concept/ subfolders; skipped folder(s) '-3_x', '0_x', "
        f"'abc_x', 'zxq': {NOT_N_CONCEPT}; rename them like {tmp_path / '10_mychar'}"
    )
    assert snapshot(tmp_path) == before


def test_misnamed_folders_beside_a_usable_one_are_a_warning_each(tree):
    for name in ("zxq", "0_x"):
        (tree.train_dir / name).mkdir()
    result = scan_root(tree.train_dir)
    assert [s.name for s in result.subsets] == ["2_sks toy"]
    assert [w for w in result.warnings if "skipped" in w] == [
        f"--train_data_dir {tree.train_dir}: skipped folder '0_x': {NOT_N_CONCEPT} (e.g. 10_mychar)",
        f"--train_data_dir {tree.train_dir}: skipped folder 'zxq': {NOT_N_CONCEPT} (e.g. 10_mychar)",
    ]


# --- huge caption files


def test_a_huge_caption_file_is_read_up_to_the_cap_and_named(tmp_path):
    folder = tmp_path / "1_thing"
    folder.mkdir()
    write_test_image(folder / "a.png", (16, 16), seed=0)
    caption = folder / "a.txt"
    # 5 MB of tags with a two-byte character across the cut: the kept part is still read as UTF-8.
    head = "zxq, " + "tag, " * ((MAX_CAPTION_BYTES - 6) // 5)
    caption.write_bytes(head.encode() + "é".encode() * 5_000_000)
    assert len(head.encode()) % 5 == 0 and len(head.encode()) < MAX_CAPTION_BYTES < len(head.encode()) + 2
    before = snapshot(tmp_path)

    found = find_caption(folder / "a.png", ".txt")
    assert (found.source, found.truncated, found.guessed_encoding) == (CaptionSource.FILE, True, None)
    # Cut at the last comma: no half tag trains.
    assert found.text == head.rstrip(", ")
    scan = scan_subset_dir(
        folder, num_repeats=1, class_tokens="thing", is_reg=False, caption_extension=".txt"
    )
    assert scan.subset.records[0].caption == found.text
    assert scan.warnings == [
        f"caption file {caption} is over 64 KiB; only its first 64 KiB were read (far more than a caption's "
        "225 tokens): check that it is a caption"
    ]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("size", "truncated"), [(MAX_CAPTION_BYTES, False), (MAX_CAPTION_BYTES + 1, True)])
def test_the_cap_is_exact(tmp_path, size, truncated):
    write_test_image(tmp_path / "a.png", (16, 16), seed=0)
    (tmp_path / "a.txt").write_bytes(b"x" * size)
    found = find_caption(tmp_path / "a.png", ".txt")
    assert (found.truncated, len(found.text)) == (truncated, MAX_CAPTION_BYTES)
