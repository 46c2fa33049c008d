"""Caption files: which lines train, and the warning for a file whose first line is blank (where kohya's
caption would be empty)."""

import random

import pytest

from data_helpers import write_test_image
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.caption_files import CaptionSource, find_caption, starts_with_blank_line
from loracraft.data.captions import CaptionMoment, process_caption
from loracraft.data.metadata import caption_tags
from loracraft.data.scan import scan_subset_dir


@pytest.mark.parametrize(
    ("text", "blank_first"),
    [
        ("\nzxq, cat", True),
        ("  \r\n\nzxq, cat\n", True),
        ("zxq, cat\n\nsecond", False),
        ("zxq, cat", False),
        ("\n \n", False),  # no caption at all: the folder caption, warned about as an empty file
        ("", False),
    ],
)
def test_starts_with_blank_line(text, blank_first):
    assert starts_with_blank_line(text) is blank_first


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "1_thing"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_test_image(folder / name, (16, 16), seed=0)
    (folder / "a.txt").write_text("\nzxq, cat", encoding="utf-8")
    (folder / "b.txt").write_text("zxq, dog\n", encoding="utf-8")
    (folder / "c.txt").write_text(" \n", encoding="utf-8")
    return folder


def test_a_leading_blank_line_trains_the_first_non_empty_line(folder):
    found = find_caption(folder / "a.png", ".txt")
    assert (found.text, found.source, found.blank_first_line) == ("zxq, cat", CaptionSource.FILE, True)
    # kohya (lines[0].strip() without --enable_wildcard) would train this image on "".
    assert process_caption(found.text, SubsetOptions(), random.Random(0), CaptionMoment()) == "zxq, cat"
    assert caption_tags(found.text) == ["zxq", "cat"]
    assert not find_caption(folder / "b.png", ".txt").blank_first_line


def test_the_scan_names_the_files_with_a_leading_blank_line(folder):
    scan = scan_subset_dir(
        folder, num_repeats=1, class_tokens="thing", is_reg=False, caption_extension=".txt"
    )
    assert [r.caption for r in scan.subset.records] == ["zxq, cat", "zxq, dog", "thing"]
    assert (
        f"{folder}: 1 caption file(s) start with an empty line: a.txt; they train on their first non-empty "
        "line, where kohya (without --enable_wildcard) would train on an empty caption; delete the empty line"
        in scan.warnings
    )
    assert scan.notes == tuple(w for w in scan.warnings if "empty line" in w)
    assert any("1 of 3 caption files are empty" in w for w in scan.caption_warnings)


@pytest.mark.parametrize(
    ("caption", "wildcard", "tags"),
    [
        ("A, b,, c ,", False, ["a", "b", "c"]),
        ("a, b\nc, d", False, ["a", "b"]),  # like kohya: only the first line trains without wildcards
        ("a, b\nc, d", True, ["a", "b", "c", "d"]),  # each line is a caption; no "b\nc" tag
        ("a; b; c", False, ["a; b; c"]),  # kohya's ss_tag_frequency always splits on ","
    ],
)
def test_caption_tags_count_what_kohya_records(caption, wildcard, tags):
    assert caption_tags(caption, wildcard) == tags
