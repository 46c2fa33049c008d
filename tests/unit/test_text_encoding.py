"""75/150/225-token chunking, clip_skip and A1111-weighted encoding on a tiny CLIP text model."""

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from loracraft.models.text_encoding import (
    encode_captions,
    encode_tokens,
    encode_weighted_captions,
    final_layer_norm,
    join_chunks,
    tokenize_captions,
    tokenize_weighted_captions,
)
from loracraft.models.tokenizer_build import build_clip_tokenizer

WORDS = "a red blue green cat dog on hill house sky sun photo of small large star".split()
MODES = [75, 150, 225]


def caption_of(length: int, weighted: dict[int, float] | None = None) -> str:
    """`length` one-token words; the word at index i is written `(word:w)` when `weighted` names i."""
    weighted = weighted or {}
    words = [WORDS[i % len(WORDS)] for i in range(length)]
    return " ".join(f"({word}:{weighted[i]})" if i in weighted else word for i, word in enumerate(words))


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return build_clip_tokenizer(WORDS, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_folder):
    return CLIPTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)


@pytest.fixture(scope="module")
def text_encoder(tokenizer):
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def test_caption_words_are_one_token_each(tokenizer):
    assert len(tokenizer(caption_of(40)).input_ids) == 42


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length", [0, 10, 80, 160, 300])
def test_chunks_are_bos_75_tokens_eos(tokenizer, mode, length):
    ids = tokenize_captions(tokenizer, [caption_of(length)], mode)
    assert ids.shape == (1, mode // 75, 77)
    assert (ids[0, :, 0] == tokenizer.bos_token_id).all()
    assert (ids[0, :, -1] == tokenizer.eos_token_id).all()
    kept = min(length, mode)
    body = ids[0, :, 1:-1].flatten()
    assert body[:kept].tolist() == tokenizer(caption_of(kept), add_special_tokens=False).input_ids
    assert (body[kept:] == tokenizer.eos_token_id).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length", [10, 300])
def test_output_has_n_times_75_plus_2_positions(tokenizer, text_encoder, mode, length):
    with torch.no_grad():
        states = encode_captions(tokenizer, text_encoder, [caption_of(length), ""], mode, None)
    assert states.shape == (2, mode + 2, 32)


@pytest.mark.parametrize("mode", [150, 225])
@pytest.mark.parametrize("length", [10, 100, 300])
def test_first_chunk_of_a_long_caption_is_the_75_token_encoding(tokenizer, text_encoder, mode, length):
    caption = caption_of(length)
    with torch.no_grad():
        short = encode_captions(tokenizer, text_encoder, [caption], 75, None)
        long = encode_captions(tokenizer, text_encoder, [caption], mode, None)
    # BOS and the first 75 tokens come from the same chunk; position 76 is the next chunk's first token.
    torch.testing.assert_close(long[:, :76], short[:, :76], rtol=0, atol=0)
    assert not torch.equal(long[:, 76], short[:, 76])


@pytest.mark.parametrize("mode", [150, 225])
def test_later_chunks_are_encoded_on_their_own(tokenizer, text_encoder, mode):
    ids = tokenize_captions(tokenizer, [caption_of(300)], mode)
    with torch.no_grad():
        joined = encode_tokens(text_encoder, ids, None)
        last = text_encoder(ids[:, -1]).last_hidden_state
    torch.testing.assert_close(joined[:, -76:], last[:, 1:], rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_clip_skip_1_is_the_last_hidden_state(tokenizer, text_encoder, mode):
    ids = tokenize_captions(tokenizer, [caption_of(90)], mode)
    with torch.no_grad():
        last = join_chunks(text_encoder(ids[0]).last_hidden_state.unsqueeze(0))
        for clip_skip in (None, 1):
            torch.testing.assert_close(encode_tokens(text_encoder, ids, clip_skip), last, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_clip_skip_2_is_the_penultimate_layer_after_the_final_layer_norm(tokenizer, text_encoder, mode):
    ids = tokenize_captions(tokenizer, [caption_of(90)], mode)
    with torch.no_grad():
        hidden = text_encoder(ids[0], output_hidden_states=True).hidden_states
        expected = join_chunks(final_layer_norm(text_encoder)(hidden[-2]).unsqueeze(0))
        skipped = encode_tokens(text_encoder, ids, 2)
        torch.testing.assert_close(skipped, expected, rtol=0, atol=0)
        assert not torch.allclose(skipped, encode_tokens(text_encoder, ids, 1))


def test_tokenizers_padding_with_another_token_get_kohyas_eos_fix(tokenizer_folder):
    # SD2 and SDXL pad with "!" rather than EOS.
    padded = CLIPTokenizer.from_pretrained(tokenizer_folder, local_files_only=True, pad_token="!")
    eos, pad = padded.eos_token_id, padded.pad_token_id
    assert pad != eos
    cut = tokenize_captions(padded, [caption_of(100)], 150)[0]
    assert cut[0, -1] == eos and cut[1, 26] == eos and cut[1, -1] == pad
    empty_tail = tokenize_captions(padded, [caption_of(10)], 150)[0]
    assert empty_tail[0, 11] == eos and empty_tail[0, -1] == pad
    assert empty_tail[1, 1] == eos and (empty_tail[1, 2:] == pad).all()
    ids, weights = tokenize_weighted_captions(padded, [caption_of(100)], 150)
    assert torch.equal(ids[0], cut) and (weights == 1.0).all()


@pytest.mark.parametrize(
    ("mode", "index"),
    [(75, 0), (75, 74), (150, 0), (150, 74), (150, 75), (150, 149), (225, 75), (225, 150), (225, 224)],
)
def test_weights_land_on_their_token(tokenizer, text_encoder, mode, index):
    length = mode
    weighted = caption_of(length, {index: 1.5})
    ids, weights = tokenize_weighted_captions(tokenizer, [weighted], mode)
    assert torch.equal(ids, tokenize_captions(tokenizer, [caption_of(length)], mode))
    expected = torch.ones(1, mode // 75, 77)
    expected[0, index // 75, index % 75 + 1] = 1.5
    assert torch.equal(weights, expected)

    with torch.no_grad():
        plain = encode_captions(tokenizer, text_encoder, [caption_of(length)], mode, 2)
        scaled = encode_weighted_captions(tokenizer, text_encoder, [weighted], mode, 2)
    others = [position for position in range(mode + 2) if position != index + 1]
    torch.testing.assert_close(scaled[:, others], plain[:, others], rtol=0, atol=0)
    torch.testing.assert_close(scaled[:, index + 1], plain[:, index + 1] * 1.5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("clip_skip", [None, 2])
def test_weight_one_everywhere_is_the_unweighted_encoding(tokenizer, text_encoder, mode, clip_skip):
    captions = [caption_of(20), caption_of(300), "", "a (red:1.0) cat"]
    plain_captions = [caption_of(20), caption_of(300), "", "a red cat"]
    with torch.no_grad():
        weighted = encode_weighted_captions(tokenizer, text_encoder, captions, mode, clip_skip)
        plain = encode_captions(tokenizer, text_encoder, plain_captions, mode, clip_skip)
    assert torch.equal(weighted, plain)


def test_weighting_keeps_gradients_flowing_to_the_text_encoder(tokenizer, text_encoder):
    states = encode_weighted_captions(tokenizer, text_encoder, ["a (red:1.3) cat"], 150, 2)
    states.sum().backward()
    grads = [p.grad for p in text_encoder.parameters() if p.grad is not None]
    text_encoder.zero_grad(set_to_none=True)
    assert grads and any(g.abs().sum() > 0 for g in grads)
