"""The caption editor's components and events (its state and actions are caption_editor.py's).

Every action reads the caption box first, so an edit typed there is saved before the editor moves on
(caption_editor.py says when); a refused action changes nothing but the status line, and the box keeps
the user's text. The gallery and the large image show copies of the images (image_previews.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from loracraft.errors import UserError
from loracraft.gui.caption_editor import (
    HAS_TAG,
    LACKS_TAG,
    NO_FOLDER,
    UNDO_STEPS,
    BulkPlan,
    CaptionFilter,
    EditorState,
    add_tags,
    apply_bulk,
    bulk_edits,
    caption_tags,
    edit_by_tags,
    folder_tags,
    go_to,
    is_edited,
    load_folder,
    move,
    plan_bulk,
    plan_report,
    save_caption,
    shown_text,
    top_tags,
    undo,
    with_filter,
)
from loracraft.gui.image_previews import LARGE_SIDE, THUMBNAIL_SIDE, preview

# Alt+Right / Alt+Left click Next / Previous while the editor is on screen; the browser's own Alt+Left
# (back) would leave the page. Installed once per page, when the Captioning tab is first opened.
NAVIGATION_KEYS_JS = """
() => {
  if (window.loracraftCaptionKeys) return;
  window.loracraftCaptionKeys = true;
  document.addEventListener("keydown", (event) => {
    if (!event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    const id = {ArrowRight: "caption-editor-next", ArrowLeft: "caption-editor-previous"}[event.key];
    const button = id && document.getElementById(id);
    if (!button || button.offsetParent === null) return;
    event.preventDefault();
    button.click();
  });
}
"""
HELP = (
    "Load a folder, then edit each image's caption as text or as tags (a tag's **×** removes it; type a "
    "tag in *Add tags* and press Enter to add it). **Next** / **Previous** (keys **Alt+→** / **Alt+←**), "
    "a click in the gallery, a new filter or a bulk edit **save the caption you edited**; **Save** writes "
    "it at once. **Undo** drops typing not saved yet, else takes back the last save or bulk edit (up to "
    f"{UNDO_STEPS}). Bulk edits apply "
    "to the images shown: **Preview** lists the changes and writes nothing, **Apply** writes them. A "
    "caption file changed on disk since Load (by another program or a caption job) is never overwritten: "
    "the save is refused and your text stays in the box; Load again to see the file. Files are written "
    "atomically, as UTF-8."
)
BULK_HELP = (
    "`loracraft caption edit`'s operations, made in this order: replace, rename, remove, add, trigger, "
    "dedupe, sort. Tags are separated as in the captions; --keep_tokens and the keep-tokens marker keep "
    "the fixed tags in place."
)


@dataclass
class _Components:
    """What the editor's events read and write; `view` are those every action updates."""

    state: gr.State
    status: gr.Textbox
    gallery: gr.Gallery
    position: gr.Markdown
    image: gr.Image
    caption: gr.Textbox
    tags: gr.Dropdown
    tag_filter: gr.Dropdown
    stats: gr.Dataframe
    undo: gr.Button

    @property
    def view(self) -> list[Any]:
        return [self.state, self.status, self.gallery, self.position, self.image, self.caption, self.tags,
                self.tag_filter, self.stats, self.undo]  # fmt: skip


VIEW_SIZE = 10


def editor_view(state: EditorState, status: str, list_changed: bool) -> list[Any]:
    """The values of `_Components.view` for `state`; the gallery and the tag filter's choices only when
    the images shown or the folder's tags may have changed."""
    current = state.current
    tags = folder_tags(state)
    gallery: Any = gr.update()
    if list_changed:
        files = [state.files[index] for index in state.shown]
        gallery = [(str(preview(file.image, THUMBNAIL_SIDE)[0]), state.name(file)) for file in files]
    caption = shown_text(current.text) if current else ""
    return [
        state,
        status,
        gallery,
        position_line(state),
        str(preview(current.image, LARGE_SIDE)[0]) if current else None,
        caption,
        gr.update(value=caption_tags(caption, state.separator, state.keep_tokens_separator), choices=tags),
        gr.update(choices=tags) if list_changed else gr.update(),
        _stats_table(state),
        gr.update(interactive=bool(state.undo_steps)),
    ]


def position_line(state: EditorState) -> str:
    """Which image is shown, of how many, and what to know about it."""
    current = state.current
    if state.folder is None:
        return NO_FOLDER
    if current is None:
        return f"No image shown ({len(state.files)} in the folder): change the filter."
    line = f"**{state.position + 1} / {len(state.shown)}** shown ({len(state.files)} in the folder) · "
    line += f"`{state.name(current)}`"
    if not current.exists:
        line += " · no caption file yet (saving writes one)"
    problem = preview(current.image, LARGE_SIDE)[1]
    return line + (f" · ⚠ {problem}" if problem else "")


def _stats_table(state: EditorState) -> Any:
    import pandas as pd

    return pd.DataFrame(top_tags(state), columns=["tag", "count"])


def _refused(err: UserError, state: EditorState, extra: int = 0) -> list[Any]:
    """The status line says why; the box keeps the user's text. `state` is the one to keep: an action
    that saved the box before it was refused keeps the save (an undo step)."""
    undo_button = gr.update(interactive=bool(state.undo_steps))
    return [state, f"⚠ {err}", *[gr.update()] * (VIEW_SIZE - 3), undo_button, *[gr.update()] * extra]


def _filter_of(search: str, tag: str | None, mode: str) -> CaptionFilter:
    return CaptionFilter(search or "", tag or "", mode == LACKS_TAG)


def on_load(state: EditorState, box: str, folder: str, extension: str, recursive: bool, separator: str,
            marker: str, search: str, tag: str | None, mode: str) -> list[Any]:  # fmt: skip
    """Save the caption edited in the box, then load `folder`."""
    saved = state
    try:
        saved = save_caption(state, box)
        loaded = load_folder(folder, extension, recursive, separator, marker, _filter_of(search, tag, mode))
    except UserError as err:
        return _refused(err, saved)
    with_captions = sum(file.exists for file in loaded.files)
    status = f"Loaded {len(loaded.files)} images ({with_captions} with a caption file) from {loaded.folder}."
    if not loaded.files:
        status = f"No images in {loaded.folder} (with Recursive, its subfolders are read too)."
    return editor_view(loaded, status, list_changed=True)


def on_filter(state: EditorState, box: str, search: str, tag: str | None, mode: str) -> list[Any]:
    try:
        state = with_filter(save_caption(state, box), _filter_of(search, tag, mode))
    except UserError as err:
        return _refused(err, state)
    return editor_view(state, f"{len(state.shown)} of {len(state.files)} images shown.", list_changed=True)


def on_move(state: EditorState, box: str, step: int) -> list[Any]:
    try:
        moved = move(state, box, step)
    except UserError as err:
        return _refused(err, state)
    return editor_view(moved, _saved_line(state, moved), list_changed=False)


def on_pick(state: EditorState, box: str, event: gr.SelectData) -> list[Any]:
    try:
        picked = go_to(state, box, event.index)
    except UserError as err:
        return _refused(err, state)
    return editor_view(picked, _saved_line(state, picked), list_changed=False)


def on_save(state: EditorState, box: str) -> list[Any]:
    try:
        saved = save_caption(state, box)
    except UserError as err:
        return _refused(err, state)
    return editor_view(
        saved, _saved_line(state, saved) or "Nothing to save: the caption is as on disk.", False
    )


def _saved_line(before: EditorState, after: EditorState) -> str:
    if after.undo_steps == before.undo_steps:
        return ""
    return f"Saved {after.undo_steps[-1].changes[0].caption_file.name}."


def on_undo(state: EditorState, box: str) -> list[Any]:
    """Undo the typing not saved yet, else the last step written."""
    current = state.current
    if current is not None and is_edited(current, box):
        return editor_view(state, f"Unsaved edits of {state.name(current)} undone.", list_changed=False)
    try:
        step = state.undo_steps[-1].description if state.undo_steps else ""
        state = with_filter(undo(state), state.caption_filter)
    except UserError as err:
        return _refused(err, state)
    return editor_view(state, f"Undone: {step}.", list_changed=True)


def on_tags(state: EditorState, box: str, tags: list[str] | None) -> list[Any]:
    """The box's caption after its tag chips were edited, and the chips as the caption now reads."""
    try:
        caption = edit_by_tags(state, box, tags or [])
    except UserError as err:
        shown = caption_tags(box, state.separator, state.keep_tokens_separator)
        return [gr.update(), gr.update(value=shown), f"⚠ {err}"]
    return [caption, caption_tags(caption, state.separator, state.keep_tokens_separator), ""]


def on_add(state: EditorState, box: str, typed: str) -> list[Any]:
    try:
        caption = add_tags(state, box, typed)
    except UserError as err:
        return [gr.update(), gr.update(), gr.update(), f"⚠ {err}"]
    return [caption, caption_tags(caption, state.separator, state.keep_tokens_separator), "", ""]


def on_preview(state: EditorState, box: str, create_missing: bool, *form: Any) -> list[Any]:
    """Save the box, then show what the bulk edit changes (written by nothing)."""
    saved = state
    try:
        saved = save_caption(state, box)
        plan = plan_bulk(saved, bulk_edits(saved, *form), create_missing)
    except UserError as err:
        return _refused(err, saved, extra=2)
    report = plan_report(saved, plan)
    status = f"Preview: {len(plan.changes)} caption files would change; Apply writes them."
    return [*editor_view(saved, status, list_changed=False), plan, report]


def on_apply(state: EditorState, box: str, previewed: BulkPlan | None, create_missing: bool, *form: Any) -> list[Any]:  # fmt: skip
    """Save the box, then write the previewed bulk edit."""
    saved = state
    try:
        saved = save_caption(state, box)
        written = apply_bulk(saved, previewed, bulk_edits(saved, *form), create_missing)
    except UserError as err:
        return _refused(err, saved, extra=2)
    status = f"Applied: {written.undo_steps[-1].description} (Undo takes it back)."
    report = plan_report(saved, previewed, applied=True)
    return [*editor_view(written, status, list_changed=True), None, report]


def caption_editor() -> None:
    """The editor, built where the caller is (inside a gr.Blocks and its tab)."""
    gr.Markdown(HELP, elem_id="caption-editor-help")
    with gr.Row():
        folder = gr.Textbox(label="Image folder", scale=4, elem_id="caption-editor-folder")
        extension = gr.Textbox(
            ".txt", label="Caption extension (--caption_extension)", elem_id="caption-editor-extension"
        )
        separator = gr.Textbox(
            ",", label="Tag separator (--caption_separator)", elem_id="caption-editor-separator"
        )
        marker = gr.Textbox(
            label="Fixed-tags marker (--keep_tokens_separator)", elem_id="caption-editor-marker"
        )
        recursive = gr.Checkbox(label="Recursive (subfolders too)", elem_id="caption-editor-recursive")
        load = gr.Button("Load", variant="primary", scale=1, elem_id="caption-editor-load")
    status = gr.Textbox(NO_FOLDER, label="Status", interactive=False, elem_id="caption-editor-status")
    state = gr.State(EditorState())
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                search = gr.Textbox(
                    label="Search captions and names (Enter)", elem_id="caption-editor-search"
                )
                tag_filter = gr.Dropdown(
                    choices=[],
                    value=None,
                    allow_custom_value=True,
                    label="Tag",
                    elem_id="caption-editor-tag-filter",
                )
                mode = gr.Radio([HAS_TAG, LACKS_TAG], value=HAS_TAG, label="Show images whose caption",
                                elem_id="caption-editor-tag-mode")  # fmt: skip
            gallery = gr.Gallery(label="Images shown", columns=6, height=360, allow_preview=False,
                                 object_fit="contain", elem_id="caption-editor-gallery")  # fmt: skip
            stats = gr.Dataframe(headers=["tag", "count"], label="Most frequent tags in the folder",
                                 interactive=False, elem_id="caption-editor-stats")  # fmt: skip
        with gr.Column(scale=1):
            position = gr.Markdown(NO_FOLDER, elem_id="caption-editor-position")
            image = gr.Image(type="filepath", interactive=False, height=420, label="Image",
                             elem_id="caption-editor-image")  # fmt: skip
            caption = gr.Textbox(label="Caption", lines=4, elem_id="caption-editor-caption")
            tags = gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True,
                               label="Tags (× removes one)", elem_id="caption-editor-tags")  # fmt: skip
            with gr.Row():
                typed = gr.Textbox(label="Add tags (Enter)", scale=4, elem_id="caption-editor-add-tags")
                add = gr.Button("Add", scale=1, elem_id="caption-editor-add")
            with gr.Row():
                previous = gr.Button("← Previous", elem_id="caption-editor-previous")
                save = gr.Button("Save", variant="primary", elem_id="caption-editor-save")
                following = gr.Button("Next →", elem_id="caption-editor-next")
                undo_button = gr.Button("Undo", interactive=False, elem_id="caption-editor-undo")
    view = _Components(state, status, gallery, position, image, caption, tags, tag_filter, stats, undo_button)
    reading = [folder, extension, recursive, separator, marker]
    _connect_editing(view, load, reading, [search, tag_filter, mode], [previous, save, following], typed, add)
    _bulk_area(view)


def _connect_editing(
    view: _Components,
    load: gr.Button,
    reading: list[Any],
    filters: list[Any],
    buttons: list[gr.Button],
    typed: gr.Textbox,
    add: gr.Button,
) -> None:
    """Load, the filter, moving, saving, undo and the tag chips; `reading` are the folder's boxes in
    on_load's order, `filters` search, tag and mode, `buttons` Previous, Save, Next."""
    previous, save, following = buttons
    search, tag_filter, mode = filters
    state, box = view.state, view.caption
    load.click(on_load, [state, box, *reading, *filters], view.view)
    gr.on([search.submit, tag_filter.input, mode.input], on_filter, [state, box, *filters], view.view)
    previous.click(lambda current, text: on_move(current, text, -1), [state, box], view.view)
    following.click(lambda current, text: on_move(current, text, 1), [state, box], view.view)
    save.click(on_save, [state, box], view.view)
    view.undo.click(on_undo, [state, box], view.view)
    view.gallery.select(on_pick, [state, box], view.view)
    # The chips follow the typing; the box follows a chip removed or added.
    box.input(
        lambda current, text: caption_tags(text, current.separator, current.keep_tokens_separator),
        [state, box], view.tags, trigger_mode="always_last", show_progress="hidden",
    )  # fmt: skip
    view.tags.input(on_tags, [state, box, view.tags], [box, view.tags, view.status])
    gr.on([typed.submit, add.click], on_add, [state, box, typed], [box, view.tags, typed, view.status])


def _bulk_area(view: _Components) -> None:
    """The bulk edit of the shown captions: its form, Preview, Apply and the report."""
    gr.Markdown("### Bulk edit the captions shown")
    gr.Markdown(BULK_HELP)
    with gr.Row():
        add = gr.Textbox(label="Add tags (--add)", elem_id="bulk-add")
        remove = gr.Textbox(label="Remove tags (--remove)", elem_id="bulk-remove")
        trigger = gr.Textbox(label="Trigger word first (--trigger)", elem_id="bulk-trigger")
    with gr.Row():
        replace_old = gr.Textbox(label="Replace the text (--replace OLD)", elem_id="bulk-replace-old")
        replace_new = gr.Textbox(label="with (--replace NEW)", elem_id="bulk-replace-new")
        regex = gr.Checkbox(label="as a regular expression (--regex)", elem_id="bulk-regex")
    with gr.Row():
        rename_old = gr.Textbox(label="Rename the tag (--rename OLD)", elem_id="bulk-rename-old")
        rename_new = gr.Textbox(label="to (--rename NEW)", elem_id="bulk-rename-new")
    with gr.Row():
        dedupe = gr.Checkbox(label="Remove repeated tags (--dedupe)", elem_id="bulk-dedupe")
        sort = gr.Checkbox(label="Sort the tags (--sort)", elem_id="bulk-sort")
        keep_tokens = gr.Number(
            0, precision=0, label="Fixed first tags (--keep_tokens)", elem_id="bulk-keep-tokens"
        )
        create_missing = gr.Checkbox(label="Give images without a caption file one (--create_missing)",
                                     elem_id="bulk-create-missing")  # fmt: skip
    with gr.Row():
        preview_button = gr.Button("Preview", elem_id="bulk-preview")
        apply_button = gr.Button("Apply", variant="primary", elem_id="bulk-apply")
    report = gr.Textbox(label="Changes (- before, + after)", lines=12, max_lines=30, interactive=False,
                        elem_id="bulk-report")  # fmt: skip
    # In bulk_edits' order.
    form = [
        add,
        remove,
        replace_old,
        replace_new,
        regex,
        rename_old,
        rename_new,
        trigger,
        dedupe,
        sort,
        keep_tokens,
    ]
    pending = gr.State(None)
    outputs = [*view.view, pending, report]
    preview_button.click(on_preview, [view.state, view.caption, create_missing, *form], outputs)
    apply_button.click(on_apply, [view.state, view.caption, pending, create_missing, *form], outputs)
