"""`loracraft caption edit DIR`: edit the caption files of a folder in bulk, or look at its tags.

The edits (add, remove, replace, rename, dedupe, sort, a trigger word in front) are caption/tag_edits.py's,
reading the captions as kohya's training does: `--caption_separator` between tags and the fixed part
`--keep_tokens` or `--keep_tokens_separator` marks (kohya's flags, kohya's defaults), which sort and
dedupe leave in place. `--dry_run` prints each change and writes nothing. Without an edit flag the
command only shows the folder's most frequent tags. With edits it shows, for the most frequent tags,
how many times each occurred before and after.

An image without a caption file stays without one unless `--create_missing` (then `--add` and
`--trigger` write its first caption); the summary names such images, as training would teach them only
their folder's class words.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from loracraft.caption.caption_folder import (
    CaptionChange,
    CaptionFile,
    apply_changes,
    diff_lines,
    plan_changes,
    read_caption_folder,
)
from loracraft.caption.images import relative_name
from loracraft.caption.tag_edits import TagEdits, most_frequent, split_tags, tag_count_changes, tag_counts
from loracraft.errors import UserError
from loracraft.tools.tool_parser import ToolParser, add_caption_extension_flag

# Images named in the summary line; the rest are counted.
MAX_NAMED = 5


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft caption edit",
        description="Edit the caption files beside the images of DIR in bulk (add, remove, replace, rename, "
        "dedupe, sort, a trigger word in front), leaving kohya's fixed tags in place. Without an edit "
        "flag: the folder's most frequent tags.",
    )
    parser.add_argument("train_data_dir", metavar="DIR", help="The folder of images and caption files.")
    _add_edit_flags(parser)
    _add_reading_flags(parser)
    parser.add_argument(
        "--create_missing",
        action="store_true",
        help="Give an image without a caption file one (with the --add and --trigger tags).",
    )
    parser.add_argument("--dry_run", action="store_true", help="Print each change; write nothing.")
    parser.add_argument(
        "--top", type=int, default=20, help="Tags shown with their counts before and after (0: none)."
    )
    return parser


def _add_edit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("edits (made in this order)")
    group.add_argument(
        "--replace",
        nargs=2,
        action="append",
        default=[],
        metavar=("OLD", "NEW"),
        help="Replace the text OLD anywhere in a caption with NEW (repeatable).",
    )
    group.add_argument(
        "--regex", action="store_true", help="--replace's OLD are regular expressions; NEW may use \\1."
    )
    group.add_argument(
        "--rename",
        nargs=2,
        action="append",
        default=[],
        metavar=("OLD", "NEW"),
        help="Rename the tag OLD (the whole tag) to NEW (repeatable).",
    )
    group.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="TAG",
        help="Remove a tag (repeatable, or comma separated).",
    )
    group.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="TAG",
        help="Add a tag at the end where it is missing (repeatable, or comma separated).",
    )
    group.add_argument("--trigger", metavar="WORD", help="Move (or add) this tag to the very front.")
    group.add_argument("--dedupe", action="store_true", help="Remove repeated tags, keeping the first.")
    group.add_argument("--sort", action="store_true", help="Sort the tags alphabetically.")


def _add_reading_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("how captions are read (kohya's flags)")
    add_caption_extension_flag(group)
    group.add_argument("--caption_separator", default=",", help="The text between tags.")
    group.add_argument(
        "--keep_tokens", type=int, default=0, help="The first N tags are fixed: sort and dedupe leave them."
    )
    group.add_argument(
        "--keep_tokens_separator",
        default="",
        help="Tags before this marker (e.g. '|||') are fixed, and after a second one too.",
    )
    group.add_argument("--recursive", action="store_true", help="The captions of subfolders too.")


def edits_from_args(args: argparse.Namespace) -> TagEdits:
    """The edits the flags ask for, checked (a bad value is one line naming its flag)."""
    separator = args.caption_separator

    def tags(given: list[str]) -> tuple[str, ...]:
        return (
            tuple(tag for text in given for tag in split_tags(text, separator)) if separator else tuple(given)
        )

    return TagEdits(
        add=tags(args.add),
        remove=tags(args.remove),
        replace=tuple(map(tuple, args.replace)),
        regex=args.regex,
        rename=tuple(map(tuple, args.rename)),
        dedupe=args.dedupe,
        sort=args.sort,
        trigger=args.trigger,
        separator=separator,
        keep_tokens=args.keep_tokens,
        keep_tokens_separator=args.keep_tokens_separator,
    )


def check_flags(args: argparse.Namespace) -> None:
    if args.top < 0:
        raise UserError(f"--top {args.top}: use 0 (no tag counts) or more")


def tag_lines(before: Counter[str], after: Counter[str] | None, top: int) -> list[str]:
    """The `top` most frequent tags with their counts; with `after`, before -> after and the change."""
    if not top:
        return []
    if after is None:
        rows = most_frequent(before, top)
        width = max((len(tag) for tag, _ in rows), default=0)
        header = f"most frequent tags ({len(rows)} of {len(before)}):"
        return [header] + [f"  {tag:<{width}}  {count}" for tag, count in rows]
    changes = tag_count_changes(before, after, top)
    width = max((len(tag) for tag, _, _ in changes), default=0)
    lines = [f"most frequent tags, before -> after ({len(before)} -> {len(after)} different tags):"]
    for tag, old, new in changes:
        change = f"  ({new - old:+d})" if new != old else ""
        lines.append(f"  {tag:<{width}}  {old} -> {new}{change}")
    return lines


def summary_lines(
    files: Sequence[CaptionFile], changes: Sequence[CaptionChange] | None, folder: Path, dry_run: bool
) -> list[str]:
    """How many caption files change (or would; None: a look only), and the images left without one."""
    missing = {file.caption_file for file in files if not file.exists}
    existing = len(files) - len(missing)
    if changes is None:
        lines = [f"{existing} caption files for {len(files)} images"]
    else:
        created = {change.caption_file for change in changes} & missing
        missing -= created
        lines = [f"{'would change' if dry_run else 'changed'} {len(changes) - len(created)} of {existing} caption files"]  # fmt: skip
        if created:
            lines[0] += f"; {'would create' if dry_run else 'created'} {len(created)} for images without one"
    without = [relative_name(file.image, folder) for file in files if file.caption_file in missing]
    if without:
        more = f" and {len(without) - MAX_NAMED} more" if len(without) > MAX_NAMED else ""
        lines.append(
            f"no caption file for {len(without)} of {len(files)} images ({', '.join(without[:MAX_NAMED])}{more}); "
            "--create_missing with --add or --trigger writes one"
        )
    return lines


def main(argv: list[str], echo: Callable[[str], object] = print) -> int:
    args = make_parser().parse_args(argv)
    check_flags(args)
    edits = edits_from_args(args)
    folder = Path(args.train_data_dir)
    files = read_caption_folder(folder, args.caption_extension, args.recursive)
    if not files:
        raise UserError(
            f"{folder} has no images" + ("" if args.recursive else " (add --recursive for subfolders)")
        )
    texts = {file.caption_file: file.text for file in files}
    before = tag_counts(texts.values(), edits.separator, edits.keep_tokens_separator)
    if edits.is_empty():
        for line in [*tag_lines(before, None, args.top), *summary_lines(files, None, folder, False)]:
            echo(line)
        return 0
    changes = plan_changes(files, edits, args.create_missing)
    texts.update((change.caption_file, change.after) for change in changes)
    after = tag_counts(texts.values(), edits.separator, edits.keep_tokens_separator)
    if args.dry_run:
        for line in diff_lines(changes, folder):
            echo(line)
    else:
        apply_changes(changes)
    for line in [*tag_lines(before, after, args.top), *summary_lines(files, changes, folder, args.dry_run)]:
        echo(line)
    return 0
