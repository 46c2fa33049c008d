"""kohya's caption transforms (reference §4.5), one pure step at a time, then composed."""

import random

import pytest
from pydantic import ValidationError

from loracraft.config.subset_options import SubsetOptions
from loracraft.data.captions import (
    CaptionMoment,
    add_prefix_suffix,
    drop_tags,
    drops_whole_caption,
    expand_wildcards,
    first_line,
    partition_tags,
    process_caption,
    random_line,
    shuffle_tags,
    split_tags,
    warmed_up_tags,
    warmup_end_step,
)

TAGS = "sks, red hair, smiling, outdoors, blue sky, looking at viewer"


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


def test_defaults_are_kohyas():
    options = SubsetOptions()
    assert (options.shuffle_caption, options.keep_tokens, options.keep_tokens_separator) == (False, 0, "")
    assert (options.caption_separator, options.secondary_separator) == (",", None)
    assert (options.caption_prefix, options.caption_suffix) == (None, None)
    assert (options.caption_dropout_rate, options.caption_dropout_every_n_epochs) == (0.0, 0)
    assert (options.caption_tag_dropout_rate, options.enable_wildcard) == (0.0, False)


@pytest.mark.parametrize(
    ("changes", "static"),
    [
        ({}, True),
        ({"keep_tokens": 2, "keep_tokens_separator": "|||", "secondary_separator": ";;;"}, True),
        ({"caption_prefix": "photo of", "caption_suffix": "4k", "caption_separator": ";"}, True),
        ({"shuffle_caption": True}, False),
        ({"caption_dropout_rate": 0.1}, False),
        ({"caption_dropout_every_n_epochs": 3}, False),
        ({"caption_tag_dropout_rate": 0.1}, False),
        ({"enable_wildcard": True}, False),
    ],
)
def test_is_static_only_without_randomness(changes, static):
    assert SubsetOptions(**changes).is_static is static


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"caption_dropout_rate": 1.5}, "caption_dropout_rate"),
        ({"caption_tag_dropout_rate": -0.1}, "caption_tag_dropout_rate"),
        ({"keep_tokens": -1}, "keep_tokens"),
        ({"caption_dropout_every_n_epochs": -2}, "caption_dropout_every_n_epochs"),
        ({"caption_separator": ""}, "caption_separator"),
    ],
)
def test_invalid_options_name_the_key(changes, flag):
    with pytest.raises(ValidationError, match=flag):
        SubsetOptions(**changes)


@pytest.mark.parametrize(
    ("caption", "prefix", "suffix", "expected"),
    [
        ("a cat", None, None, "a cat"),
        ("a cat", "photo of", None, "photo of a cat"),
        ("a cat", None, "4k", "a cat 4k"),
        ("a cat", "sks,", ", 4k", "sks, a cat , 4k"),
        ("", "sks", "4k", "sks 4k"),
        ("a cat", "", "", "a cat"),
    ],
)
def test_prefix_and_suffix_join_with_one_space(caption, prefix, suffix, expected):
    assert add_prefix_suffix(caption, prefix, suffix) == expected


@pytest.mark.parametrize(
    ("every_n", "dropped_epochs"),
    [(0, []), (1, [1, 2, 3, 4, 5, 6]), (2, [2, 4, 6]), (3, [3, 6]), (7, [])],
)
def test_dropout_every_n_epochs_counts_epochs_from_one(every_n, dropped_epochs):
    options = SubsetOptions(caption_dropout_every_n_epochs=every_n)
    assert [epoch for epoch in range(1, 7) if drops_whole_caption(options, rng(), epoch)] == dropped_epochs


def test_dropout_rate_zero_never_draws_and_one_always_drops():
    untouched = rng(5)
    assert not drops_whole_caption(SubsetOptions(), untouched, 1)
    assert untouched.random() == rng(5).random()
    assert all(drops_whole_caption(SubsetOptions(caption_dropout_rate=1.0), rng(s), 1) for s in range(50))


def test_dropout_rate_is_a_probability():
    options = SubsetOptions(caption_dropout_rate=0.3)
    source = rng(1)
    dropped = sum(drops_whole_caption(options, source, 1) for _ in range(4000))
    assert 1000 < dropped < 1400


@pytest.mark.parametrize(
    ("caption", "expected"),
    [("a, b", "a, b"), ("a, b\nc, d", "a, b"), ("a\r\nb", "a"), ("", ""), ("\nsecond", "")],
)
def test_first_line(caption, expected):
    assert first_line(caption) == expected


def test_random_line_draws_every_non_empty_line_and_never_an_empty_one():
    caption = "first\n\n  \nsecond\r\nthird\n"
    drawn = {random_line(caption, rng(seed)) for seed in range(200)}
    assert drawn == {"first", "second", "third"}
    assert random_line("\n\n", rng()) == ""


@pytest.mark.parametrize(
    ("caption", "possible"),
    [
        ("a {red|blue} cat", {"a red cat", "a blue cat"}),
        ("{x}", {"x"}),
        ("{a|}b", {"ab", "b"}),
        ("{{literal}} {x|y}", {"{literal} x", "{literal} y"}),
        ("{{{a|b}}}", {"{a}", "{b}"}),
        ("{} stays", {"{} stays"}),
        ("no wildcard, tags", {"no wildcard, tags"}),
        ("{1|2} and {3|4}", {"1 and 3", "1 and 4", "2 and 3", "2 and 4"}),
        ("árbol {猫|犬}", {"árbol 猫", "árbol 犬"}),
    ],
)
def test_wildcards_pick_one_choice_each(caption, possible):
    assert {expand_wildcards(caption, rng(seed)) for seed in range(100)} == possible


@pytest.mark.parametrize(
    ("text", "separator", "expected"),
    [
        ("a, b ,c", ",", ["a", "b", "c"]),
        (",a,,b,", ",", ["a", "b"]),
        ("", ",", []),
        (" , , ", ",", []),
        ("a; b;c", ";", ["a", "b", "c"]),
        ("a, b", ";", ["a, b"]),
    ],
)
def test_split_tags_strips_and_drops_empty_tags(text, separator, expected):
    assert split_tags(text, separator) == expected


@pytest.mark.parametrize(
    ("caption", "changes", "expected"),
    [
        ("a, b, c, d", {}, ([], ["a", "b", "c", "d"], [])),
        ("a, b, c, d", {"keep_tokens": 1}, (["a"], ["b", "c", "d"], [])),
        ("a, b, c, d", {"keep_tokens": 9}, (["a", "b", "c", "d"], [], [])),
        ("a,, b, c", {"keep_tokens": 2}, (["a", "b"], ["c"], [])),
        (", a, b,", {"keep_tokens": 1}, (["a"], ["b"], [])),
        ("a, b ||| c, d", {"keep_tokens_separator": "|||"}, (["a", "b"], ["c", "d"], [])),
        ("a, b ||| c, d", {"keep_tokens_separator": "|||", "keep_tokens": 3}, (["a", "b"], ["c", "d"], [])),
        ("a ||| b, c ||| d, e", {"keep_tokens_separator": "|||"}, (["a"], ["b", "c"], ["d", "e"])),
        ("a ||| b ||| c ||| d", {"keep_tokens_separator": "|||"}, (["a"], ["b"], ["c", "d"])),
        ("||| b, c", {"keep_tokens_separator": "|||"}, ([], ["b", "c"], [])),
        ("a, b |||", {"keep_tokens_separator": "|||"}, (["a", "b"], [], [])),
        ("a, b, c", {"keep_tokens_separator": "|||", "keep_tokens": 1}, (["a"], ["b", "c"], [])),
        ("a; b; c", {"caption_separator": ";", "keep_tokens": 1}, (["a"], ["b", "c"], [])),
    ],
)
def test_partition_into_fixed_flexible_and_suffix(caption, changes, expected):
    assert partition_tags(caption, SubsetOptions(**changes)) == expected


def test_shuffle_and_drop_return_new_lists():
    tags = ["a", "b", "c", "d", "e"]
    shuffled = shuffle_tags(tags, rng())
    assert sorted(shuffled) == tags and tags == ["a", "b", "c", "d", "e"]
    assert drop_tags(tags, 0.0, rng()) == tags
    assert drop_tags(tags, 1.0, rng()) == []


def test_no_options_leave_the_first_line_untouched():
    assert process_caption("  a,b ,,c  \nignored", SubsetOptions(), rng(), CaptionMoment()) == "  a,b ,,c  "


def test_shuffle_keeps_fixed_tags_first_and_permutes_the_rest():
    options = SubsetOptions(shuffle_caption=True, keep_tokens=1)
    outputs = {process_caption(TAGS, options, rng(seed), CaptionMoment()) for seed in range(50)}
    assert len(outputs) > 10
    for output in outputs:
        tags = output.split(", ")
        assert tags[0] == "sks"
        assert sorted(tags[1:]) == sorted(TAGS.split(", ")[1:])


def test_fixed_suffix_tags_stay_last():
    options = SubsetOptions(shuffle_caption=True, keep_tokens_separator="|||")
    for seed in range(20):
        tags = process_caption(
            "sks ||| a, b, c, d ||| masterpiece, 4k", options, rng(seed), CaptionMoment()
        ).split(", ")
        assert tags[0] == "sks" and tags[-2:] == ["masterpiece", "4k"]
        assert sorted(tags[1:-2]) == ["a", "b", "c", "d"]


def test_keep_tokens_separator_never_reaches_the_text_encoder():
    options = SubsetOptions(keep_tokens_separator="|||")
    assert (
        process_caption("sks, girl ||| red, blue", options, rng(), CaptionMoment()) == "sks, girl, red, blue"
    )


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_tag_dropout_rate_extremes(rate):
    options = SubsetOptions(caption_tag_dropout_rate=rate, keep_tokens=2)
    expected = TAGS if rate == 0.0 else "sks, red hair"
    assert process_caption(TAGS, options, rng(), CaptionMoment()) == expected


def test_tag_dropout_only_touches_flexible_tags():
    options = SubsetOptions(caption_tag_dropout_rate=0.5, keep_tokens=1)
    lengths = {
        len(process_caption(TAGS, options, rng(seed), CaptionMoment()).split(", ")) for seed in range(100)
    }
    assert min(lengths) == 1 and max(lengths) == 6 and len(lengths) > 3


@pytest.mark.parametrize("caption", ["", "   ", "\n", ",", " , ,, "])
def test_empty_captions_stay_empty(caption):
    options = SubsetOptions(shuffle_caption=True, keep_tokens=2, caption_tag_dropout_rate=0.5)
    assert process_caption(caption, options, rng(), CaptionMoment()) == ""


def test_only_kept_tokens():
    options = SubsetOptions(shuffle_caption=True, keep_tokens=3, caption_tag_dropout_rate=1.0)
    assert process_caption("b, a ,c", options, rng(), CaptionMoment()) == "b, a, c"


def test_whole_caption_dropout_wins_over_everything():
    options = SubsetOptions(caption_dropout_rate=1.0, caption_prefix="sks", secondary_separator=";")
    assert process_caption(TAGS, options, rng(), CaptionMoment()) == ""
    every_other = SubsetOptions(caption_dropout_every_n_epochs=2, caption_prefix="sks")
    assert [process_caption("cat", every_other, rng(), CaptionMoment(e)) for e in (1, 2, 3)] == [
        "sks cat",
        "",
        "sks cat",
    ]


def test_tags_are_joined_with_comma_space_then_secondary_separator_becomes_the_separator():
    options = SubsetOptions(
        caption_separator=";", shuffle_caption=True, keep_tokens=3, secondary_separator="&"
    )
    assert process_caption("a;b;c&d", options, rng(), CaptionMoment()) == "a, b, c;d"
    grouped = SubsetOptions(shuffle_caption=True, secondary_separator=";;;")
    for seed in range(10):
        assert "red hair,blue eyes" in process_caption(
            "girl, red hair;;;blue eyes, sky", grouped, rng(seed), CaptionMoment()
        )


def test_secondary_separator_applies_without_shuffle():
    options = SubsetOptions(secondary_separator=";;;")
    assert process_caption("a;;;b, c", options, rng(), CaptionMoment()) == "a,b, c"


def test_prefix_and_suffix_go_around_the_chosen_line_and_join_the_tags():
    options = SubsetOptions(enable_wildcard=True, caption_prefix="sks,", caption_suffix=", 4k")
    outputs = {process_caption("red\n\nblue\n", options, rng(seed), CaptionMoment()) for seed in range(50)}
    assert outputs == {"sks, red , 4k", "sks, blue , 4k"}
    shuffled = SubsetOptions(
        shuffle_caption=True, keep_tokens=1, caption_prefix="sks,", caption_suffix=", 4k"
    )
    tags = process_caption("a, b", shuffled, rng(), CaptionMoment()).split(", ")
    assert tags[0] == "sks" and sorted(tags[1:]) == ["4k", "a", "b"]


def test_without_wildcards_braces_and_other_lines_stay_as_written():
    assert process_caption("{a|b}\nsecond", SubsetOptions(), rng(), CaptionMoment()) == "{a|b}"


def test_wildcards_expand_before_tags_are_split():
    options = SubsetOptions(enable_wildcard=True, shuffle_caption=True, keep_tokens=1)
    for seed in range(20):
        tags = process_caption("sks, {red, blue|green}", options, rng(seed), CaptionMoment()).split(", ")
        assert tags[0] == "sks" and sorted(tags[1:]) in (["blue", "red"], ["green"])


def test_unicode_tags_survive():
    options = SubsetOptions(shuffle_caption=True, keep_tokens=1, caption_separator="、")
    output = process_caption("初音ミク、青い髪、ツインテール、笑顔 😊", options, rng(), CaptionMoment())
    assert output.split(", ")[0] == "初音ミク"
    assert sorted(output.split(", ")) == sorted(["初音ミク", "青い髪", "ツインテール", "笑顔 😊"])


def test_very_long_caption_keeps_every_tag():
    tags = [f"tag{i}" for i in range(20_000)]
    options = SubsetOptions(shuffle_caption=True, keep_tokens=5)
    output = process_caption(", ".join(tags), options, rng(), CaptionMoment()).split(", ")
    assert output[:5] == tags[:5] and output != tags and sorted(output) == sorted(tags)


@pytest.mark.parametrize(
    "changes",
    [
        {"shuffle_caption": True},
        {"shuffle_caption": True, "keep_tokens": 2, "caption_tag_dropout_rate": 0.3},
        {"caption_dropout_rate": 0.5},
        {"enable_wildcard": True, "shuffle_caption": True, "keep_tokens_separator": "|||"},
    ],
)
def test_same_seed_same_caption(changes):
    options = SubsetOptions(**changes)
    caption = "sks ||| {red|blue|green} hair, smiling, outdoors, day, sky\nsks ||| night, moon, stars, city"
    runs = [
        [
            process_caption(caption, options, rng(seed), CaptionMoment(epoch))
            for seed in range(30)
            for epoch in (1, 2)
        ]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1


def test_multi_line_caption_file_trains_first_line_or_a_random_line_with_wildcards():
    # A caption file's lines reach process_caption joined by newlines (data/caption_files.py).
    caption = "a photo of sks\na drawing of sks\na painting of sks"
    assert process_caption(caption, SubsetOptions(), random.Random(0), CaptionMoment()) == "a photo of sks"
    drawn = {
        process_caption(caption, SubsetOptions(enable_wildcard=True), random.Random(s), CaptionMoment())
        for s in range(40)
    }
    assert drawn == set(caption.splitlines())


@pytest.mark.parametrize(
    ("ratio_or_steps", "total", "end"),
    [(0, 100, 0), (10, 100, 10), (0.5, 100, 50), (0.25, 10, 2), (3.0, 5, 3)],
)
def test_token_warmup_end_is_steps_or_a_share_of_all_steps(ratio_or_steps, total, end):
    assert warmup_end_step(ratio_or_steps, total) == end


# 9 flexible tags, warm-up from 1 tag to all by step 10: kohya's floor(step * (9 - 1) / 10) + 1.
@pytest.mark.parametrize(("step", "count"), [(0, 1), (1, 1), (2, 2), (5, 5), (9, 8), (10, 9), (50, 9)])
def test_token_warmup_grows_the_tags_linearly(step, count):
    tags = [f"t{i}" for i in range(9)]
    assert warmed_up_tags(tags, 1, 10, step) == tags[:count]


def test_token_warmup_keeps_the_kept_tags_and_follows_the_run():
    options = SubsetOptions(keep_tokens=1, token_warmup_min=2, token_warmup_step=0.5)
    caption = "sks, a, b, c, d, e"
    # 100 steps: the warm-up ends at step 50; at step 25, floor(25 * (5 - 2) / 50) + 2 = 3 flexible tags.
    assert process_caption(caption, options, rng(), CaptionMoment(1, 25, 100)) == "sks, a, b, c"
    assert process_caption(caption, options, rng(), CaptionMoment(1, 0, 100)) == "sks, a, b"
    assert process_caption(caption, options, rng(), CaptionMoment(2, 50, 100)) == caption
    assert not options.is_static
