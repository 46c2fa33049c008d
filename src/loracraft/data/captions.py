"""kohya's per-sample caption transforms: prefix/suffix, dropout, wildcards, keep/shuffle/drop tags.

`process_caption` runs them in kohya's order (`BaseDataset.process_caption`, reference §4.5). Every step
is a pure function and all randomness comes from the `random.Random` the caller passes, so the dataset
can seed one per (sample, epoch) and get the same captions on every run and every worker.

Where kohya has a trap we keep its options and fix the result:
- A multi-line caption has its line chosen first and prefix/suffix put around that line; kohya adds them
  to the whole file first, so the suffix only survives when the last line is drawn. Empty lines are never
  drawn (kohya can draw the empty line after a trailing newline and train on a bare prefix).
- Empty tags (from doubled or trailing separators) are dropped before `keep_tokens` counts; kohya keeps
  them on the `keep_tokens` path, so "a,,b" with keep_tokens 2 fixes "a" and "" and trains on "a, , b".
- The `keep_tokens_separator` marker never reaches the text encoder: a caption holding it is split into
  tags even without shuffle or tag dropout (kohya then leaves "|||" in the text), and a third or later
  marker separates suffix tags instead of staying inside one.
- Prefix, caption and suffix are joined with one space and no space is added next to an empty part.
- Token warm-up (`token_warmup_min/step`) counts a sample's step from its batch's place in the run
  (`CaptionMoment`); kohya reads a shared counter that data-loader workers see late by their prefetch,
  so its captions depend on the number of workers.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from loracraft.config.subset_options import SubsetOptions

# kohya joins the tags back with ", " whatever `caption_separator` is; we keep that so captions and the
# tags they teach stay identical to kohya's.
TAG_JOINER = ", "

# `{{` and `}}` are literal braces; `{a|b|c}` (no braces inside) is a wildcard. One left-to-right scan
# handles both, so an escape can never be mistaken for part of a wildcard.
_WILDCARD = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")


def drops_whole_caption(options: SubsetOptions, rng: random.Random, epoch: int) -> bool:
    """kohya's caption dropout: by chance, or on every epoch divisible by `caption_dropout_every_n_epochs`.

    `epoch` counts from 1 like kohya's `current_epoch`, so N = 2 drops captions in epochs 2, 4, 6...
    The rng is only drawn from when the rate is set, so turning dropout off leaves later draws unchanged.
    """
    by_chance = options.caption_dropout_rate > 0 and rng.random() < options.caption_dropout_rate
    every_n = options.caption_dropout_every_n_epochs
    return by_chance or (every_n > 0 and epoch % every_n == 0)


def first_line(caption: str) -> str:
    """kohya trains on the first line of a caption unless wildcards are enabled."""
    lines = caption.splitlines()
    return lines[0] if lines else ""


def random_line(caption: str, rng: random.Random) -> str:
    """One line of a multi-line caption drawn at random, never an empty one."""
    lines = [line for line in caption.splitlines() if line.strip()]
    return rng.choice(lines) if lines else ""


def add_prefix_suffix(caption: str, prefix: str | None, suffix: str | None) -> str:
    """`prefix caption suffix`, joined with single spaces; missing or empty parts add no space."""
    return " ".join(part for part in (prefix, caption, suffix) if part)


def expand_wildcards(caption: str, rng: random.Random) -> str:
    """Each `{a|b|c}` becomes one of its choices at random; `{{` and `}}` become literal braces."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(0)[0]
        return rng.choice(match.group(1).split("|"))

    return _WILDCARD.sub(replace, caption)


def split_tags(text: str, separator: str) -> list[str]:
    """Tags between separators, stripped, without the empty ones doubled or trailing separators leave."""
    return [tag for tag in (piece.strip() for piece in text.split(separator)) if tag]


def partition_tags(caption: str, options: SubsetOptions) -> tuple[list[str], list[str], list[str]]:
    """(fixed, flexible, fixed suffix) tags.

    With `keep_tokens_separator` in the caption, tags before its first occurrence are fixed, tags between
    the first and second are flexible and tags after the second stay fixed at the end. Otherwise the first
    `keep_tokens` tags are fixed and the rest are flexible.
    """
    marker = options.keep_tokens_separator
    separator = options.caption_separator
    if marker and marker in caption:
        fixed, flexible, *suffix = caption.split(marker)
        suffix_tags = [tag for part in suffix for tag in split_tags(part, separator)]
        return split_tags(fixed, separator), split_tags(flexible, separator), suffix_tags
    tags = split_tags(caption, separator)
    return tags[: options.keep_tokens], tags[options.keep_tokens :], []


def shuffle_tags(tags: list[str], rng: random.Random) -> list[str]:
    shuffled = list(tags)
    rng.shuffle(shuffled)
    return shuffled


def drop_tags(tags: list[str], rate: float, rng: random.Random) -> list[str]:
    """Each tag survives with probability 1 - rate (kohya's `random() >= rate`); rate 0 draws nothing."""
    if rate <= 0:
        return list(tags)
    return [tag for tag in tags if rng.random() >= rate]


def warmup_end_step(token_warmup_step: float, max_train_steps: int) -> int:
    """The step by which captions have all their tags: whole steps, or below 1 a share of all steps."""
    return (
        math.floor(token_warmup_step * max_train_steps) if token_warmup_step < 1 else int(token_warmup_step)
    )


def warmed_up_tags(tags: list[str], warmup_min: int, end_step: int, step: int) -> list[str]:
    """kohya's token warm-up: before `end_step`, the first floor(step * (n - min) / end) + min of the n
    flexible tags; all of them from `end_step` on (and without a warm-up, end_step 0)."""
    if not end_step or step >= end_step:
        return tags
    return tags[: math.floor(step * (len(tags) - warmup_min) / end_step) + warmup_min]


@dataclass(frozen=True)
class CaptionMoment:
    """Where in the run a sample is drawn: its epoch (from 1, as kohya's `current_epoch`), the optimizer
    steps done before its batch, and the run's total (token warm-up's ratio is a share of it)."""

    epoch: int = 1
    step: int = 0
    max_train_steps: int = 0


def process_caption(caption: str, options: SubsetOptions, rng: random.Random, moment: CaptionMoment) -> str:
    """The caption a sample is trained on at `moment`."""
    if drops_whole_caption(options, rng, moment.epoch):
        return ""
    line = random_line(caption, rng) if options.enable_wildcard else first_line(caption)
    caption = add_prefix_suffix(line, options.caption_prefix, options.caption_suffix)
    if options.enable_wildcard:
        caption = expand_wildcards(caption, rng)
    marker = options.keep_tokens_separator
    warmup_end = warmup_end_step(options.token_warmup_step, moment.max_train_steps)
    if (
        options.shuffle_caption
        or options.caption_tag_dropout_rate > 0
        or warmup_end > 0
        or (marker and marker in caption)
    ):
        fixed, flexible, fixed_suffix = partition_tags(caption, options)
        flexible = warmed_up_tags(flexible, options.token_warmup_min, warmup_end, moment.step)
        if options.shuffle_caption:
            flexible = shuffle_tags(flexible, rng)
        flexible = drop_tags(flexible, options.caption_tag_dropout_rate, rng)
        caption = TAG_JOINER.join(fixed + flexible + fixed_suffix)
    if options.secondary_separator:
        caption = caption.replace(options.secondary_separator, options.caption_separator)
    return caption
