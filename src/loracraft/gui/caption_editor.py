"""The caption editor: a folder's images beside their captions, edited one by one or all shown at once.

A folder is loaded as caption/caption_folder.py reads it for `loracraft caption edit` (each image's
`<stem><caption_extension>`, kohya's `--caption_separator` and `--keep_tokens_separator`). The images
shown can be narrowed by a search (text in the caption or the file name) and by a tag the caption has
or lacks. One image at a time is shown large, its caption as text and as tags (caption/tag_edits.py
removes and adds a tag, so kohya's fixed parts stay where they are).

Saving: moving to another image (Next, Previous, their keys, a click in the gallery, a new filter, a bulk
edit) saves the caption edited in the box; Save writes it at once. Each save and each bulk edit applied
is a step that Undo takes back (the files get their text before it; a file the step created is
removed), the last `UNDO_STEPS` of them. Bulk edits (`caption edit`'s operations) apply to the images
shown: Preview lists each caption file that changes, before and after, and writes nothing; Apply writes
exactly what the preview showed (refused when the edits or the captions changed since: preview again).

Nothing the user wrote is lost: every file is written atomically, and a caption file changed on disk
since the folder was loaded (by another editor, a caption job) is never overwritten: the save is refused
in one line and the text stays in the box. Errors are one status line, never a traceback.

The state is `EditorState` (the page keeps it in a gr.State) and plain functions of it, tested without a
browser; caption_editor_view.py lays out and connects the components.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loracraft.caption.caption_folder import (
    CaptionChange,
    CaptionFile,
    apply_changes,
    diff_lines,
    plan_changes,
    read_caption_folder,
)
from loracraft.caption.images import checked_caption_extension, relative_name
from loracraft.caption.tag_edits import TagEdits, edit_caption, split_tags, tag_counts
from loracraft.errors import UserError
from loracraft.tools.caption_edit import summary_lines

UNDO_STEPS = 10
TOP_TAGS = 30
HAS_TAG = "has the tag"
LACKS_TAG = "lacks the tag"
NO_FOLDER = "Give a folder of images and press Load."


@dataclass(frozen=True)
class CaptionFilter:
    """Which images are shown: `search` in the caption or the file name (any case), and `tag` among the
    caption's tags (or, with `lacks`, not among them). Empty: no condition."""

    search: str = ""
    tag: str = ""
    lacks: bool = False


@dataclass(frozen=True)
class UndoStep:
    """A save or a bulk edit as written; `created` are the caption files it made."""

    description: str
    changes: tuple[CaptionChange, ...]
    created: frozenset[Path] = frozenset()


@dataclass(frozen=True)
class EditorState:
    """The loaded folder: its caption files as last read or written, the filter and the images it shows
    (indices into `files`), the shown image at `position` and the steps Undo can take back."""

    folder: Path | None = None
    separator: str = ","
    keep_tokens_separator: str = ""
    files: tuple[CaptionFile, ...] = ()
    caption_filter: CaptionFilter = field(default_factory=CaptionFilter)
    shown: tuple[int, ...] = ()
    position: int = 0
    undo_steps: tuple[UndoStep, ...] = ()

    @property
    def current(self) -> CaptionFile | None:
        return self.files[self.shown[self.position]] if self.shown else None

    def name(self, file: CaptionFile) -> str:
        return relative_name(file.image, self.folder) if self.folder else str(file.image)


@dataclass(frozen=True)
class BulkPlan:
    """A previewed bulk edit: the edits and the caption files they change, as Apply will write them."""

    edits: TagEdits
    create_missing: bool
    changes: tuple[CaptionChange, ...]


def load_folder(
    folder: str,
    caption_extension: str = ".txt",
    recursive: bool = False,
    separator: str = ",",
    keep_tokens_separator: str = "",
    caption_filter: CaptionFilter | None = None,
) -> EditorState:
    """The folder's images and captions, read as `caption edit` reads them; a bad value is one line."""
    if not folder.strip():
        raise UserError("give the folder of images whose captions to edit")
    checked_caption_extension(caption_extension)
    TagEdits(separator=separator, keep_tokens_separator=keep_tokens_separator)  # checks both, in one line
    files = read_caption_folder(Path(folder.strip()), caption_extension, recursive)
    state = EditorState(Path(folder.strip()), separator, keep_tokens_separator, tuple(files))
    return with_filter(state, caption_filter or CaptionFilter())


def caption_tags(text: str, separator: str = ",", keep_tokens_separator: str = "") -> list[str]:
    """The caption's tags in order, each once (every line, each part between keep_tokens markers)."""
    return list(tag_counts([text], separator, keep_tokens_separator))


def with_filter(state: EditorState, caption_filter: CaptionFilter) -> EditorState:
    """The images `caption_filter` shows, staying on the current image when it is still shown."""
    shown = tuple(index for index, file in enumerate(state.files) if _matches(state, file, caption_filter))
    current = state.shown[state.position] if state.shown else None
    position = shown.index(current) if current in shown else 0
    return replace(state, caption_filter=caption_filter, shown=shown, position=position)


def _matches(state: EditorState, file: CaptionFile, caption_filter: CaptionFilter) -> bool:
    search = caption_filter.search.strip().casefold()
    if search and search not in file.text.casefold() and search not in state.name(file).casefold():
        return False
    tag = caption_filter.tag.strip()
    if not tag:
        return True
    has_tag = tag in caption_tags(file.text, state.separator, state.keep_tokens_separator)
    return has_tag != caption_filter.lacks


def shown_text(text: str) -> str:
    """A caption file's text as the box shows it: line breaks as "\\n", without the final ones."""
    return text.replace("\r\n", "\n").rstrip("\n")


def is_edited(file: CaptionFile, box: str) -> bool:
    """Whether the box holds other text than the file (its line breaks and final newline aside)."""
    return shown_text(box) != shown_text(file.text)


def file_text(box: str, file: CaptionFile) -> str:
    """The box's text as the caption file's new text, with the file's line breaks and final newline
    (a new file ends with one newline, as `caption edit` writes it)."""
    body = shown_text(box)
    if not body:
        return ""
    if not file.exists:
        return body + "\n"
    newline = "\r\n" if "\r\n" in file.text else "\n"
    ending = file.text[len(file.text.rstrip("\r\n")) :]
    return body.replace("\n", newline) + ending


def save_caption(state: EditorState, box: str) -> EditorState:
    """Write the box's text as the current image's caption when it was edited (an undo step)."""
    file = state.current
    if file is None or not is_edited(file, box):
        return state
    change = CaptionChange(file.caption_file, file.text, file_text(box, file))
    return _written(state, (change,), f"the caption of {state.name(file)}")


def _written(state: EditorState, changes: tuple[CaptionChange, ...], description: str) -> EditorState:
    """Write `changes` (refused in one line, nothing written, for a file changed on disk) and remember
    them as an undo step."""
    apply_changes(changes)
    missing = {file.caption_file for file in state.files if not file.exists}
    step = UndoStep(description, changes, frozenset(change.caption_file for change in changes) & missing)
    after = {change.caption_file: change.after for change in changes}
    files = tuple(
        replace(file, text=after[file.caption_file], exists=True) if file.caption_file in after else file
        for file in state.files
    )
    return replace(state, files=files, undo_steps=(*state.undo_steps, step)[-UNDO_STEPS:])


def go_to(state: EditorState, box: str, position: int) -> EditorState:
    """Save the box, then show the image at `position` among those shown (kept within them)."""
    state = save_caption(state, box)
    if not state.shown:
        return state
    return replace(state, position=min(max(position, 0), len(state.shown) - 1))


def move(state: EditorState, box: str, step: int) -> EditorState:
    """Save the box, then show the next (`step` 1) or previous (-1) image; the ends stay where they are."""
    return go_to(state, box, state.position + step)


def undo(state: EditorState) -> EditorState:
    """Give the files of the last step their text before it (atomically; refused in one line when one
    changed on disk since) and remove the caption files it created."""
    if not state.undo_steps:
        raise UserError("nothing to undo: no caption was saved or edited in bulk since the folder was loaded")
    step = state.undo_steps[-1]
    apply_changes(
        [CaptionChange(change.caption_file, change.after, change.before) for change in step.changes]
    )
    for created in step.created:
        created.unlink(missing_ok=True)
    before = {change.caption_file: change.before for change in step.changes}
    files = tuple(
        replace(file, text=before[file.caption_file], exists=file.caption_file not in step.created)
        if file.caption_file in before
        else file
        for file in state.files
    )
    return replace(state, files=files, undo_steps=state.undo_steps[:-1])


def bulk_edits(
    state: EditorState,
    add: str = "",
    remove: str = "",
    replace_old: str = "",
    replace_new: str = "",
    regex: bool = False,
    rename_old: str = "",
    rename_new: str = "",
    trigger: str = "",
    dedupe: bool = False,
    sort: bool = False,
    keep_tokens: float | None = 0,
) -> TagEdits:
    """The bulk edit the form asks for (tags separated as in the captions), checked in one line."""

    def tags(text: str) -> tuple[str, ...]:
        return tuple(split_tags(text, state.separator))

    return TagEdits(
        add=tags(add),
        remove=tags(remove),
        replace=((replace_old, replace_new),) if replace_old or replace_new else (),
        regex=regex,
        rename=((rename_old.strip(), rename_new.strip()),)
        if rename_old.strip() or rename_new.strip()
        else (),
        dedupe=dedupe,
        sort=sort,
        trigger=trigger.strip() or None,
        separator=state.separator,
        keep_tokens=int(keep_tokens or 0),
        keep_tokens_separator=state.keep_tokens_separator,
    )


def plan_bulk(state: EditorState, edits: TagEdits, create_missing: bool = False) -> BulkPlan:
    """The caption files of the shown images that `edits` change, with their new text."""
    if edits.is_empty():
        raise UserError("no bulk edit given: fill in what to add, remove, replace or rename, or tick one")
    shown = [state.files[index] for index in state.shown]
    return BulkPlan(edits, create_missing, tuple(plan_changes(shown, edits, create_missing)))


def plan_report(state: EditorState, plan: BulkPlan, applied: bool = False) -> str:
    """How many caption files change (or, `applied`, changed), then each one's lines before (-) and after
    (+); `state` as it was when the plan was made."""
    shown = [state.files[index] for index in state.shown]
    folder = state.folder or Path()
    summary = summary_lines(shown, plan.changes, folder, dry_run=not applied)
    return "\n".join([*summary, "", *diff_lines(plan.changes, folder)])


def apply_bulk(
    state: EditorState, previewed: BulkPlan | None, edits: TagEdits, create_missing: bool
) -> EditorState:
    """Write the previewed plan; refused in one line when the edits asked now, or the captions shown,
    would give other changes than the preview showed."""
    if previewed is None:
        raise UserError("press Preview first: Apply writes the changes the preview shows")
    plan = plan_bulk(state, edits, create_missing)
    if plan != previewed:
        raise UserError("the edits or the captions shown changed since the preview: press Preview again")
    if not plan.changes:
        raise UserError("the preview changes no caption file: nothing to apply")
    state = _written(state, plan.changes, f"the bulk edit of {len(plan.changes)} caption files")
    return with_filter(state, state.caption_filter)


def top_tags(state: EditorState, count: int = TOP_TAGS) -> list[list[Any]]:
    """The folder's `count` most frequent tags, as [tag, occurrences] rows."""
    counts = tag_counts((file.text for file in state.files), state.separator, state.keep_tokens_separator)
    return [[tag, n] for tag, n in counts.most_common(count)]


def folder_tags(state: EditorState) -> list[str]:
    """Every tag of the folder, the most frequent first (the tag boxes' choices)."""
    counts = tag_counts((file.text for file in state.files), state.separator, state.keep_tokens_separator)
    return [tag for tag, _ in counts.most_common()]


def edit_by_tags(state: EditorState, box: str, tags: Sequence[str]) -> str:
    """The box's caption after its tags were edited as chips: the tags no longer there removed, the new
    ones added at the end (tag_edits' rules, so fixed parts stay in place)."""
    before = caption_tags(box, state.separator, state.keep_tokens_separator)
    kept = set(tags)
    removed = tuple(tag for tag in before if tag not in kept)
    added = tuple(tag for tag in tags if tag not in before)
    return shown_text(_edited(state, box, removed=removed, added=added))


def add_tags(state: EditorState, box: str, typed: str) -> str:
    """The box's caption with the typed tags (separated as in the captions) added where missing."""
    return shown_text(_edited(state, box, removed=(), added=tuple(split_tags(typed, state.separator))))


def _edited(state: EditorState, box: str, removed: tuple[str, ...], added: tuple[str, ...]) -> str:
    edits = TagEdits(
        add=added,
        remove=removed,
        separator=state.separator,
        keep_tokens_separator=state.keep_tokens_separator,
    )
    return box if edits.is_empty() else edit_caption(box, edits)
