"""The caption run around any captioner: which files are written, kept, replaced or appended to, the
prefix and suffix, images that fail (named, the rest written), a captioner's UserError stopping the run
with what was written kept, batches in order, and the job's progress events. The captioner here is a
stand-in that names each image's colour, so every file can be checked against its own image."""

import json
import re

import pytest
from PIL import Image

from loracraft.caption.images import find_images
from loracraft.caption.run import CaptionSummary, caption_images, plan_jobs
from loracraft.caption.writing import Action, CaptionPolicy, append_tags
from loracraft.errors import UserError
from loracraft.jobs.tool_progress import PROGRESS_FILE_VARIABLE

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


class ColourNamer:
    """Captions an image with its colour's name; `fail_on` colours come back as that image's exception,
    `stop_on` raises a UserError for the whole run; records each batch's length."""

    def __init__(self, batch_size=2, fail_on=(), stop_on=()):
        self.batch_size, self.fail_on, self.stop_on = batch_size, set(fail_on), set(stop_on)
        self.batches = []

    def caption(self, images):
        self.batches.append(len(images))
        names = [next(name for name, rgb in COLOURS.items() if img.getpixel((0, 0)) == rgb) for img in images]
        if self.stop_on & set(names):
            raise UserError("the model went away")
        return [
            RuntimeError(f"no words for {name}") if name in self.fail_on else f"{name}, square"
            for name in names
        ]


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name in ("red", "green", "blue"):
        Image.new("RGB", (24, 16), COLOURS[name]).save(folder / f"{name}.png")
    Image.new("RGB", (8, 8), COLOURS["white"]).save(folder / "sub" / "white.jpg")
    (folder / ".hidden.png").write_bytes(b"not looked at")
    return folder


def run(folder, captioner, policy=None, extension=".txt", recursive=False):
    policy = policy or CaptionPolicy()
    summary = CaptionSummary(folder)
    jobs = plan_jobs(find_images(folder, recursive), extension, policy, summary)
    return caption_images(folder, jobs, captioner, policy, summary, progress=False)


def test_each_image_gets_its_own_caption_and_subfolders_only_with_recursive(folder):
    summary = run(folder, ColourNamer())
    assert {p.name: p.read_text() for p in folder.glob("*.txt")} == {
        "red.txt": "red, square\n",
        "green.txt": "green, square\n",
        "blue.txt": "blue, square\n",
    }
    assert not (folder / "sub" / "white.txt").exists() and summary.actions == {Action.WRITE: 3}
    run(folder, ColourNamer(), recursive=True)
    assert (folder / "sub" / "white.txt").read_text() == "white, square\n"


def test_existing_captions_are_kept_unless_overwrite_or_append(folder):
    (folder / "red.txt").write_text("my own words", encoding="utf-8")
    (folder / "green.txt").write_text("  \n", encoding="utf-8")  # no text: counts as no caption
    summary = run(folder, ColourNamer())
    assert (folder / "red.txt").read_text() == "my own words"
    assert (folder / "green.txt").read_text() == "green, square\n"
    assert summary.actions == {Action.KEEP: 1, Action.WRITE: 2}
    assert (
        "skipped 1 with a caption already (kept; --overwrite replaces, --append adds to them)"
        in summary.lines()
    )

    run(folder, ColourNamer(), CaptionPolicy(append=True))
    assert (folder / "red.txt").read_text() == "my own words, red, square\n"
    run(folder, ColourNamer(), CaptionPolicy(append=True))  # nothing new to add: unchanged
    assert (folder / "red.txt").read_text() == "my own words, red, square\n"
    summary = run(folder, ColourNamer(), CaptionPolicy(overwrite=True, prefix="sks,", suffix="photo"))
    assert (folder / "red.txt").read_text() == "sks, red, square photo\n"
    assert summary.actions == {Action.REPLACE: 3}


def test_append_adds_only_the_tags_the_caption_lacks():
    assert append_tags("a, b", "b, c, a, d") == "a, b, c, d"
    assert append_tags("a photo of a cat.", "a photo of a cat.") == "a photo of a cat."
    assert append_tags("a,b,", "c", ", ") == "a,b, c"


def test_an_unreadable_image_and_a_failing_caption_are_named_and_the_rest_written(folder):
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    summary = run(folder, ColourNamer(fail_on={"green"}))
    assert (folder / "red.txt").is_file() and (folder / "blue.txt").is_file()
    assert not (folder / "green.txt").exists() and not (folder / "broken.txt").exists()
    failed = dict((path.name, reason) for path, reason in summary.failed)
    assert failed["green.png"] == "no words for green"
    assert "cannot decode image" in failed["broken.png"]
    message = summary.failure_message()
    assert message.startswith("2 of 4 images could not be captioned (") and "broken.png" in message
    assert "green.png" in message and message.endswith("the others were written")


def test_a_captioner_user_error_stops_the_run_keeping_what_was_written(folder):
    captioner = ColourNamer(batch_size=1, stop_on={"green"})
    with pytest.raises(UserError, match="the model went away"):
        run(folder, captioner)
    # name order: blue, green, red: blue was written before the stop, nothing after it.
    assert (folder / "blue.txt").read_text() == "blue, square\n"
    assert not (folder / "green.txt").exists() and not (folder / "red.txt").exists()


def test_batches_follow_the_captioner_size_and_kept_images_are_not_sent(folder):
    (folder / "blue.txt").write_text("kept", encoding="utf-8")
    captioner = ColourNamer(batch_size=2)
    run(folder, captioner, recursive=True)
    assert captioner.batches == [2, 1]


def test_progress_events_for_the_job_page(folder, tmp_path, monkeypatch):
    progress_file = tmp_path / "progress.jsonl"
    monkeypatch.setenv(PROGRESS_FILE_VARIABLE, str(progress_file))
    run(folder, ColourNamer(batch_size=1), recursive=True)
    events = [json.loads(line) for line in progress_file.read_text().splitlines()]
    assert events[0] == {"event": "tool_progress", "done": 0, "total": 4, "unit": "images"}
    assert events[-1] == {"event": "tool_progress", "done": 4, "total": 4, "unit": "images"}


def test_a_folder_that_is_not_there_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"missing does not exist; pass the folder that holds the images"):
        find_images(tmp_path / "missing")


def test_a_caption_is_written_on_one_line(folder):
    class Chatty(ColourNamer):
        def caption(self, images):
            return [f"{text}.\n\nIt is\tsquare.\x07" for text in super().caption(images)]

    run(folder, Chatty(), CaptionPolicy(prefix="sks,"))
    assert (folder / "red.txt").read_text() == "sks, red, square. It is square.\n"


def test_debug_prints_each_caption_as_it_is_written(folder, capsys):
    """kohya's --debug of its BLIP and GIT scripts, for every captioner (here an endpoint)."""
    from fake_openai_server import fake_openai_server
    from loracraft.tools.caption import main

    with fake_openai_server() as server:
        assert main([str(folder), "--endpoint", server.url, "--model", "m", "--debug"]) == 0
    out = capsys.readouterr().out
    shown = re.findall(r"^(\w+)\.png: 24x16 rgb\((\d+), (\d+), (\d+)\)$", out, re.MULTILINE)
    assert sorted(name for name, *_ in shown) == ["blue", "green", "red"]
    for name, *rgb in shown:  # each line is its own image's caption (JPEG moves a colour by a step or two)
        assert all(abs(int(got) - want) <= 3 for got, want in zip(rgb, COLOURS[name], strict=True))


@pytest.mark.parametrize("extension", ["txt", "."])
def test_a_caption_extension_without_its_dot_is_one_line_before_anything_is_written(folder, extension):
    from loracraft.tools.caption import main

    with pytest.raises(
        UserError, match=rf"^--caption_extension '{re.escape(extension)}': start it with a dot"
    ):
        main(
            [
                str(folder),
                "--endpoint",
                "http://127.0.0.1:9/v1",
                "--model",
                "m",
                "--caption_extension",
                extension,
            ]
        )
    assert not list(folder.rglob("*txt"))


def test_caption_files_are_replaced_atomically(folder):
    """A new file moved over the old one (a new inode, no temporary file left): an interrupted run never
    leaves half a caption."""
    from loracraft.atomic import leftover_temp_files

    (folder / "red.txt").write_text("old words", encoding="utf-8")
    before = (folder / "red.txt").stat().st_ino
    run(folder, ColourNamer(), CaptionPolicy(overwrite=True))
    assert (folder / "red.txt").stat().st_ino != before
    assert (folder / "red.txt").read_text() == "red, square\n"
    assert leftover_temp_files(folder / "red.txt") == []
