"""Captions to text-encoder states the way A1111 and kohya make them.

Long captions (max_token_length 150 or 225) are tokenized as one sequence of L+2 tokens and cut into
75-token chunks, each wrapped in its own BOS ... EOS and encoded separately; the states are joined back
as [BOS of chunk 1] + tokens of every chunk + [last token of the last chunk], so the U-Net sees L+2
positions. clip_skip N takes the N-th hidden state from the end and applies the final layer norm.
The 75-token case is the same code with one chunk.

SDXL (`encode_sdxl_captions`) conditions on both of its encoders as kohya's SdxlTextEncodingStrategy does:
each tokenizer pads its own way (TE1 with EOS, TE2 with `!`), each encoder's penultimate hidden states
are taken without the final layer norm and joined along the feature axis (768 + 1280 = 2048 wide), and
TE2's pooled output is its final-normed state at the first EOS through `text_projection` (CLIP's own
pooling looks for the highest token id, which is wrong when the pad id is 0); with long captions the
first chunk's pooled output is used. clip_skip does not apply to SDXL (kohya ignores it too).

With `--weighted_captions` each caption token's state is multiplied by its A1111 weight, as kohya's
current scripts do: BOS/EOS/padding keep weight 1.0 and nothing is renormalised afterwards (kohya's older
`get_weighted_text_embeddings` rescaled to the unweighted mean; its training path no longer does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from loracraft.models.prompt_weighting import weighted_token_ids

CHUNK = 75  # tokens per chunk between BOS and EOS; CLIP's context is CHUNK + 2 = 77


def split_into_chunks(sequences: torch.Tensor, max_token_length: int) -> torch.Tensor:
    """(batch, L+2, ...) -> (batch, L/75, 77, ...): the first position, 75 tokens, the last position.

    Used for token ids and for their weights alike, so both line up position by position.
    """
    chunks = [
        torch.cat([sequences[:, :1], sequences[:, start : start + CHUNK], sequences[:, -1:]], dim=1)
        for start in range(1, max_token_length + 1, CHUNK)
    ]
    return torch.stack(chunks, dim=1)


def mark_chunk_ends(chunks: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """kohya's chunk fix-up for tokenizers that pad with something other than EOS (SD2, SDXL).

    Such a chunk's last slot is padding, so a chunk cut inside a caption would end on a caption token with
    no EOS, and a chunk past the caption's end would hold no EOS at all; kohya writes EOS into both places.
    """
    if eos == pad:
        return chunks
    chunks = chunks.clone()
    cut = (chunks[..., -2] != eos) & (chunks[..., -2] != pad)
    chunks[..., -1] = torch.where(cut, eos, chunks[..., -1])
    chunks[..., 1] = torch.where(chunks[..., 1] == pad, eos, chunks[..., 1])
    return chunks


def join_chunks(per_chunk: torch.Tensor) -> torch.Tensor:
    """(batch, n, 77, ...) -> (batch, n*75 + 2, ...): first BOS, every chunk's 75 inner positions, last end."""
    inner = per_chunk[:, :, 1:-1].flatten(1, 2)
    return torch.cat([per_chunk[:, 0, :1], inner, per_chunk[:, -1, -1:]], dim=1)


def tokenize_captions(tokenizer, captions: list[str], max_token_length: int = 75) -> torch.Tensor:
    """Token ids of shape (batch, chunks, 77)."""
    ids = tokenizer(
        captions, padding="max_length", truncation=True, max_length=max_token_length + 2, return_tensors="pt"
    ).input_ids
    chunks = split_into_chunks(ids, max_token_length)
    return mark_chunk_ends(chunks, tokenizer.eos_token_id, tokenizer.pad_token_id)


def tokenize_weighted_captions(
    tokenizer, captions: list[str], max_token_length: int = 75
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (batch, chunks, 77) with brackets parsed out, and each position's A1111 weight, same shape."""
    pairs = [weighted_token_ids(tokenizer, caption, max_token_length) for caption in captions]
    ids = split_into_chunks(torch.tensor([p[0] for p in pairs]), max_token_length)
    weights = split_into_chunks(torch.tensor([p[1] for p in pairs]), max_token_length)
    return mark_chunk_ends(ids, tokenizer.eos_token_id, tokenizer.pad_token_id), weights


def encode_tokens(
    text_encoder: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int | None
) -> torch.Tensor:
    """Hidden states (batch, chunks*75 + 2, dim) for ids from `tokenize_captions`."""
    batch, chunks, length = input_ids.shape
    flat = input_ids.reshape(batch * chunks, length).to(text_encoder.device)
    if clip_skip is None or clip_skip <= 1:
        states = text_encoder(flat).last_hidden_state
    else:
        hidden = text_encoder(flat, output_hidden_states=True).hidden_states[-clip_skip]
        states = final_layer_norm(text_encoder)(hidden)
    return join_chunks(states.reshape(batch, chunks, length, -1))


def penultimate_states(text_encoder: CLIPTextModel, flat_ids: torch.Tensor) -> torch.Tensor:
    """The output of the second-to-last layer, without the final layer norm (SDXL's conditioning)."""
    return text_encoder(flat_ids, output_hidden_states=True).hidden_states[-2]


def pooled_at_first_eos(
    text_encoder: CLIPTextModelWithProjection, flat_ids: torch.Tensor, eos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate states, projected final-normed state at each row's first EOS) in one forward pass."""
    output = text_encoder(flat_ids, output_hidden_states=True)
    # last_hidden_state is already final-normed; argmax gives the first True position.
    first_eos = (flat_ids == eos).int().argmax(dim=-1)
    last = output.last_hidden_state[torch.arange(len(flat_ids), device=flat_ids.device), first_eos]
    return output.hidden_states[-2], text_encoder.text_projection(last)


def encode_sdxl_tokens(
    text_encoders: Sequence[torch.nn.Module], input_ids: Sequence[torch.Tensor], eos_2: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(states (batch, chunks*75 + 2, width 1 + width 2), pooled (batch, projection)) for the two
    tokenizers' ids from `tokenize_captions`."""
    first, second = text_encoders
    batch, chunks, length = input_ids[0].shape
    flat_1 = input_ids[0].reshape(batch * chunks, length).to(first.device)
    flat_2 = input_ids[1].reshape(batch * chunks, length).to(second.device)
    states_1 = penultimate_states(first, flat_1)
    states_2, pooled = pooled_at_first_eos(second, flat_2, eos_2)
    states = torch.cat([states_1, states_2.to(states_1.dtype)], dim=-1)
    pooled = pooled.reshape(batch, chunks, -1)[:, 0]
    return join_chunks(states.reshape(batch, chunks, length, -1)), pooled


def encode_sdxl_captions(
    tokenizers: Sequence,
    text_encoders: Sequence[torch.nn.Module],
    captions: list[str],
    max_token_length: int,
    weighted: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's cross-attention states and pooled output for `captions`; with `weighted` each caption
    token's states are multiplied by its A1111 weight (both encoders' halves; the pooled output is not
    weighted, as in kohya)."""
    if not weighted:
        ids = [tokenize_captions(tokenizer, captions, max_token_length) for tokenizer in tokenizers]
        return encode_sdxl_tokens(text_encoders, ids, tokenizers[1].eos_token_id)
    pairs = [tokenize_weighted_captions(tokenizer, captions, max_token_length) for tokenizer in tokenizers]
    states, pooled = encode_sdxl_tokens(text_encoders, [ids for ids, _ in pairs], tokenizers[1].eos_token_id)
    return states * join_chunks(pairs[0][1]).to(states).unsqueeze(-1), pooled


def final_layer_norm(text_encoder: CLIPTextModel) -> torch.nn.Module:
    # transformers 5 moved the inner CLIPTextTransformer's modules up a level; 4.x keeps `text_model`.
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def encode_captions(
    tokenizer, text_encoder: CLIPTextModel, captions: list[str], max_token_length: int, clip_skip: int | None
) -> torch.Tensor:
    return encode_tokens(text_encoder, tokenize_captions(tokenizer, captions, max_token_length), clip_skip)


def encode_weighted_captions(
    tokenizer, text_encoder: CLIPTextModel, captions: list[str], max_token_length: int, clip_skip: int | None
) -> torch.Tensor:
    """`encode_captions` for A1111-weighted captions: each token's state times its weight, no renormalising.

    The joined weights are 1.0 at the first and last positions, so this scales exactly kohya's
    positions 1..75 of every chunk.
    """
    input_ids, weights = tokenize_weighted_captions(tokenizer, captions, max_token_length)
    states = encode_tokens(text_encoder, input_ids, clip_skip)
    return states * join_chunks(weights).to(states).unsqueeze(-1)
