"""SDXL's text conditioning as kohya's SdxlTextEncodingStrategy makes it, on tiny TE1/TE2 models.

The expected values are computed here from the encoders' raw outputs by the rule kohya's code states
(penultimate hidden states of both, no final norm, joined on the feature axis; TE2's final-normed state
at the first EOS through text_projection, of the first chunk), not from loracraft's own functions.
"""

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from loracraft.models.text_encoding import encode_sdxl_captions, tokenize_captions
from loracraft.models.tokenizer_build import build_clip_tokenizer

WORDS = "a red blue green cat dog on hill house sky sun photo of small large star".split()


def caption_of(length: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(length))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = build_clip_tokenizer(WORDS, tmp_path_factory.mktemp("tokenizer"))
    first = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    second = CLIPTokenizer.from_pretrained(folder, local_files_only=True, pad_token="!")
    return first, second


@pytest.fixture(scope="module")
def text_encoders(tokenizers):
    torch.manual_seed(0)
    common = {
        "vocab_size": len(tokenizers[0]),
        "intermediate_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "bos_token_id": tokenizers[0].bos_token_id,
        "eos_token_id": tokenizers[0].eos_token_id,
    }
    first = CLIPTextModel(CLIPTextConfig(hidden_size=16, pad_token_id=tokenizers[0].pad_token_id, **common))
    second = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=24,
            projection_dim=20,
            hidden_act="gelu",
            pad_token_id=tokenizers[1].pad_token_id,
            **common,
        )
    )
    return first.eval(), second.eval()


def kohya_reference(tokenizers, text_encoders, caption: str):
    """One 75-token caption by kohya's rule, from the raw model outputs."""
    first, second = text_encoders
    ids_1 = tokenizers[0](
        caption, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    ids_2 = tokenizers[1](
        caption, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    out_1 = first(ids_1, output_hidden_states=True)
    out_2 = second(ids_2, output_hidden_states=True)
    states = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
    eos_position = ids_2[0].tolist().index(tokenizers[1].eos_token_id)
    normed = second.text_model.final_layer_norm(out_2.hidden_states[-1][:, eos_position])
    return states, second.text_projection(normed)


@pytest.mark.parametrize("length", [0, 5, 74])
def test_states_and_pooled_follow_kohyas_rule(tokenizers, text_encoders, length):
    caption = caption_of(length)
    with torch.no_grad():
        states, pooled = encode_sdxl_captions(tokenizers, text_encoders, [caption, caption_of(3)], 75)
        expected_states, expected_pooled = kohya_reference(tokenizers, text_encoders, caption)
    assert states.shape == (2, 77, 16 + 24) and pooled.shape == (2, 20)
    torch.testing.assert_close(states[:1], expected_states, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled[:1], expected_pooled, rtol=0, atol=1e-6)


def test_pooled_output_is_not_clips_own_pooling(tokenizers, text_encoders):
    # CLIP pools at the highest token id; with `!` (id 0) padding and EOS not the highest id that is
    # another position, which is why kohya looks for the first EOS.
    caption = caption_of(5)
    ids = tokenizers[1](caption, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        _, pooled = encode_sdxl_captions(tokenizers, text_encoders, [caption], 75)
        clip_pooled = text_encoders[1](ids).text_embeds
    eos_first = ids[0].tolist().index(tokenizers[1].eos_token_id)
    if int(ids[0].argmax()) != eos_first:
        assert not torch.allclose(pooled, clip_pooled)


@pytest.mark.parametrize("mode", [150, 225])
def test_long_captions_use_the_first_chunks_pooled_output(tokenizers, text_encoders, mode):
    caption = caption_of(200)
    with torch.no_grad():
        states, pooled = encode_sdxl_captions(tokenizers, text_encoders, [caption], mode)
        short_states, short_pooled = encode_sdxl_captions(tokenizers, text_encoders, [caption], 75)
    assert states.shape == (1, mode + 2, 40)
    # Same chunk, encoded in batches of different size: equal up to float rounding.
    torch.testing.assert_close(pooled, short_pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(states[:, :76], short_states[:, :76], rtol=0, atol=1e-6)
    ids_2 = tokenize_captions(tokenizers[1], [caption], mode)
    # kohya's fix-up gives every `!`-padded chunk an EOS, so each chunk has a position to pool at.
    assert (ids_2[0] == tokenizers[1].eos_token_id).any(dim=-1).all()


def test_weighted_captions_scale_both_encoders_states_not_the_pooled_output(tokenizers, text_encoders):
    with torch.no_grad():
        plain_states, plain_pooled = encode_sdxl_captions(tokenizers, text_encoders, ["red cat on hill"], 75)
        states, pooled = encode_sdxl_captions(
            tokenizers, text_encoders, ["red (cat:1.5) on hill"], 75, weighted=True
        )
    torch.testing.assert_close(states[0, 2], plain_states[0, 2] * 1.5)
    torch.testing.assert_close(states[0, [0, 1, 3, 4]], plain_states[0, [0, 1, 3, 4]])
    torch.testing.assert_close(pooled, plain_pooled)


def test_gradients_reach_both_encoders(tokenizers, text_encoders):
    first, second = text_encoders
    states, pooled = encode_sdxl_captions(tokenizers, text_encoders, ["red cat"], 75)
    (states.sum() + pooled.sum()).backward()
    for encoder in text_encoders:
        grads = [p.grad for name, p in encoder.named_parameters() if "layers.0.self_attn.q_proj" in name]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
        encoder.zero_grad()
