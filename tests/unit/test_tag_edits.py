"""Caption tag edits (caption/tag_edits.py) on hand-worked captions, and the fixed tags kohya keeps."""

from collections import Counter

import pytest

from loracraft.caption.tag_edits import (
    TagEdits,
    edit_caption,
    join_tags,
    most_frequent,
    split_tags,
    tag_count_changes,
    tag_counts,
)
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.captions import partition_tags
from loracraft.errors import UserError


def test_split_and_join_tags():
    assert split_tags(" a,b ,, c ,") == ["a", "b", "c"]
    assert split_tags("a photo of a cat") == ["a photo of a cat"]
    assert split_tags("a; b;c", ";") == ["a", "b", "c"]
    assert join_tags(["a", "b", "c"]) == "a, b, c"
    assert join_tags(["a", "b"], ";") == "a; b"
    assert join_tags(["a", "b"], ", ") == "a, b"


# (caption, edits, expected): each edit alone, worked by hand.
EDITS = [
    ("cat, red", TagEdits(add=("sks",)), "cat, red, sks"),
    ("cat, sks", TagEdits(add=("sks", "blue", "blue")), "cat, sks, blue"),
    ("cat, red, cat", TagEdits(remove=("cat",)), "red"),
    ("red cat, cat", TagEdits(remove=("cat",)), "red cat"),
    ("red hair, red eyes", TagEdits(replace=(("red", "blue"),)), "blue hair, blue eyes"),
    ("1girl, long_hair", TagEdits(replace=(("_", " "),)), "1girl, long hair"),
    (
        "hair (red), eyes (blue)",
        TagEdits(replace=((r"(\w+) \((\w+)\)", r"\2 \1"),), regex=True),
        "red hair, blue eyes",
    ),  # fmt: skip
    ("a.b", TagEdits(replace=((".", "-"),)), "a-b"),
    ("a.b", TagEdits(replace=((".", "-"),), regex=True), "---"),
    ("cat, red cat", TagEdits(rename=(("cat", "dog"),)), "dog, red cat"),
    ("b, a, b, c, a", TagEdits(dedupe=True), "b, a, c"),
    ("b, Apple, a, C", TagEdits(sort=True), "a, Apple, b, C"),
    ("cat, sks, red", TagEdits(trigger="sks"), "sks, cat, red"),
    ("cat, red", TagEdits(trigger="sks"), "sks, cat, red"),
    ("sks, cat, sks", TagEdits(trigger="sks"), "sks, cat"),
    # A sentence is one tag.
    ("a photo of a cat", TagEdits(trigger="sks", add=("outdoors",)), "sks, a photo of a cat, outdoors"),
    ("a photo of a cat", TagEdits(remove=("cat",)), "a photo of a cat"),
    # Another separator: kohya's --caption_separator.
    ("cat; sks; red", TagEdits(trigger="sks", separator=";"), "sks; cat; red"),
    ("a, b; c", TagEdits(sort=True, separator=";"), "a, b; c"),
    ("c; a, b", TagEdits(sort=True, separator=";"), "a, b; c"),
    # An empty caption gets tags from add and trigger.
    ("", TagEdits(add=("a",), trigger="sks"), "sks, a"),
    ("", TagEdits(dedupe=True), ""),
]


@pytest.mark.parametrize(("caption", "edits", "expected"), EDITS)
def test_each_edit(caption, edits, expected):
    assert edit_caption(caption, edits) == expected


def test_rename_to_a_tag_the_caption_has_then_dedupe_keeps_one():
    edits = TagEdits(rename=(("kitty", "cat"),), dedupe=True)
    assert edit_caption("cat, kitty, red", edits) == "cat, red"
    assert edit_caption("kitty, red, cat", edits) == "cat, red"


def test_the_steps_run_in_the_documented_order():
    # replace makes "dog" a tag, rename then sees it; the added tag is sorted with the others; the trigger
    # added with add ends up once, in front.
    edits = TagEdits(
        replace=(("hound", "dog"),), rename=(("dog", "canine"),), remove=("red",), add=("sks", "bark"),
        trigger="sks", dedupe=True, sort=True,
    )  # fmt: skip
    assert edit_caption("red, hound, zebra, canine", edits) == "sks, bark, canine, zebra"


def test_a_line_whose_tags_do_not_change_keeps_its_text():
    assert edit_caption("a,b ,  c,", TagEdits(add=("a",), dedupe=True)) == "a,b ,  c,"
    # Changed: the tags are written with ", ", the line's trailing separator kept.
    assert edit_caption("  b,a,", TagEdits(sort=True)) == "  a, b,"


def test_each_line_of_a_multi_line_caption_is_edited_and_line_endings_are_kept():
    caption = "cat, red\r\n\r\ndog, sks\r\n"
    assert edit_caption(caption, TagEdits(trigger="sks")) == "sks, cat, red\r\n\r\nsks, dog\r\n"
    assert edit_caption("b, a\n  \na, c\n", TagEdits(sort=True)) == "a, b\n  \na, c\n"
    assert edit_caption("cat\n", TagEdits(add=("sks",))) == "cat, sks\n"


# What kohya's BaseDataset.process_caption (library/train_util.py, the `if subset.shuffle_caption or ...`
# block) keeps fixed, read from its code: with keep_tokens_separator in the caption,
# `caption.split(sep, 1)` gives the fixed part and the flexible part, and a second separator in the
# flexible part splits off a fixed suffix, each part split on caption_separator and stripped (empty ones
# dropped); keep_tokens is not looked at then. Without the separator in the caption, the first
# keep_tokens tags are fixed. Each case: the caption, its options, kohya's (fixed, flexible, suffix) tags
# for it, and our edit with sort + dedupe (+ trigger), worked by hand: only flexible tags move or go.
KOHYA_FIXED = [
    (
        "sks, cat, red, cat, blue",
        dict(keep_tokens=2),
        (["sks", "cat"], ["red", "cat", "blue"], []),
        None,
        "sks, cat, blue, red",
    ),
    (
        "1girl, sks ||| red hair, blue eyes, red hair ||| masterpiece, best quality",
        dict(keep_tokens_separator="|||"),
        (["1girl", "sks"], ["red hair", "blue eyes", "red hair"], ["masterpiece", "best quality"]),
        None,
        "1girl, sks ||| blue eyes, red hair ||| masterpiece, best quality",
    ),
    (
        "zeta, alpha ||| d, c, alpha",
        dict(keep_tokens=1, keep_tokens_separator="|||"),
        (["zeta", "alpha"], ["d", "c", "alpha"], []),
        None,
        "zeta, alpha ||| c, d",
    ),
    (
        "z, c, a, b",
        dict(keep_tokens=1, keep_tokens_separator="|||"),
        (["z"], ["c", "a", "b"], []),
        None,
        "z, a, b, c",
    ),
    (
        "sks; z; b; a",
        dict(keep_tokens=2, caption_separator=";"),
        (["sks", "z"], ["b", "a"], []),
        None,
        "sks; z; a; b",
    ),
    (
        "1girl ||| red, sks, blue",
        dict(keep_tokens_separator="|||"),
        (["1girl"], ["red", "sks", "blue"], []),
        "sks",
        "sks, 1girl ||| blue, red",
    ),
    (
        "cat, red, sks, blue",
        dict(keep_tokens=1),
        (["cat"], ["red", "sks", "blue"], []),
        "sks",
        "sks, cat, blue, red",
    ),
    (
        "||| b, a ||| best",
        dict(keep_tokens_separator="|||"),
        ([], ["b", "a"], ["best"]),
        "sks",
        "sks ||| a, b ||| best",
    ),
]


def _options(given: dict) -> SubsetOptions:
    return SubsetOptions(**given)


@pytest.mark.parametrize(("caption", "given", "kohya", "trigger", "expected"), KOHYA_FIXED)
def test_sort_and_dedupe_leave_kohyas_fixed_tags_in_place(caption, given, kohya, trigger, expected):
    options = _options(given)
    fixed, flexible, suffix = kohya
    # Our training reads the caption as kohya does (these cases avoid where it differs on purpose).
    assert partition_tags(caption, options) == (fixed, flexible, suffix)
    edits = TagEdits(
        dedupe=True, sort=True, trigger=trigger, separator=options.caption_separator,
        keep_tokens=options.keep_tokens, keep_tokens_separator=options.keep_tokens_separator,
    )  # fmt: skip
    edited = edit_caption(caption, edits)
    assert edited == expected
    # A trigger put in front of the first keep_tokens tags is one more fixed tag to count.
    moved = trigger is not None and trigger not in fixed
    counted = options.model_copy(update=dict(keep_tokens=options.keep_tokens + moved))
    new_fixed, new_flexible, new_suffix = partition_tags(edited, counted)
    assert new_fixed == ([trigger] if trigger else []) + [tag for tag in fixed if tag != trigger]
    assert new_suffix == suffix
    assert new_flexible == sorted(dict.fromkeys(tag for tag in flexible if tag not in (*fixed, trigger)))


def test_edits_keep_every_keep_tokens_separator_where_it_was():
    marker = dict(keep_tokens_separator="|||")
    caption = "sks|||a, b |||c"
    assert edit_caption(caption, TagEdits(replace=(("|", "/"),), **marker)) == caption
    assert edit_caption(caption, TagEdits(remove=("sks", "a", "b", "c"), **marker)) == "||| |||"
    assert edit_caption(caption, TagEdits(add=("d",), **marker)) == "sks|||a, b, d |||c"
    assert (
        edit_caption(caption, TagEdits(rename=(("c", "sks"),), dedupe=True, **marker)) == "sks|||a, b |||sks"
    )
    assert edit_caption("a ||| ", TagEdits(add=("b",), **marker)) == "a ||| b"
    # Without the marker configured it is text like any other.
    assert edit_caption(caption, TagEdits(replace=(("|||", ", "),))) == "sks, a, b , c"


def test_the_marker_is_no_tag_in_the_counts():
    captions = ["sks ||| a, b", "a, b\nb, c", ""]
    assert tag_counts(captions, keep_tokens_separator="|||") == Counter(sks=1, a=2, b=3, c=1)
    assert tag_counts(captions)["sks ||| a"] == 1


def test_tag_count_changes_list_the_top_tags_before_and_after():
    before = Counter({"cat": 5, "red": 3, "kitty": 4, "rare": 1})
    after = Counter({"cat": 9, "red": 3, "sks": 2, "rare": 1})
    # The top 2 before (cat, kitty) and after (cat, red); sks, third after, is left out.
    assert tag_count_changes(before, after, 2) == [("cat", 5, 9), ("red", 3, 3), ("kitty", 4, 0)]
    assert tag_count_changes(before, after, 0) == []
    # Tags as frequent are taken in name order.
    assert most_frequent(Counter({"b": 1, "c": 2, "a": 1}), 2) == [("c", 2), ("a", 1)]


def test_is_empty():
    assert TagEdits().is_empty()
    assert TagEdits(keep_tokens=2, keep_tokens_separator="|||", separator=";", regex=True).is_empty()
    for edits in (TagEdits(add=("a",)), TagEdits(dedupe=True), TagEdits(sort=True), TagEdits(trigger="a")):
        assert not edits.is_empty()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (dict(replace=(("(red", "x"),), regex=True), "--replace '(red' 'x': not a valid regular expression"),
        (
            dict(replace=(("(red)", r"\2"),), regex=True),
            r"--replace '(red)' '\\2': not a valid regular expression",
        ),  # fmt: skip
        (dict(replace=(("", "x"),)), "--replace: the text to replace is empty"),
        (dict(rename=((" ", "x"),)), "--rename: the tag to rename is empty"),
        (dict(add=("a, b",)), "--add 'a, b': one tag each, without ','"),
        (dict(trigger="sks,"), "--trigger 'sks,': one tag each"),
        (dict(remove=("",)), "--remove '': one tag each"),
        (dict(separator=""), "--caption_separator is empty"),
        (dict(keep_tokens=-1), "--keep_tokens -1: use 0 or more"),
        (dict(keep_tokens_separator=","), "--keep_tokens_separator ',' is part of --caption_separator ','"),
    ],
)
def test_bad_edits_are_one_line_naming_the_flag(given, message):
    with pytest.raises(UserError) as raised:
        TagEdits(**given)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_a_literal_replace_takes_regex_characters_as_text():
    assert edit_caption("(red", TagEdits(replace=(("(red", "blue"),))) == "blue"
