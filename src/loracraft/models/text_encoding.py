"""Captions to text-encoder states the way A1111 and kohya make them.

Long captions (max_token_length 150 or 225) are tokenized as one sequence of L+2 tokens and cut into
75-token chunks, each wrapped in its own BOS ... EOS and encoded separately; the states are joined back
as [BOS of chunk 1] + tokens of every chunk + [last token of the last chunk], so the U-Net sees L+2
positions. clip_skip N takes the N-th hidden state from the end and applies the final layer norm.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextModel

CHUNK = 75  # tokens per chunk between BOS and EOS; CLIP's context is CHUNK + 2 = 77


def tokenize_captions(tokenizer, captions: list[str], max_token_length: int = 75) -> torch.Tensor:
    """Token ids of shape (batch, chunks, 77)."""
    total = max_token_length + 2
    ids = tokenizer(
        captions, padding="max_length", truncation=True, max_length=total, return_tensors="pt"
    ).input_ids
    if max_token_length == CHUNK:
        return ids.unsqueeze(1)
    chunks = []
    for start in range(1, total - 1, CHUNK):
        body = ids[:, start : start + CHUNK]
        chunks.append(torch.cat([ids[:, :1], body, ids[:, -1:]], dim=1))
    return torch.stack(chunks, dim=1)


def encode_tokens(text_encoder: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int | None) -> torch.Tensor:
    """Hidden states (batch, chunks*75 + 2, dim) for ids from `tokenize_captions`."""
    batch, chunks, length = input_ids.shape
    flat = input_ids.reshape(batch * chunks, length).to(text_encoder.device)
    if clip_skip is None or clip_skip <= 1:
        states = text_encoder(flat).last_hidden_state
    else:
        hidden = text_encoder(flat, output_hidden_states=True).hidden_states[-clip_skip]
        states = final_layer_norm(text_encoder)(hidden)
    states = states.reshape(batch, chunks * length, -1)
    if chunks == 1:
        return states
    pieces = [states[:, :1]]
    for start in range(1, chunks * length, length):
        pieces.append(states[:, start : start + CHUNK])
    pieces.append(states[:, -1:])
    return torch.cat(pieces, dim=1)


def final_layer_norm(text_encoder: CLIPTextModel) -> torch.nn.Module:
    # transformers 5 moved the inner CLIPTextTransformer's modules up a level; 4.x keeps `text_model`.
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def encode_captions(
    tokenizer, text_encoder: CLIPTextModel, captions: list[str], max_token_length: int, clip_skip: int | None
) -> torch.Tensor:
    return encode_tokens(text_encoder, tokenize_captions(tokenizer, captions, max_token_length), clip_skip)
