"""The output folder before a run: usable, swept of what a killed run left, and NAME.toml's status line."""

import errno
import os

import pytest
import tomllib

from loracraft.errors import UserError
from loracraft.training.output_folder import (
    check_output_folder,
    clean_stale_files,
    run_status_line,
    write_problem,
)


def test_leftovers_of_the_same_name_go_and_everything_else_stays(tmp_path):
    left = [
        ".toy.safetensors.a1b2.tmp",
        ".toy-000002.safetensors.x_9.tmp",
        ".toy-step00000010.safetensors.q.tmp",
        ".toy.toml.zz.tmp",
    ]
    for name in left:
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / ".toy-step00000010-state.partial").mkdir()
    (tmp_path / ".toy-000001-state.removed").mkdir()
    kept = [
        "toy.safetensors",
        "toy-000001.safetensors",
        ".toy2.safetensors.a.tmp",
        ".other.safetensors.a.tmp",
        "notes.tmp",
    ]
    for name in kept:
        (tmp_path / name).write_bytes(b"mine")
    lines = []

    clean_stale_files(tmp_path, "toy", lines.append)

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(kept)
    assert len(lines) == 1 and lines[0].startswith(
        f"note: removed 6 unfinished file(s) a stopped run left in {tmp_path}: "
    )


def test_a_state_whose_replacement_never_arrived_is_put_back(tmp_path):
    (tmp_path / ".toy-state.old").mkdir()
    (tmp_path / ".toy-state.old" / "manifest.json").write_text("{}")
    lines = []
    clean_stale_files(tmp_path, "toy", lines.append)
    assert (tmp_path / "toy-state" / "manifest.json").is_file()
    assert lines == ["note: put back toy-state, whose replacement a stopped run never finished"]


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(
            UserError, match=r"^--output_dir .*locked: Permission denied: this folder cannot be written; "
        ):
            check_output_folder(locked)
    finally:
        locked.chmod(0o700)


def test_write_problems_say_what_to_do():
    assert "the disk is full; free some space" in write_problem(
        OSError(errno.ENOSPC, "No space left on device")
    )
    assert "cannot be written" in write_problem(OSError(errno.EROFS, "Read-only file system"))


def test_the_status_line_keeps_the_config_loadable():
    text = run_status_line("running: if this line stays, the run did not finish") + 'output_name = "toy"\n'
    assert text.startswith("# loracraft run running: ") and tomllib.loads(text) == {"output_name": "toy"}


def test_a_read_only_file_system_is_one_line(tmp_path, monkeypatch):
    # Root may write anywhere, so the file system's answer is simulated: what a read-only mount says.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.TemporaryFile", read_only)
    with pytest.raises(UserError) as raised:
        check_output_folder(tmp_path / "out")
    assert str(raised.value) == (
        f"--output_dir {tmp_path / 'out'}: Read-only file system: this folder cannot be written; choose another "
        "--output_dir or fix its permissions"
    )
