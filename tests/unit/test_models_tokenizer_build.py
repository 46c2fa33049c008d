"""The built CLIP tokenizer: real BPE files, chosen words one token, anything else still tokenizes."""

import pytest
from transformers import CLIPTokenizer, CLIPTokenizerFast

from loracraft.models.tokenizer_build import BOS, EOS, build_clip_tokenizer, learn_merges

# "abc", "bca", "cab" and "bcd" defeat naive prefix merges: each one's inner pair starts another word.
WORDS = "a red circle on a blue background sks ohwx abc bca cab bcd abcabc café".split()


@pytest.fixture(scope="module", params=[CLIPTokenizer, CLIPTokenizerFast])
def tokenizer(request, tmp_path_factory):
    folder = build_clip_tokenizer(WORDS, tmp_path_factory.mktemp("tokenizer"))
    return request.param.from_pretrained(folder, local_files_only=True)


def test_every_word_is_one_token(tokenizer):
    for word in WORDS:
        assert len(tokenizer.tokenize(word)) == 1, word
    assert tokenizer.tokenize("a red circle on a blue background") == [w + "</w>" for w in WORDS[:7]]


def test_unknown_words_fall_back_to_characters(tokenizer):
    assert tokenizer.tokenize("zebra!") == ["z", "e", "b", "r", "a</w>", "!</w>"]
    assert tokenizer.unk_token_id not in tokenizer("zebra!").input_ids[1:-1]


def test_special_tokens_come_last_like_clip(tokenizer):
    ids = tokenizer("a red circle", padding="max_length", max_length=77).input_ids
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (len(tokenizer) - 2, len(tokenizer) - 1)
    assert (ids[0], ids[4], len(ids)) == (tokenizer.bos_token_id, tokenizer.eos_token_id, 77)
    assert tokenizer.convert_ids_to_tokens([ids[0], ids[-1]]) == [BOS, EOS]
    assert tokenizer.model_max_length == 77


def test_words_are_cut_like_clip(tokenizer):
    # CLIP makes every digit its own piece, so no merge can make "sks1" one token.
    assert tokenizer.tokenize("sks1") == ["sks</w>", "1</w>"]
    assert learn_merges(["sks1"]) == learn_merges(["sks"])
