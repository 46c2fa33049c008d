"""`loracraft queue`: its actions and its one-line messages (no training here: test_job_worker.py runs jobs)."""

import pytest

from loracraft.cli import main

CONFIG = """pretrained_model_name_or_path = "model.safetensors"
train_data_dir = "img"
output_dir = "out"
output_name = "{name}"
"""


@pytest.fixture
def queue_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(CONFIG.format(name=name))
    return tmp_path / "queue.sqlite"


def queue(queue_file, *argv):
    return main(["queue", *argv, "--queue", str(queue_file)])


def test_add_list_move_cancel(queue_file, tmp_path, capsys):
    assert queue(queue_file, "add", "a.toml") == 0
    assert capsys.readouterr().out == f"job 1 (a) queued at position 1: writes a in {tmp_path / 'out'}\n"
    assert queue(queue_file, "add", "b.toml", "--name", "second") == 0
    assert queue(queue_file, "move", "2", "1") == 0
    assert queue(queue_file, "cancel", "1") == 0
    capsys.readouterr()
    assert queue(queue_file, "list") == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["ID", "STATE", "NAME", "STEP", "OUTPUT", "NOTE"],
        ["2", "queued", "second", "-", str(tmp_path / "out" / "b")],
        ["1", "cancelled", "a", "-", str(tmp_path / "out" / "a")],
    ]


def test_messages_are_one_line(queue_file, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(CONFIG.format(name="x") + "resolution = 'big'\n")
    assert queue(queue_file, "add", "bad.toml") == 2
    assert capsys.readouterr().err.startswith("error: bad.toml: --resolution: ")
    assert queue(queue_file, "add", "missing.toml") == 2
    assert capsys.readouterr().err == (
        "error: missing.toml does not exist: give the path of a `loracraft train --config_file` TOML\n"
    )
    assert queue(queue_file, "stop", "3") == 2
    assert capsys.readouterr().err == (
        f"error: no job 3 in the queue {queue_file} (loracraft queue list shows the jobs)\n"
    )
    queue(queue_file, "add", "a.toml")
    capsys.readouterr()
    assert queue(queue_file, "resume", "1") == 2
    assert (
        capsys.readouterr().err
        == "error: job 1 is queued: only a stopped, interrupted or failed job resumes\n"
    )


def test_an_empty_queue_lists_and_runs_at_once(queue_file, capsys):
    assert queue(queue_file, "list") == 0
    assert capsys.readouterr().out == "the queue is empty (loracraft queue add CONFIG.toml)\n"
    assert queue(queue_file, "run") == 0


def test_the_queue_defaults_to_the_data_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORACRAFT_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.toml").write_text(CONFIG.format(name="a"))
    assert main(["queue", "add", "a.toml"]) == 0
    assert (tmp_path / "data" / "queue.sqlite").is_file()
    assert (tmp_path / "data" / "jobs" / "1" / "job.toml").read_text() == CONFIG.format(name="a")
