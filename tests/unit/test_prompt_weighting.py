"""A1111 emphasis parsing (its documented examples) and per-token weights."""

import pytest
from transformers import CLIPTokenizer

from loracraft.errors import UserError
from loracraft.models.prompt_weighting import parse_prompt_attention, weighted_token_ids
from loracraft.models.tokenizer_build import build_clip_tokenizer

WORDS = "a red blue cat dog on hill house sky sun photo of".split()


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        # The examples in A1111's parse_prompt_attention docstring.
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.3 * 1.1 * 1.1),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.1**4),
                (".", 1.1),
            ],
        ),
        # The forms kohya's docs name.
        ("(word:1.3)", [("word", 1.3)]),
        ("((word))", [("word", 1.1 * 1.1)]),
        ("[word]", [("word", 1 / 1.1)]),
        ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
        ("(word: 0.5 )", [("word", 0.5)]),
        ("(word:-1)", [("word", -1.0)]),
        ("((a:1.5) b)", [("a", 1.5 * 1.1), (" b", 1.1)]),
        # Brackets that close nothing, weights outside brackets, colons and backslashes.
        ("a) b]", [("a) b]", 1.0)]),
        ("score:9, tag:1.2)", [("score:9, tag:1.2)", 1.0)]),
        ("[unclosed", [("unclosed", 1 / 1.1)]),
        ("([mixed)]", [("mixed", 1.0)]),
        (r"a \\ b", [("a \\ b", 1.0)]),
        (r"a \b", [("a b", 1.0)]),
        (r"\(a:1.2\)", [("(a:1.2)", 1.0)]),
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
        ("(猫:1.2), 犬", [("猫", 1.2), (", 犬", 1.0)]),
        ("a BREAK b", [("a BREAK b", 1.0)]),
    ],
)
def test_parse_table(caption, expected):
    parsed = parse_prompt_attention(caption)
    assert [text for text, _ in parsed] == [text for text, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


@pytest.mark.parametrize("caption", ["(cat:1.2.3)", "(cat:.)", "(cat:1..2)"])
def test_a_weight_that_is_not_a_number_is_a_user_error(caption):
    with pytest.raises(UserError, match="--weighted_captions"):
        parse_prompt_attention(caption)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = build_clip_tokenizer(WORDS, tmp_path_factory.mktemp("tokenizer"))
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def test_plain_caption_matches_the_tokenizer(tokenizer):
    ids, weights = weighted_token_ids(tokenizer, "a red cat on a hill", 75)
    expected = tokenizer("a red cat on a hill", padding="max_length", max_length=77).input_ids
    assert ids == expected
    assert weights == [1.0] * 77


def test_each_token_carries_its_pieces_weight(tokenizer):
    ids, weights = weighted_token_ids(tokenizer, "a (red cat:1.5) on [hill]", 75)
    plain = tokenizer("a red cat on hill", padding="max_length", max_length=77).input_ids
    assert ids == plain
    assert weights[:7] == pytest.approx([1.0, 1.0, 1.5, 1.5, 1.0, 1 / 1.1, 1.0])
    assert weights[7:] == [1.0] * 70


def test_long_captions_are_cut_to_max_token_length_and_end_with_eos(tokenizer):
    ids, weights = weighted_token_ids(tokenizer, " ".join(["(cat:2)"] * 200), 150)
    assert len(ids) == len(weights) == 152
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert weights == [1.0] + [2.0] * 150 + [1.0]


def test_empty_caption_is_bos_eos_and_padding(tokenizer):
    ids, weights = weighted_token_ids(tokenizer, "", 75)
    assert ids == tokenizer("", padding="max_length", max_length=77).input_ids
    assert weights == [1.0] * 77
