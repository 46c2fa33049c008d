"""`loracraft caption edit DIR` through the command line, and the plan/apply steps the web UI uses."""

import os
from pathlib import Path

import pytest

from data_helpers import write_test_image
from loracraft.caption.caption_folder import apply_changes, plan_changes, read_caption_folder
from loracraft.caption.tag_edits import TagEdits
from loracraft.cli import main
from loracraft.errors import UserError
from loracraft.jobs.tool_jobs import check_tool_call

CAPTIONS = {
    "a.txt": "cat, red, cat\n",
    "b.txt": "sks, dog ||| grass, sky\n",
    "c.txt": "a photo of a cat\n",
}


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` with its bytes and modification time: proof nothing was written."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}  # fmt: skip


@pytest.fixture
def folder(tmp_path) -> Path:
    """Four images, three with captions (tags, a keep_tokens_separator, a sentence), one without."""
    folder = tmp_path / "img"
    folder.mkdir()
    for index, stem in enumerate("abcd"):
        write_test_image(folder / f"{stem}.png", (8, 8), index)
    for name, text in CAPTIONS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def captions_of(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["caption", "edit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_edits_write_each_changed_caption_and_leave_kohyas_fixed_part(folder, capsys):
    code, out, err = run(capsys, str(folder), "--trigger", "sks", "--dedupe", "--sort", "--keep_tokens_separator", "|||")  # fmt: skip
    assert (code, err) == (0, "")
    assert captions_of(folder) == {
        "a.txt": "sks, cat, red\n",
        "b.txt": "sks, dog ||| grass, sky\n",  # already so: not rewritten
        "c.txt": "sks, a photo of a cat\n",
    }
    assert "changed 2 of 3 caption files" in out
    assert (
        "no caption file for 1 of 4 images (d.png); --create_missing with --add or --trigger writes one"
        in out
    )
    assert not (folder / "d.txt").exists()


def test_stats_show_each_tags_count_before_and_after(folder, capsys):
    code, out, _ = run(
        capsys, str(folder), "--rename", "cat", "kitty", "--add", "outdoors, sky", "--top", "3"
    )
    assert code == 0
    lines = out.splitlines()
    start = lines.index("most frequent tags, before -> after (6 -> 7 different tags):")
    # Top 3 before: cat 2 and the first two tags of count 1 by name; after: outdoors and sky 3, kitty 2.
    # b.txt is read without --keep_tokens_separator: "dog ||| grass" is one tag.
    assert [line.split() for line in lines[start + 1 : start + 7]] == [
        ["sky", "1", "->", "3", "(+2)"],
        ["outdoors", "0", "->", "3", "(+3)"],
        ["kitty", "0", "->", "2", "(+2)"],
        ["a", "photo", "of", "a", "cat", "1", "->", "1"],
        ["dog", "|||", "grass", "1", "->", "1"],
        ["cat", "2", "->", "0", "(-2)"],
    ]
    assert lines[start + 7 :] == [
        "changed 3 of 3 caption files",
        "no caption file for 1 of 4 images (d.png); --create_missing with --add or --trigger writes one",
    ]
    assert captions_of(folder)["a.txt"] == "kitty, red, kitty, outdoors, sky\n"
    assert captions_of(folder)["b.txt"] == "sks, dog ||| grass, sky, outdoors\n"


def test_no_edit_flag_only_shows_the_tags_and_writes_nothing(folder, capsys):
    before = snapshot(folder)
    code, out, _ = run(capsys, str(folder), "--keep_tokens_separator", "|||")
    assert code == 0
    assert snapshot(folder) == before
    assert out.splitlines()[:3] == [
        "most frequent tags (7 of 7):",
        "  cat               2",
        "  a photo of a cat  1",
    ]
    assert "3 caption files for 4 images" in out


def test_dry_run_prints_the_changes_and_writes_nothing(folder, capsys):
    before = snapshot(folder)
    code, out, _ = run(
        capsys, str(folder), "--remove", "cat", "--add", "sks", "--create_missing", "--dry_run"
    )
    assert code == 0
    assert snapshot(folder) == before
    assert out.splitlines()[:6] == [
        "a.txt", "  - cat, red, cat", "  + red, sks", "c.txt", "  - a photo of a cat", "  + a photo of a cat, sks",
    ]  # fmt: skip
    assert "d.txt (new file)\n  + sks\n" in out
    assert "would change 2 of 3 caption files; would create 1 for images without one" in out


def test_create_missing_writes_a_caption_for_images_without_one(folder, capsys):
    code, out, _ = run(capsys, str(folder), "--trigger", "sks", "--create_missing")
    assert code == 0
    assert captions_of(folder)["d.txt"] == "sks\n"
    assert "changed 2 of 3 caption files; created 1 for images without one" in out
    assert "no caption file" not in out


def test_regex_replace_and_keep_tokens(folder, capsys):
    (folder / "a.txt").write_text("sks, zebra, long_hair, blue_eyes\n", encoding="utf-8")
    code, _, _ = run(capsys, str(folder), "--replace", r"(\w+)_(\w+)", r"\2 \1", "--regex", "--sort", "--keep_tokens", "2")  # fmt: skip
    assert code == 0
    assert captions_of(folder)["a.txt"] == "sks, zebra, eyes blue, hair long\n"


def test_recursive_edits_subfolders_only_when_asked(folder, capsys):
    sub = folder / "sub"
    sub.mkdir()
    write_test_image(sub / "e.jpg", (8, 8), 9)
    (sub / "e.txt").write_text("dog\n", encoding="utf-8")
    run(capsys, str(folder), "--add", "x")
    assert (sub / "e.txt").read_text() == "dog\n"
    code, out, _ = run(capsys, str(folder), "--add", "y", "--recursive", "--dry_run")
    assert code == 0 and f"sub{os.sep}e.txt\n  - dog\n  + dog, y" in out
    run(capsys, str(folder), "--add", "y", "--recursive")
    assert (sub / "e.txt").read_text() == "dog, y\n"


def test_other_caption_extension_and_a_windows_1252_caption_written_back_as_utf8(folder, capsys):
    (folder / "a.caption").write_bytes("café, cat\r\n".encode("cp1252"))
    code, out, _ = run(capsys, str(folder), "--caption_extension", ".caption", "--add", "naïve")
    assert code == 0
    assert (folder / "a.caption").read_bytes() == "café, cat, naïve\r\n".encode()
    assert "changed 1 of 1 caption files" in out
    assert captions_of(folder) == CAPTIONS


def test_a_caption_changed_on_disk_after_the_plan_is_refused_and_nothing_is_written(folder):
    changes = plan_changes(read_caption_folder(folder), TagEdits(add=("new",)))
    assert len(changes) == 3
    (folder / "c.txt").write_text("the user's new caption\n", encoding="utf-8")
    before = snapshot(folder)
    with pytest.raises(
        UserError, match=r"c\.txt changed on disk since the captions were read; nothing was written"
    ):
        apply_changes(changes)
    assert snapshot(folder) == before


def test_a_caption_file_appearing_after_the_plan_is_not_overwritten(folder):
    changes = plan_changes(read_caption_folder(folder), TagEdits(add=("sks",)), create_missing=True)
    (folder / "d.txt").write_text("written meanwhile\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"d\.txt changed on disk"):
        apply_changes(changes)
    assert (folder / "d.txt").read_text() == "written meanwhile\n"
    assert captions_of(folder)["a.txt"] == CAPTIONS["a.txt"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--replace", "(red", "x", "--regex"],
            "error: --replace '(red' 'x': not a valid regular expression",
        ),
        (["--add", "a", "--keep_tokens", "-1"], "error: --keep_tokens -1: use 0 or more"),
        (["--top", "-1"], "error: --top -1: use 0 (no tag counts) or more"),
        (["--caption_extension", "txt"], "error: --caption_extension 'txt': start it with a dot, e.g. .txt"),
        (["--trigger", "a, b"], "error: --trigger 'a, b': one tag each"),
        (["--rename", "a"], "error: caption edit: argument --rename: expected 2 arguments"),
    ],
)
def test_bad_flags_are_one_line_and_nothing_is_written(folder, capsys, argv, message):
    before = snapshot(folder)
    code, _, err = run(capsys, str(folder), *argv)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1
    assert snapshot(folder) == before


def test_a_folder_without_images_is_one_line(tmp_path, capsys):
    (tmp_path / "only.txt").write_text("cat\n")
    code, _, err = run(capsys, str(tmp_path), "--dedupe")
    assert (code, err) == (2, f"error: {tmp_path} has no images (add --recursive for subfolders)\n")
    code, _, err = run(capsys, str(tmp_path / "nowhere"), "--dedupe")
    assert (code, err) == (2, f"error: {tmp_path / 'nowhere'} does not exist; pass the folder that holds the images\n")  # fmt: skip


def test_a_queued_job_may_run_it(folder, tmp_path):
    call = check_tool_call(["caption", "edit", str(folder), "--dedupe"], tmp_path)
    assert call.command == "caption edit"
    assert call.argv == ("caption", "edit", str(folder), "--dedupe")
    assert call.output is None
    with pytest.raises(UserError, match="caption edit: unrecognized arguments: --dedup3"):
        check_tool_call(["caption", "edit", str(folder), "--dedup3"], tmp_path)
