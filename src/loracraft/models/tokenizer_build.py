"""Build a small but real CLIP BPE tokenizer (vocab.json + merges.txt) in which chosen words are one token.

The vocabulary holds every byte-level character with and without CLIP's end-of-word mark `</w>`, so any
text still tokenizes (into characters), then one token per merge, then `<|startoftext|>` and
`<|endoftext|>` last, as in CLIP (whose EOS is the largest id; CLIPTextModel's legacy pooling relies on
that). Words are cut the way CLIP cuts text (runs of letters, single digits, runs of other symbols), so
"sks1" is two tokens here as it is in CLIP.
"""

import json
import os
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import regex

from loracraft.atomic import write_text_atomic

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_LENGTH = 77
# CLIP's pre-tokenizer: the pieces BPE runs on.
_PIECES = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


@cache
def byte_characters() -> tuple[str, ...]:
    """GPT-2/CLIP's printable stand-in for each byte 0..255, so BPE never sees whitespace or control bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return tuple(table[byte] for byte in range(256))


def _symbols(piece: str) -> list[str]:
    """A pre-tokenized piece as BPE's starting symbols: byte characters, the last one marked `</w>`."""
    characters = byte_characters()
    symbols = [characters[byte] for byte in piece.encode("utf-8")]
    symbols[-1] += END_OF_WORD
    return symbols


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: repeatedly join every occurrence of the adjacent pair with the lowest merge rank."""
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:], strict=False) if (a, b) in ranks}
        if not pairs:
            break
        best = min(pairs, key=ranks.__getitem__)
        joined, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                joined.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                joined.append(symbols[i])
                i += 1
        symbols = joined
    return symbols


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges that make each piece of each word a single token.

    A new merge only ever joins two tokens that no earlier merge could join and gets the highest rank,
    so words already reduced to one token stay that way: BPE only reaches the new rank when stuck.
    """
    ranks: dict[tuple[str, str], int] = {}
    pieces = dict.fromkeys(piece for word in words for piece in _PIECES.findall(word.lower()))
    for piece in pieces:
        symbols = _apply_merges(_symbols(piece), ranks)
        while len(symbols) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            symbols = _apply_merges(symbols, ranks)
    return list(ranks)


def build_clip_tokenizer(words: Iterable[str], out_dir: str | os.PathLike) -> Path:
    """Write a CLIP tokenizer to `out_dir` that `CLIPTokenizer.from_pretrained(out_dir)` loads offline."""
    out_dir = Path(out_dir)
    merges = learn_merges(words)
    characters = byte_characters()
    # Two merges can spell the same token ("ab"+"c", "a"+"bc"); ids must stay dense.
    tokens = dict.fromkeys(
        [*characters, *(c + END_OF_WORD for c in characters), *(a + b for a, b in merges), BOS, EOS]
    )
    vocab = {token: index for index, token in enumerate(tokens)}
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    tokenizer_config = {
        **specials,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    write_text_atomic(out_dir / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    write_text_atomic(out_dir / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    write_text_atomic(out_dir / "special_tokens_map.json", json.dumps(specials, indent=2))
    write_text_atomic(out_dir / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2))
    return out_dir
