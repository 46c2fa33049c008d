"""From a WD14 tagger's scores to the caption line kohya writes: which tags, under which names, in what order.

This is the post-processing of kohya's `finetune/tag_images_by_wd14_tagger.py` for SmilingWolf's taggers
(their `selected_tags.csv` lists each tag with a category: 9 rating, 0 general, 4 character):

- Names first, once for the tag list: `--character_tag_expand` splits a character's trailing
  `_(series)` into a tag of its own (`chara_name_(series)` -> `chara_name, series`, one entry joined with
  `--caption_separator`), `--remove_underscore` writes spaces for underscores in tags longer than three
  characters (so kaomoji like `^_^` and `x_x` stay as they are), then `--tag_replacement` renames tags.
- Per image: a general tag is written when its score reaches `--general_threshold`, a character tag
  `--character_threshold` (both `--thresh` unless given), unless its name is one of `--undesired_tags`.
  Tags keep the tag list's order (not the score's); `--character_tags_first` moves each character found
  to the front in turn, so the characters end up in reverse list order. With `--use_rating_tags` the
  rating with the highest score goes first (`--use_rating_tags_as_last_tag`: last). Then each of
  `--always_first_tags`, in turn, is moved to the front when the image has it: the last one listed ends
  up first.

Where we differ from kohya on purpose: `--always_first_tags "1girl, solo"` matches ` solo` without its
space (kohya compares the untrimmed piece and silently misses it); and `--tag_replacement` works as it
did up to kohya's commit c6bc632e (since then its SmilingWolf path ignores the option).
`tests/data/kohya_wd14_tags.json` holds kohya's own captions for these rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from loracraft.errors import UserError

RATING = 9
GENERAL = 0
CHARACTER = 4
# Tags this short are kaomoji (`^_^`, `>_<`, `x_x`) whose underscores are part of the face.
_KAOMOJI_LENGTH = 3
# kohya's stand-ins for an escaped `\,` and `\;` while a replacement list is split.
_COMMA, _SEMICOLON = "@@@@", "####"


@dataclass(frozen=True)
class TagRules:
    """What kohya's tagger flags ask of each image's tags (names already final)."""

    general_threshold: float = 0.35
    character_threshold: float = 0.35
    undesired: frozenset[str] = frozenset()
    always_first: tuple[str, ...] = ()
    rating_first: bool = False
    rating_last: bool = False
    characters_first: bool = False
    separator: str = ", "


@dataclass(frozen=True)
class ImageTags:
    """One image's tags: the caption's list in kohya's order, and what was found in each category."""

    tags: list[str]
    rating: str | None
    characters: list[str]
    generals: list[str]

    def counted(self) -> list[str]:
        """The tags written, in the order kohya counts them for `--frequency_tags`."""
        return self.generals + self.characters + ([self.rating] if self.rating else [])


def split_tag_list(text: str, separator: str) -> list[str]:
    """A tag list typed on the command line, split on the separator without its spaces, each tag trimmed."""
    split_on = separator.strip() or separator
    return [tag.strip() for tag in text.split(split_on) if tag.strip()]


def parse_tag_replacement(text: str) -> list[tuple[str, str]]:
    """`--tag_replacement 'a,b;c\\,d,e'` -> [(a, b), ("c,d", e)]: pairs split on `;`, source from target on
    `,`; a backslash keeps a `,` or `;` inside a tag."""
    escaped = text.replace("\\,", _COMMA).replace("\\;", _SEMICOLON)
    pairs = []
    for pair in escaped.split(";"):
        parts = pair.split(",")
        if len(parts) != 2:
            raise UserError(
                f"--tag_replacement {text}: write source,target pairs separated by ; "
                "(a , or ; inside a tag written as \\, or \\;)"
            )
        source, target = (part.replace(_COMMA, ",").replace(_SEMICOLON, ";") for part in parts)
        pairs.append((source, target))
    return pairs


def expand_character_tag(tag: str, separator: str) -> str:
    """`chara_name_(series)` -> `chara_name<separator>series`; `name_(costume)_(series)` keeps the costume."""
    if not tag.endswith(")"):
        return tag
    *name_parts, series = tag.split("(")
    name = "(".join(name_parts)
    return name.removesuffix("_") + separator + series.replace(")", "")


def without_underscores(tag: str) -> str:
    return tag if len(tag) <= _KAOMOJI_LENGTH else tag.replace("_", " ")


def output_names(
    names: Sequence[str],
    categories: Sequence[int],
    *,
    expand_characters: bool = False,
    remove_underscore: bool = False,
    replacements: Sequence[tuple[str, str]] = (),
    separator: str = ", ",
) -> list[str]:
    """The tag list's names as captions write them, in kohya's order of changes."""
    final = list(names)
    if expand_characters:
        final = [
            expand_character_tag(name, separator) if category == CHARACTER else name
            for name, category in zip(final, categories, strict=True)
        ]
    if remove_underscore:
        final = [without_underscores(name) for name in final]
    for source, target in replacements:
        _replace_first(final, categories, source, target)
    return final


def _replace_first(names: list[str], categories: Sequence[int], source: str, target: str) -> None:
    """kohya renames one tag per pair: the first general tag so named, else character, else rating."""
    for wanted in (GENERAL, CHARACTER, RATING):
        for index, (name, category) in enumerate(zip(names, categories, strict=True)):
            if name == source and _group(category) == wanted:
                names[index] = target
                return


def _group(category: int) -> int:
    """Rating and character tags are theirs; every other category is tagged as a general tag."""
    return category if category in (RATING, CHARACTER) else GENERAL


def select_tags(
    scores: Sequence[float], names: Sequence[str], categories: Sequence[int], rules: TagRules
) -> ImageTags:
    """The tags one image's scores earn under `rules`, in the order kohya writes them."""
    tags: list[str] = []
    generals: list[str] = []
    characters: list[str] = []
    for score, name, category in zip(scores, names, categories, strict=True):
        group = _group(category)
        if group == RATING or name in rules.undesired:
            continue
        if group == CHARACTER and score >= rules.character_threshold:
            characters.append(name)
            tags.insert(0 if rules.characters_first else len(tags), name)
        elif group == GENERAL and score >= rules.general_threshold:
            generals.append(name)
            tags.append(name)
    rating = _rating(scores, names, categories, rules)
    if rating is not None:
        tags.insert(0 if rules.rating_first else len(tags), rating)
    for tag in rules.always_first:
        if tag in tags:
            tags.remove(tag)
            tags.insert(0, tag)
    return ImageTags(tags, rating, characters, generals)


def _rating(
    scores: Sequence[float], names: Sequence[str], categories: Sequence[int], rules: TagRules
) -> str | None:
    """The rating scored highest (the first of equals), when a rating flag asks for it and it is wanted."""
    if not (rules.rating_first or rules.rating_last):
        return None
    ratings = [
        (score, name)
        for score, name, category in zip(scores, names, categories, strict=True)
        if category == RATING
    ]
    if not ratings:
        return None
    best = max(ratings, key=lambda rating: rating[0])[1]
    return None if best in rules.undesired else best


def frequency_lines(counts: Counter[str]) -> list[str]:
    """kohya's `--frequency_tags` table: most frequent first, equals in the order first written."""
    return ["Tag frequencies:", *(f"{tag}: {count}" for tag, count in counts.most_common())]
