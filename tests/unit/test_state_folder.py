"""State folders appear whole or not at all; a damaged one is named in one line."""

import os

import pytest

from loracraft.errors import UserError
from loracraft.training.state_folder import (
    MANIFEST,
    remove_state_folder,
    replaced_path,
    staging_path,
    verify_state_folder,
    write_state_folder,
)


def writers(text: str) -> dict:
    return {
        "a.txt": lambda path: path.write_text(text),
        "b.bin": lambda path: path.write_bytes(text.encode() * 3),
    }


def test_a_written_folder_verifies_and_replacing_it_leaves_no_helpers(tmp_path):
    target = tmp_path / "toy-state"
    write_state_folder(target, writers("one"))
    verify_state_folder(target, "--resume")
    write_state_folder(target, writers("two"))

    verify_state_folder(target, "--resume")
    assert (target / "a.txt").read_text() == "two"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["toy-state"]
    assert sorted(path.name for path in target.iterdir()) == sorted(["a.txt", "b.bin", MANIFEST])


def test_a_failing_write_keeps_the_old_folder_and_removes_the_staged_one(tmp_path):
    target = tmp_path / "toy-state"
    write_state_folder(target, writers("one"))

    def full_disk(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_state_folder(target, {**writers("two"), "c.bin": full_disk})

    verify_state_folder(target, "--resume")
    assert (target / "a.txt").read_text() == "one"
    assert not staging_path(target).exists() and not replaced_path(target).exists()


def test_a_folder_without_manifest_or_with_a_changed_file_is_refused_by_name(tmp_path):
    target = tmp_path / "toy-state"
    write_state_folder(target, writers("one"))
    (target / "b.bin").write_bytes(b"changed!!")
    with pytest.raises(UserError, match=r"^--resume .*toy-state: b.bin does not match its checksum"):
        verify_state_folder(target, "--resume")
    (target / MANIFEST).unlink()
    with pytest.raises(
        UserError, match=r"this state is incomplete \(no manifest.json: its save was cut off\)"
    ):
        verify_state_folder(target, "--resume")
    with pytest.raises(UserError, match=r"^--resume .*nowhere: no such state folder$"):
        verify_state_folder(tmp_path / "nowhere", "--resume")


def test_a_removal_cut_short_leaves_no_half_state_under_a_states_name(tmp_path, monkeypatch):
    target = tmp_path / "toy-state"
    write_state_folder(target, writers("one"))
    # Killed inside the removal: the hidden folder stays for the next start's sweep (test_output_folder).
    monkeypatch.setattr("shutil.rmtree", lambda *args, **kwargs: None)
    remove_state_folder(target)
    assert not target.exists()
    assert [path.name for path in tmp_path.iterdir()] == [".toy-state.removed"]


def test_the_files_are_readable_by_others_like_any_written_file(tmp_path):
    target = tmp_path / "toy-state"
    write_state_folder(target, writers("one"))
    assert os.access(target / "a.txt", os.R_OK)
