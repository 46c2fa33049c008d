"""The caption editor's state on real caption files, without a browser: a folder loaded (bad values one
line), filtered, walked through with the edited caption saved atomically on the way (line endings
kept, unedited files untouched, a file changed on disk never overwritten), undo, the tag chips, bulk
edits previewed exactly and applied as `loracraft caption edit` applies them, the image previews, and
the Captioning tab built with both caption commands (the caption edit form's `--replace OLD NEW`)."""

from __future__ import annotations

import os
import shutil

import gradio as gr
import pytest
from PIL import Image

from data_helpers import write_test_image
from loracraft.atomic import leftover_temp_files
from loracraft.errors import UserError
from loracraft.gui import caption_editor_view, image_previews
from loracraft.gui.caption_editor import (
    UNDO_STEPS,
    CaptionFilter,
    add_tags,
    apply_bulk,
    bulk_edits,
    edit_by_tags,
    load_folder,
    move,
    plan_bulk,
    plan_report,
    save_caption,
    top_tags,
    undo,
    with_filter,
)
from loracraft.gui.captioning_tab import captioning_tab
from loracraft.gui.utilities_tab import queue_tool
from loracraft.jobs.queue import JobQueue
from loracraft.tools.caption_edit import main as caption_edit_main

CAPTIONS = {"a": "sks, cat, red\n", "b": "dog, red, red\r\n", "sub/d": "cat, blue"}


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """a.png "sks, cat, red", b.png (CRLF) "dog, red, red", c.png without a caption, sub/d.png "cat, blue"."""
    monkeypatch.setattr(image_previews, "PREVIEW_FOLDER", tmp_path / "previews")
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for seed, stem in enumerate(["a", "b", "c", "sub/d"]):
        write_test_image(folder / f"{stem}.png", (32, 24), seed=seed)
    for stem, text in CAPTIONS.items():
        (folder / f"{stem}.txt").write_bytes(text.encode())
    return folder


def names(state):
    return [state.name(state.files[index]) for index in state.shown]


def file_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.rglob("*.txt"))}


def test_a_folder_loads_its_images_and_captions_and_bad_values_are_one_line(photos, tmp_path):
    state = load_folder(str(photos))
    assert names(state) == ["a.png", "b.png", "c.png"]
    assert [file.text for file in state.files] == ["sks, cat, red\n", "dog, red, red\r\n", ""]
    assert not state.files[2].exists and state.current.image == photos / "a.png"
    assert names(load_folder(str(photos), recursive=True)) == ["a.png", "b.png", "c.png", "sub/d.png"]
    assert top_tags(load_folder(str(photos), recursive=True), 2) == [["red", 3], ["cat", 2]]
    bad = {
        ("", ".txt", ","): "give the folder of images whose captions to edit",
        (str(tmp_path / "none"), ".txt", ","): f"{tmp_path / 'none'} does not exist; pass the folder that holds the images",
        (str(photos), "txt", ","): "--caption_extension 'txt': start it with a dot, e.g. .txt",
        (str(photos), ".txt", ""): "--caption_separator is empty; give the text between tags, e.g. ','",
    }  # fmt: skip
    for (folder, extension, separator), message in bad.items():
        with pytest.raises(UserError) as refused:
            load_folder(folder, extension, separator=separator)
        assert str(refused.value) == message
    assert file_bytes(photos)["a.txt"] == b"sks, cat, red\n"


def test_the_filter_shows_captions_with_the_text_or_with_or_without_the_tag(photos):
    state = load_folder(str(photos), recursive=True)
    assert names(with_filter(state, CaptionFilter(search="RED"))) == ["a.png", "b.png"]
    assert names(with_filter(state, CaptionFilter(search="sub/"))) == ["sub/d.png"]
    assert names(with_filter(state, CaptionFilter(tag="cat"))) == ["a.png", "sub/d.png"]
    assert names(with_filter(state, CaptionFilter(tag="cat", lacks=True))) == ["b.png", "c.png"]
    # "re" is in "red" but is no tag of any caption.
    assert names(with_filter(state, CaptionFilter(tag="re"))) == []
    on_d = with_filter(move(state, "sks, cat, red", 3), CaptionFilter(tag="cat"))
    assert on_d.current.image.name == "d.png" and on_d.position == 1


def test_moving_on_saves_the_edited_caption_atomically_and_keeps_its_line_endings(photos):
    state = load_folder(str(photos))
    a_caption, b_caption = photos / "a.txt", photos / "b.txt"
    inode = a_caption.stat().st_ino
    state = move(state, "sks, cat, red", 1)  # not edited (the box shows no final newline): not written
    assert a_caption.stat().st_ino == inode and state.position == 1 and state.undo_steps == ()
    state = move(state, "dog, red\nsecond line", 1)
    assert b_caption.read_bytes() == b"dog, red\r\nsecond line\r\n"
    state = move(state, "a new caption", 1)  # c.png had none: one is written, ending in a newline
    assert (photos / "c.txt").read_bytes() == b"a new caption\n"
    assert state.position == 2  # the last image stays shown
    state = move(state, "a new caption", -2)
    assert state.current.image.name == "a.png"
    state = save_caption(state, "sks, cat")
    assert a_caption.read_bytes() == b"sks, cat\n" and a_caption.stat().st_ino != inode
    assert leftover_temp_files(a_caption) == []
    assert [step.description for step in state.undo_steps] == [
        "the caption of b.png",
        "the caption of c.png",
        "the caption of a.png",
    ]


def test_a_caption_changed_on_disk_since_the_load_is_never_overwritten(photos):
    state = load_folder(str(photos))
    (photos / "a.txt").write_text("typed in another editor\n", encoding="utf-8")
    with pytest.raises(
        UserError, match=r"a\.txt changed on disk since the captions were read; nothing was written"
    ):
        move(state, "my edit", 1)
    assert (photos / "a.txt").read_text(encoding="utf-8") == "typed in another editor\n"
    view = caption_editor_view.on_move(state, "my edit", 1)
    # The status line says why; the box keeps "my edit" (not updated), the state stays on a.png.
    assert view[1].startswith("⚠ ") and "changed on disk" in view[1]
    assert view[0] == state and view[5] == gr.update()


def test_an_action_refused_after_saving_the_box_keeps_the_save(photos):
    state = load_folder(str(photos))
    no_edit = ["", "", "", "", False, "", "", "", False, False, 0]
    view = caption_editor_view.on_preview(state, "my edit", False, *no_edit)
    assert view[1] == "⚠ no bulk edit given: fill in what to add, remove, replace or rename, or tick one"
    assert (photos / "a.txt").read_text(encoding="utf-8") == "my edit\n"
    saved = view[0]
    assert saved.current.text == "my edit\n" and view[9] == gr.update(interactive=True)
    # The box still says "my edit": moving on writes nothing more and is not refused.
    assert caption_editor_view.on_move(saved, "my edit", 1)[1] == ""


def test_undo_gives_the_files_their_text_before_the_last_step(photos):
    before = file_bytes(photos)
    state = load_folder(str(photos))
    state = move(move(move(state, "sks, cat, red, edited", 1), "dog", 1), "new", -2)
    assert (photos / "c.txt").exists()
    state = undo(state)
    assert not (photos / "c.txt").exists() and not state.files[2].exists  # created by the step: removed
    state = undo(undo(state))
    assert file_bytes(photos) == before
    assert [file.text for file in state.files[:2]] == ["sks, cat, red\n", "dog, red, red\r\n"]
    with pytest.raises(UserError, match="^nothing to undo: no caption was saved"):
        undo(state)
    typing = caption_editor_view.on_undo(state, "typed, not saved")  # Undo drops it, writing nothing
    assert typing[1] == "Unsaved edits of a.png undone." and typing[5] == "sks, cat, red"
    assert file_bytes(photos) == before
    for step in range(UNDO_STEPS + 2):
        state = save_caption(state, f"caption {step}")
    assert len(state.undo_steps) == UNDO_STEPS


def test_undo_is_refused_for_a_file_changed_on_disk_since_the_step(photos):
    state = save_caption(load_folder(str(photos)), "mine")
    (photos / "a.txt").write_text("theirs\n", encoding="utf-8")
    with pytest.raises(UserError, match="changed on disk"):
        undo(state)
    assert (photos / "a.txt").read_text(encoding="utf-8") == "theirs\n" and len(state.undo_steps) == 1


def test_the_tag_chips_remove_and_add_tags_keeping_the_fixed_part(photos):
    state = load_folder(str(photos), keep_tokens_separator="|||")
    caption = "sks, cat ||| red, blue ||| best quality"
    assert edit_by_tags(state, caption, ["sks", "cat", "blue", "best quality"]) == (
        "sks, cat ||| blue ||| best quality"
    )
    assert edit_by_tags(state, caption, ["cat", "red", "blue", "best quality", "green"]) == (
        "cat ||| red, blue, green ||| best quality"
    )
    assert add_tags(state, "sks, cat", "red, cat,  blue") == "sks, cat, red, blue"
    assert add_tags(state, "", "red") == "red"


def test_a_bulk_preview_lists_exactly_the_changes_and_writes_nothing(photos):
    state = load_folder(str(photos))
    before = file_bytes(photos)
    edits = bulk_edits(state, replace_old="red", replace_new="crimson", dedupe=True)
    plan = plan_bulk(state, edits)
    assert [change.caption_file.name for change in plan.changes] == ["a.txt", "b.txt"]
    assert plan_report(state, plan).splitlines() == [
        "would change 2 of 2 caption files",
        "no caption file for 1 of 3 images (c.png); --create_missing with --add or --trigger writes one",
        "",
        "a.txt",
        "  - sks, cat, red",
        "  + sks, cat, crimson",
        "b.txt",
        "  - dog, red, red",
        "  + dog, crimson",
    ]
    assert file_bytes(photos) == before
    only_dogs = with_filter(state, CaptionFilter(tag="dog"))
    assert [change.caption_file.name for change in plan_bulk(only_dogs, edits).changes] == ["b.txt"]
    with pytest.raises(UserError, match="^no bulk edit given"):
        plan_bulk(state, bulk_edits(state))
    with pytest.raises(UserError, match=r"--replace '\(' 'x': not a valid regular expression"):
        bulk_edits(state, replace_old="(", replace_new="x", regex=True)


def test_apply_writes_what_caption_edit_writes_and_only_after_this_preview(photos, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(photos, twin)
    original = file_bytes(twin)
    state = load_folder(str(photos))
    form = {"replace_old": "red", "replace_new": "crimson", "dedupe": True, "trigger": "sks"}
    edits = bulk_edits(state, **form)
    plan = plan_bulk(state, edits)
    with pytest.raises(UserError, match="^press Preview first"):
        apply_bulk(state, None, edits, False)
    other = bulk_edits(state, **{**form, "trigger": "zxq"})
    with pytest.raises(UserError, match="^the edits or the captions shown changed since the preview"):
        apply_bulk(state, plan, other, False)
    assert file_bytes(photos) == file_bytes(twin)
    state = apply_bulk(state, plan, edits, False)
    argv = [str(twin), "--replace", "red", "crimson", "--dedupe", "--trigger", "sks"]
    assert caption_edit_main(argv, echo=lambda line: None) == 0
    assert file_bytes(photos) == file_bytes(twin) != original
    assert state.undo_steps[-1].description == "the bulk edit of 2 caption files"
    state = undo(state)
    assert (photos / "b.txt").read_bytes() == b"dog, red, red\r\n"


def test_the_preview_and_apply_events_save_the_box_first(photos):
    state = load_folder(str(photos))
    form = ["cat", "", "", "", False, "", "", "", False, False, 0]  # add "cat"
    view = caption_editor_view.on_preview(state, "dog", False, *form)
    state, plan, report = view[0], view[-2], view[-1]
    assert (photos / "a.txt").read_text(encoding="utf-8") == "dog\n"  # the box was saved first
    assert report.splitlines()[0] == "would change 2 of 2 caption files"
    view = caption_editor_view.on_apply(state, "dog", plan, False, *form)
    assert view[1] == "Applied: the bulk edit of 2 caption files (Undo takes it back)."
    assert view[-1].splitlines()[0] == "changed 2 of 2 caption files"
    assert (
        file_bytes(photos)["a.txt"] == b"dog, cat\n"
        and file_bytes(photos)["b.txt"] == b"dog, red, red, cat\r\n"
    )
    refused = caption_editor_view.on_apply(view[0], "dog, cat", None, False, *form)
    assert refused[1] == "⚠ press Preview first: Apply writes the changes the preview shows"


def test_previews_are_upright_cached_copies_and_an_unreadable_image_is_named(photos):
    photo = photos / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: stored on its side, shown turned by 90 degrees
    Image.new("RGB", (600, 300), (200, 30, 30)).save(photo, exif=exif)
    copy, problem = image_previews.preview(photo, 256)
    assert problem is None and Image.open(copy).size == (128, 256)
    assert image_previews.preview(photo, 256) == (copy, None)
    os.utime(photo, ns=(1, 1))
    assert image_previews.preview(photo, 256)[0] != copy  # a new version of the image: a new copy
    broken = photos / "broken.png"
    broken.write_bytes(b"not a png")
    grey, problem = image_previews.preview(broken, 256)
    assert Image.open(grey).size == (256, 256) and str(broken) in problem
    state = load_folder(str(photos))
    assert names(state)[2] == "broken.png"  # still listed: its caption can be edited
    assert "⚠" in caption_editor_view.position_line(move(state, "sks, cat, red", 2))


def test_the_captioning_tab_builds_with_both_commands_and_the_editor(photos, tmp_path):
    queue = JobQueue(tmp_path / "queue.sqlite")
    with gr.Blocks() as page:
        forms = captioning_tab(queue)
    assert [form.command for form in forms] == ["caption", "caption edit"]
    ids = {block.elem_id for block in page.blocks.values()}
    expected = {"captioning-caption-run", "captioning-caption-edit-run", "captioning-job-console",
                "caption-editor-load", "caption-editor-next", "caption-editor-previous", "caption-editor-tags",
                "bulk-preview", "bulk-apply"}  # fmt: skip
    assert expected <= ids
    edit_form = forms[1]
    given = {"train_data_dir": str(photos), "replace": "red 'dark red' cat dog"}
    message, job_id = queue_tool(queue, edit_form, [given.get(f.dest, f.initial) for f in edit_form.fields])
    assert queue.get(job_id).tool_argv == (
        "caption", "edit", str(photos), "--replace", "red", "dark red", "--replace", "cat", "dog"
    )  # fmt: skip
    given["replace"] = "red"
    message, job_id = queue_tool(queue, edit_form, [given.get(f.dest, f.initial) for f in edit_form.fields])
    assert (message, job_id) == ("Not queued: --replace: give its items 2 at a time (1 given)", None)
