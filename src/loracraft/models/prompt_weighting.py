"""A1111 emphasis in captions (`--weighted_captions`): text pieces with weights, then tokens with weights.

Syntax, as AUTOMATIC1111's `parse_prompt_attention` reads it (and kohya copies):
  (text) x1.1, ((text)) x1.21, [text] /1.1, (text:1.3) x1.3; nesting multiplies;
  \\( \\) \\[ \\] \\\\ are the literal characters; a bracket left open weights everything after it, a
  closing bracket with no opener and a `:1.3)` outside round brackets are plain text.
A1111's `BREAK` keyword is not special here (kohya's copy does not know it either).
"""

from __future__ import annotations

import re

from loracraft.errors import UserError

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_ATTENTION = re.compile(
    r"""
    \\[()\[\]\\]                # an escaped bracket or backslash: that character, literally
    | \\                        # a lone backslash: dropped, as in A1111
    | \( | \[
    | :\s*([+-]?[.\d]+)\s*\)    # ':1.3)' closes the innermost round bracket with an explicit weight
    | \) | \]
    | [^\\()\[\]:]+             # plain text
    | :
    """,
    re.VERBOSE,
)


def _weight(number: str, caption: str) -> float:
    try:
        return float(number)
    except ValueError:
        raise UserError(
            f"--weighted_captions: caption {caption!r} has the weight {number!r}, which is not a number; "
            r"write (word:1.2), or escape literal brackets as \( \)"
        ) from None


def parse_prompt_attention(caption: str) -> list[tuple[str, float]]:
    """The caption as (text, weight) pieces with brackets removed; neighbours of equal weight are merged."""
    pieces: list[list] = []  # [text, weight], mutable because closing a bracket rescales pieces in place
    open_round: list[int] = []  # index of the first piece inside each open bracket
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _ATTENTION.finditer(caption):
        token, number = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(pieces))
        elif token == "[":
            open_square.append(len(pieces))
        elif number is not None and open_round:
            scale_from(open_round.pop(), _weight(number, caption))
        elif token == ")" and open_round:
            scale_from(open_round.pop(), ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:
            pieces.append([token, 1.0])
    for start in open_round:
        scale_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for text, weight in pieces:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]


def weighted_token_ids(tokenizer, caption: str, max_token_length: int) -> tuple[list[int], list[float]]:
    """Ids and weights of max_token_length + 2 positions: BOS, caption tokens, EOS, padding.

    Each piece is tokenized on its own (kohya and A1111 do the same), and the caption is cut to
    `max_token_length` tokens like the unweighted path's truncation. BOS, EOS and padding weigh 1.0.
    """
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in parse_prompt_attention(caption):
        piece = tokenizer(text, add_special_tokens=False).input_ids
        ids += piece
        weights += [weight] * len(piece)
    ids, weights = ids[:max_token_length], weights[:max_token_length]
    padding = max_token_length - len(ids)
    return (
        [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id, *[tokenizer.pad_token_id] * padding],
        [1.0, *weights, 1.0, *[1.0] * padding],
    )
