"""Bulk edits of a caption's tags: add, remove, replace, rename, dedupe, sort and a trigger word in front.

A caption is a list of tags between separators (kohya's `caption_separator`, "," by default); a caption
without a separator (a sentence) is one tag. A caption file with several lines (kohya's
`--enable_wildcard` draws one per step) has each line edited on its own; blank lines stay as they are.

The edits respect what kohya's `process_caption` keeps fixed when it shuffles (reference §4.5):
- With `keep_tokens_separator` ("|||") in a line, the text before it is fixed, the text after it is
  flexible, and after a second marker a fixed suffix follows. Every marker stays where it was: the text
  between markers is edited part by part, so even `--replace` never touches a marker.
- Otherwise the first `keep_tokens` tags are fixed.
`sort` and `dedupe` reorder and drop flexible tags only (a flexible tag that repeats a fixed one is the
duplicate dropped). The trigger word is moved to, or added at, the very front, the front of the fixed
part, so `keep_tokens 1` keeps it there; the tags that were fixed stay right behind it (a trigger that
was not among the first `keep_tokens` tags is one more to keep: train with `--keep_tokens` one higher). Added tags go to
the end of the flexible part, before a fixed suffix.

The steps run in one order: replace (text anywhere in a part), rename (whole tags), remove (whole tags),
add (when missing), trigger, dedupe, sort. So a tag renamed to one the caption has already leaves one
of them after `dedupe`. A line whose tags an edit leaves as they were keeps its text byte for byte (its
spacing, a trailing separator), so only captions that really change are rewritten.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from loracraft.data.captions import split_tags as _split_tags
from loracraft.errors import UserError


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """The tags of one caption line, stripped, without the empty ones doubled separators leave."""
    return _split_tags(caption, separator)


def join_tags(tags: Sequence[str], separator: str = ",") -> str:
    """The tags between separators followed by a space (", "), as kohya's taggers write them."""
    joiner = separator.rstrip() + " " if separator.strip() else separator
    return joiner.join(tags)


@dataclass(frozen=True)
class TagEdits:
    """What to change in every caption; values are checked when made (a bad one is a UserError naming
    its flag)."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    regex: bool = False
    rename: tuple[tuple[str, str], ...] = ()
    dedupe: bool = False
    sort: bool = False
    trigger: str | None = None
    separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""

    def __post_init__(self) -> None:
        if not self.separator:
            raise UserError("--caption_separator is empty; give the text between tags, e.g. ','")
        if self.keep_tokens < 0:
            raise UserError(f"--keep_tokens {self.keep_tokens}: use 0 or more")
        if self.keep_tokens_separator and self.keep_tokens_separator in self.separator:
            raise UserError(
                f"--keep_tokens_separator {self.keep_tokens_separator!r} is part of --caption_separator "
                f"{self.separator!r}; use a marker of its own, e.g. '|||'"
            )
        for old, new in self.replace:
            _check_replacement(old, new, self.regex)
        for old, _new in self.rename:
            if not old.strip():
                raise UserError("--rename: the tag to rename is empty; give the tag as it is in the captions")
        tags = {
            "--add": self.add,
            "--remove": self.remove,
            "--trigger": (self.trigger,) if self.trigger else (),
        }
        for flag, given in tags.items():
            for tag in given:
                if split_tags(tag, self.separator) != [tag.strip()]:
                    raise UserError(
                        f"{flag} {tag!r}: one tag each, without {self.separator!r}; repeat {flag} for more"
                    )

    def is_empty(self) -> bool:
        """Whether these edits change nothing (only say how captions are read)."""
        return not (
            self.add or self.remove or self.replace or self.rename or self.dedupe or self.sort or self.trigger
        )


def _check_replacement(old: str, new: str, regex: bool) -> None:
    if not old:
        raise UserError("--replace: the text to replace is empty; give the text as it is in the captions")
    if not regex:
        return
    try:
        # Substituting into "" compiles the template too, so a bad group reference (\2 of one group)
        # is found now and not in the middle of a folder.
        re.compile(old).sub(new, "")
    except re.error as error:
        raise UserError(f"--replace {old!r} {new!r}: not a valid regular expression ({error})") from None


def edit_caption(caption: str, edits: TagEdits) -> str:
    """The caption with `edits` made on each of its lines (line endings kept); an empty caption is edited
    as one empty line, so `add` and `trigger` give it tags."""
    chunks = caption.splitlines(keepends=True) or [""]
    has_text = any(chunk.strip() for chunk in chunks)
    edited = []
    for index, chunk in enumerate(chunks):
        content = (chunk.splitlines() or [""])[0]
        ending = chunk[len(content) :]
        if content.strip() or (not has_text and index == 0):
            content = _edit_line(content, edits)
        edited.append(content + ending)
    return "".join(edited)


def _edit_line(line: str, edits: TagEdits) -> str:
    marker = edits.keep_tokens_separator
    if marker and marker in line:
        # kohya: before the first marker fixed, then flexible, after the second a fixed suffix.
        parts = [_replaced(part, edits) for part in line.split(marker)]
        before = [split_tags(part, edits.separator) for part in parts]
        fixed, flexible, *suffix = before
        after = _edited_tags(fixed, flexible, suffix, edits)
        last = len(parts) - 1
        return marker.join(
            _rejoined(part, old, new, edits.separator, index > 0, index < last)
            for index, (part, old, new) in enumerate(zip(parts, before, after, strict=True))
        )
    text = _replaced(line, edits)
    tags = split_tags(text, edits.separator)
    fixed, flexible = tags[: edits.keep_tokens], tags[edits.keep_tokens :]
    new_fixed, new_flexible = _edited_tags(fixed, flexible, [], edits)
    return _rejoined(text, tags, new_fixed + new_flexible, edits.separator, False, False)


def _replaced(text: str, edits: TagEdits) -> str:
    for old, new in edits.replace:
        text = re.sub(old, new, text) if edits.regex else text.replace(old, new)
    return text


def _edited_tags(
    fixed: list[str], flexible: list[str], suffix: list[list[str]], edits: TagEdits
) -> list[list[str]]:
    """[fixed, flexible, *suffix] after the tag edits, in the order the module docstring gives."""
    renames = dict(edits.rename)
    removed = set(edits.remove)
    parts = [
        [renames.get(tag, tag) for tag in part if renames.get(tag, tag) not in removed]
        for part in (fixed, flexible, *suffix)
    ]
    present = {tag for part in parts for tag in part}
    for tag in dict.fromkeys(tag.strip() for tag in edits.add):
        if tag not in present:
            parts[1].append(tag)
            present.add(tag)
    if edits.trigger:
        trigger = edits.trigger.strip()
        parts = [[tag for tag in part if tag != trigger] for part in parts]
        parts[0].insert(0, trigger)
    if edits.dedupe:
        fixed_tags = {tag for index, part in enumerate(parts) if index != 1 for tag in part}
        parts[1] = [tag for tag in dict.fromkeys(parts[1]) if tag not in fixed_tags]
    if edits.sort:
        parts[1] = sorted(parts[1], key=str.casefold)
    return parts


def _rejoined(
    text: str, old: list[str], new: list[str], separator: str, after_marker: bool, before_marker: bool
) -> str:
    """The text of a part holding `new` tags where it held `old` ones: unchanged when they are the same,
    else the new tags joined, with the part's leading and trailing separators and spaces kept ("sks, "
    before a marker); a part that was empty gets a space on each side that touches a marker."""
    if old == new:
        return text
    if old:
        around = rf"(?:\s|{re.escape(separator)})*"
        lead = re.match(around, text).group(0)
        trail = re.search(around + r"\Z", text).group(0)
    else:
        lead, trail = (" " if after_marker else ""), (" " if before_marker else "")
    return lead + join_tags(new, separator) + trail


def tag_counts(
    captions: Iterable[str], separator: str = ",", keep_tokens_separator: str = ""
) -> collections.Counter[str]:
    """How often each tag occurs in `captions` (every line of each, every occurrence), the
    `keep_tokens_separator` marker not being part of any tag."""
    counts: collections.Counter[str] = collections.Counter()
    for caption in captions:
        for line in caption.splitlines():
            parts = line.split(keep_tokens_separator) if keep_tokens_separator else [line]
            for part in parts:
                counts.update(split_tags(part, separator))
    return counts


def most_frequent(counts: collections.Counter[str], top: int) -> list[tuple[str, int]]:
    """The `top` most frequent tags with their counts, tags as frequent in name order."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]


def tag_count_changes(
    before: collections.Counter[str], after: collections.Counter[str], top: int
) -> list[tuple[str, int, int]]:
    """(tag, count before, count after) for the `top` most frequent tags before and the `top` after,
    most frequent after first, then most frequent before, then by name."""
    tags = {tag for tag, _ in most_frequent(before, top)} | {tag for tag, _ in most_frequent(after, top)}
    rows = [(tag, before[tag], after[tag]) for tag in tags]
    return sorted(rows, key=lambda row: (-row[2], -row[1], row[0]))
