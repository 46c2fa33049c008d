"""A sample prompt and its negative prompt to the U-Net's conditioning, as kohya's sampling pipelines
(StableDiffusionLongPromptWeightingPipeline and its SDXL copy) make it.

- Long prompts: the pair is encoded at the fewest 75-token chunks that hold the longer of the two, up to
  three (225 tokens), each chunk the way training encodes long captions (models/text_encoding.py).
- A1111 emphasis, `(word)`, `[word]`, `(word:1.3)`, always applies: each token's state is multiplied by
  its weight, then the whole prompt's states are rescaled to the mean they had before (the pipelines'
  and A1111's "normalize in the sense of mean"; training's --weighted_captions does not rescale).
- clip_skip applies to SD1/SD2; SDXL takes its two encoders' penultimate states and TE2's pooled output,
  as in training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from loracraft.models.prompt_weighting import parse_prompt_attention
from loracraft.models.text_encoding import (
    CHUNK,
    encode_sdxl_tokens,
    encode_tokens,
    join_chunks,
    tokenize_weighted_captions,
)

MAX_CHUNKS = 3  # the pipelines' max_embeddings_multiples


def prompt_token_length(tokenizer, texts: Sequence[str]) -> int:
    """The token length (a multiple of 75, at most 225) that holds every text, brackets parsed out."""
    longest = max(
        sum(
            len(tokenizer(piece, add_special_tokens=False).input_ids)
            for piece, _ in parse_prompt_attention(text)
        )
        for text in texts
    )
    return CHUNK * min(MAX_CHUNKS, max(1, math.ceil(longest / CHUNK)))


def encode_prompts(
    tokenizers: Sequence,
    text_encoders: Sequence[torch.nn.Module],
    texts: Sequence[str],
    clip_skip: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(states (len(texts), positions, width), SDXL's pooled output or None), on the first encoder's device."""
    length = prompt_token_length(tokenizers[0], texts)
    tokenized = [tokenize_weighted_captions(tokenizer, list(texts), length) for tokenizer in tokenizers]
    if len(text_encoders) == 2:
        states, pooled = encode_sdxl_tokens(
            text_encoders, [ids for ids, _ in tokenized], tokenizers[1].eos_token_id
        )
    else:
        states, pooled = encode_tokens(text_encoders[0], tokenized[0][0], clip_skip), None
    # Both tokenizers share one vocabulary, so the first one's weights are every position's.
    return _weighted_keeping_mean(states, join_chunks(tokenized[0][1]).to(states)), pooled


def _weighted_keeping_mean(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each position's states times its weight, each prompt rescaled to its unweighted mean. A prompt
    without emphasis is left exactly as it is, and so is one whose weighted mean is 0 (nothing to
    rescale by), which A1111's formula would turn into NaN."""
    before = states.float().mean(dim=(-2, -1))
    weighted = states * weights.unsqueeze(-1)
    after = weighted.float().mean(dim=(-2, -1))
    emphasised = (weights != 1).any(dim=-1) & (after != 0)
    ratio = torch.where(emphasised, before / torch.where(emphasised, after, 1.0), 1.0)
    return weighted * ratio.to(states.dtype)[:, None, None]
