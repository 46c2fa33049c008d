"""kohya's WD14 tag rules: our caption lines and tag counts against kohya's own for the same scores.

tests/data/kohya_wd14_tags.json holds what kohya's tag_images_by_wd14_tagger.py wrote (caption files and
its --frequency_tags table) for fake scores under many flag combinations; its "about" says how it was made.
"""

import json
from collections import Counter
from pathlib import Path

import pytest

from loracraft.caption.tag_rules import (
    CHARACTER,
    GENERAL,
    RATING,
    TagRules,
    expand_character_tag,
    frequency_lines,
    output_names,
    parse_tag_replacement,
    select_tags,
    split_tag_list,
    without_underscores,
)
from loracraft.caption.wd14 import TagList, named_as_asked, tag_rules
from loracraft.caption.writing import CaptionPolicy
from loracraft.errors import UserError
from loracraft.tools.caption import make_parser

KOHYA = json.loads(
    (Path(__file__).parent.parent / "data" / "kohya_wd14_tags.json").read_text(encoding="utf-8")
)
TAG_LIST = TagList([name for name, _ in KOHYA["tags"]], [category for _, category in KOHYA["tags"]])
CASES = {case["name"]: case for case in KOHYA["cases"]}


def our_captions(argv: list[str]) -> tuple[list[str], list[str]]:
    """Each image's caption line and the --frequency_tags table, from kohya's flags parsed by ours."""
    args = make_parser().parse_args(["images", *argv])
    tags, rules = named_as_asked(TAG_LIST, args), tag_rules(args)
    counts: Counter[str] = Counter()
    captions = []
    for scores in KOHYA["scores"]:
        found = select_tags(scores, tags.names, tags.categories, rules)
        counts.update(found.counted())
        captions.append(rules.separator.join(found.tags))
    return captions, frequency_lines(counts)


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if not case["existing"]])
def test_captions_and_counts_are_kohyas(name):
    case = CASES[name]
    captions, frequencies = our_captions(case["argv"])
    assert [caption + "\n" for caption in captions] == case["captions"]
    assert frequencies == case["frequencies"]


def test_append_adds_the_tags_kohya_adds_keeping_the_users_text():
    case = CASES["append to existing captions"]
    captions, _ = our_captions(case["argv"])
    policy = CaptionPolicy(append=True)
    for index, (caption, kohyas) in enumerate(zip(captions, case["captions"], strict=True)):
        existing = (case["existing"].get(str(index)) or "").strip() or None
        ours = policy.text(caption, existing)
        assert split_tag_list(ours, ", ") == split_tag_list(kohyas, ", ")
        # kohya rewrites the old caption's spacing ("smile,open_mouth" -> "smile, open_mouth"); we keep it.
        assert ours.startswith(existing or caption)


def test_the_reference_covers_each_rule():
    """The flag combinations above exercise what they claim (the data is not silently trivial)."""
    defaults = CASES["defaults"]["captions"]
    assert CASES["character tags first"]["captions"][1].startswith(
        "artoria_pendragon_(lancer)_(fate), saber_(fate)"
    )
    assert "^_^" in CASES["remove underscore keeps kaomoji"]["captions"][1]
    assert "x_x" in CASES["remove underscore keeps kaomoji"]["captions"][1]
    assert CASES["rating first"]["captions"][2].startswith("general, ")  # four equal ratings: the first
    assert CASES["tag replacement"]["captions"] != defaults
    assert CASES["always first tags"]["captions"][3].startswith("1girl, solo, ")


def test_always_first_tags_are_trimmed_where_kohya_misses_them():
    """kohya compares " solo" and leaves solo where it is; each listed tag found moves to the front in turn."""
    rules = TagRules(always_first=tuple(split_tag_list("1girl, solo", ", ")))
    scores = [0.9, 0.9, 0.9]
    names = ["long_hair", "1girl", "solo"]
    assert select_tags(scores, names, [GENERAL] * 3, rules).tags == ["solo", "1girl", "long_hair"]


def test_a_tag_list_without_ratings_gives_no_rating_tag():
    rules = TagRules(rating_first=True)
    assert select_tags([0.9], ["1girl"], [GENERAL], rules).tags == ["1girl"]


def test_other_categories_are_tagged_as_general_tags():
    rules = TagRules(general_threshold=0.5, character_threshold=0.1)
    found = select_tags([0.4, 0.6, 0.2], ["artist_x", "meta_y", "chara"], [1, 5, CHARACTER], rules)
    assert (found.generals, found.characters, found.tags) == (["meta_y"], ["chara"], ["meta_y", "chara"])


def test_the_rating_counts_after_the_other_tags():
    rules = TagRules(rating_first=True)
    found = select_tags([0.1, 0.9, 0.8], ["safe", "nsfw", "1girl"], [RATING, RATING, GENERAL], rules)
    assert found.tags == ["nsfw", "1girl"]
    assert found.counted() == ["1girl", "nsfw"]


@pytest.mark.parametrize(
    ("tag", "separator", "expanded"),
    [
        ("hatsune_miku", ", ", "hatsune_miku"),
        ("saber_(fate)", ", ", "saber, fate"),
        ("artoria_pendragon_(lancer)_(fate)", ", ", "artoria_pendragon_(lancer), fate"),
        ("name(series)", " | ", "name | series"),
    ],
)
def test_character_tag_expand(tag, separator, expanded):
    assert expand_character_tag(tag, separator) == expanded


@pytest.mark.parametrize(
    ("tag", "written"),
    [
        ("long_hair", "long hair"),
        ("^_^", "^_^"),
        ("x_x", "x_x"),
        (">_<", ">_<"),
        ("o_o_", "o o "),
        ("_", "_"),
    ],
)
def test_remove_underscore_keeps_kaomoji(tag, written):
    assert without_underscores(tag) == written


def test_tag_replacement_escapes():
    assert parse_tag_replacement("a,b;c\\,d,e\\;f") == [("a", "b"), ("c,d", "e;f")]


@pytest.mark.parametrize("text", ["a", "a,b;c", "a,b,c", "a,b;"])
def test_tag_replacement_that_is_not_pairs_is_one_line(text):
    with pytest.raises(UserError, match=r"^--tag_replacement .*: write source,target pairs separated by ;"):
        parse_tag_replacement(text)


def test_replacement_renames_the_first_general_then_character_then_rating():
    names = ["x", "x", "x", "y"]
    categories = [RATING, CHARACTER, GENERAL, GENERAL]
    assert output_names(names, categories, replacements=[("x", "z")]) == ["x", "x", "z", "y"]
    assert output_names(names, categories, replacements=[("x", "z")] * 3) == ["z", "z", "z", "y"]


def test_tag_lists_split_on_the_separator_without_its_spaces():
    assert split_tag_list(" a, b ,,c ", ", ") == ["a", "b", "c"]
    assert split_tag_list("a|b c", " | ") == ["a", "b c"]
    assert split_tag_list("a b", " ") == ["a", "b"]
