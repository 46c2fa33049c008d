"""Resuming: a run continued from a state ends with the same LoRA file, byte for byte, as the run that
was never stopped; a state that cannot be continued exactly is refused in one line.

Each case trains the tiny SD1 model uninterrupted with states saved along the way, then resumes from one
saved in the middle of an epoch into another folder: both final files must be identical.
"""

import json
import os
import shlex
import signal
from pathlib import Path

import pytest

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.training import run_outputs
from loracraft.training.run_state import ADAPTER, PROGRESS
from run_helpers import train_argv

pytestmark = pytest.mark.slow

BASE_FLAGS = (
    "--resolution", "64,64", "--enable_bucket", "--min_bucket_reso", "64", "--max_bucket_reso", "128",
    "--network_dim", "4", "--network_alpha", "2", "--train_batch_size", "2", "--max_train_epochs", "3",
    "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "2",
    "--mixed_precision", "no", "--seed", "11", "--max_data_loader_n_workers", "0",
)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_kohya_dataset(tmp_path_factory.mktemp("resume-data"), reg_count=0)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    # The files record when they were written; a fixed clock makes two runs' files comparable.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


def run(tiny_sd1, dataset, output_dir: Path, *extra: str) -> int:
    return main(train_argv(tiny_sd1.single_file, dataset.train_dir, output_dir, *BASE_FLAGS, *extra))


def progress(state: Path) -> dict:
    return json.loads((state / PROGRESS).read_text())


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


CASES = {
    # Latents cached, the text encoder's LoRA training too (SD1's default).
    "cached-latents": ("--cache_latents",),
    # Latents encoded every step; optimizer steps of two batches each.
    "accumulation": ("--gradient_accumulation_steps", "2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_run_ends_with_the_uninterrupted_runs_file(case, tiny_sd1, dataset, tmp_path):
    extra = CASES[case]
    whole = tmp_path / "whole"
    assert run(tiny_sd1, dataset, whole, *extra, "--save_every_n_steps", "1", "--save_state") == 0
    states = sorted(whole.glob("toy-step*-state"))
    positions = {state: progress(state)["position"] for state in states}
    # A state in the middle of the second epoch (the resumed run skips into a later epoch's order), and
    # the one saved after the last batch of the first epoch (before its epoch's end was processed).
    middle = next(state for state, at in positions.items() if at["epoch"] == 2 and at["batch"] > 0)
    epoch_end = max(
        (state for state, at in positions.items() if at["epoch"] == 1), key=lambda s: positions[s]["batch"]
    )
    for name, state in (("resumed", middle), ("resumed-at-epoch-end", epoch_end)):
        resumed = tmp_path / name
        assert run(tiny_sd1, dataset, resumed, *extra, "--resume", str(state)) == 0
        assert (resumed / "toy.safetensors").read_bytes() == (whole / "toy.safetensors").read_bytes(), name
    assert "finished" in (resumed / "toy.toml").read_text().splitlines()[0]


def test_ctrl_c_saves_a_state_and_a_file_and_the_printed_command_resumes(
    tiny_sd1, dataset, tmp_path, monkeypatch, capsys
):
    whole = tmp_path / "whole"
    assert run(tiny_sd1, dataset, whole) == 0

    stopped = tmp_path / "stopped"
    after_step = run_outputs.RunOutputs.after_step

    def ctrl_c_at_step_4(self, position):
        after_step(self, position)
        if position.step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(run_outputs.RunOutputs, "after_step", ctrl_c_at_step_4)
    assert run(tiny_sd1, dataset, stopped) == 128 + signal.SIGINT
    monkeypatch.undo()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")

    message = capsys.readouterr().err.strip().splitlines()[-1]
    state = stopped / "toy-step00000004-state"
    assert (
        message.startswith("stopped by SIGINT at step 4 of ")
        and "saved toy-step00000004.safetensors" in message
    )
    command = message.split("Resume with: ")[1]
    assert command == f"loracraft train --config_file {stopped / 'toy.toml'} --resume {state}"
    assert (stopped / "toy-step00000004.safetensors").is_file() and (state / ADAPTER).is_file()
    assert "stopped by SIGINT at step 4" in (stopped / "toy.toml").read_text().splitlines()[0]
    assert not (stopped / "toy.safetensors").exists()

    # The printed command, as a user would paste it.
    assert main(shlex.split(command)[1:]) == 0
    assert (stopped / "toy.safetensors").read_bytes() == (whole / "toy.safetensors").read_bytes()


def test_resume_latest_takes_the_newest_complete_state(tiny_sd1, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        run(tiny_sd1, dataset, out, "--save_every_n_steps", "2", "--save_state", "--max_train_epochs", "1")
        == 0
    )
    assert progress(out / "toy-state")["position"]["step"] == 4
    (out / "toy-state" / "manifest.json").unlink()  # the newest one, cut off while saving
    capsys.readouterr()

    assert run(tiny_sd1, dataset, out, "--max_train_epochs", "1", "--resume", "latest") == 0

    printed = capsys.readouterr().out
    assert "resuming toy-step00000002-state: epoch 1, step 2 of 4" in printed


def test_changed_settings_are_refused_and_harmless_ones_said(tiny_sd1, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        run(tiny_sd1, dataset, out, "--save_every_n_steps", "3", "--save_state", "--max_train_epochs", "1")
        == 0
    )
    state = out / "toy-step00000003-state"
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    capsys.readouterr()

    code = run(
        tiny_sd1, dataset, out, "--max_train_epochs", "1", "--network_dim", "8", "--optimizer_type", "Lion",
        "--resume", str(state),
    )  # fmt: skip

    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ")
    assert f"--resume {state}: these settings differ from the saved run's: " in error
    assert "network_dim (4 -> 8)" in error and "optimizer_type (AdamW -> Lion)" in error
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before

    assert run(tiny_sd1, dataset, out, "--max_train_epochs", "1", "--logging_dir", str(tmp_path / "logs"),
               "--resume", str(state)) == 0  # fmt: skip
    note = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("note: resuming"))
    assert note == (
        "note: resuming with changed output settings: save_every_n_steps (3 -> unset), save_state (True -> False), "
        f"logging_dir (unset -> {tmp_path / 'logs'})"
    )


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda state: (state / "manifest.json").unlink(), "this state is incomplete (no manifest.json"),
        (lambda state: (state / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda state: flip_last_byte(state / ADAPTER),
         "adapter.safetensors does not match its checksum"),
    ],
    ids=["incomplete", "missing-file", "checksum"],
)  # fmt: skip
def test_a_damaged_state_is_one_line_and_nothing_is_overwritten(
    damage, expected, tiny_sd1, dataset, tmp_path, capsys
):
    out = tmp_path / "out"
    assert run(tiny_sd1, dataset, out, "--save_state_on_train_end", "--max_train_epochs", "1") == 0
    state = out / "toy-state"
    damage(state)
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    capsys.readouterr()

    assert run(tiny_sd1, dataset, out, "--max_train_epochs", "1", "--resume", str(state)) == 2

    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: --resume {state}: ") and expected in error
    assert {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_a_state_of_another_network_shape_is_refused(tiny_sd1, dataset, tmp_path, capsys):
    rank4, rank8 = tmp_path / "rank4", tmp_path / "rank8"
    assert run(tiny_sd1, dataset, rank4, "--save_state_on_train_end", "--max_train_epochs", "1") == 0
    assert run(tiny_sd1, dataset, rank8, "--save_state_on_train_end", "--max_train_epochs", "1",
               "--network_dim", "8") == 0  # fmt: skip
    # The rank-8 weights under the rank-4 state's config and manifest: the shapes disagree.
    state = rank4 / "toy-state"
    (state / ADAPTER).write_bytes((rank8 / "toy-state" / ADAPTER).read_bytes())
    manifest = json.loads((state / "manifest.json").read_text())
    from loracraft.training.state_folder import file_digest

    manifest["files"][ADAPTER] = {
        "bytes": (state / ADAPTER).stat().st_size,
        "sha256": file_digest(state / ADAPTER),
    }
    (state / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()

    assert run(tiny_sd1, dataset, tmp_path / "again", "--max_train_epochs", "1", "--resume", str(state)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the state is of another network shape" in error and "check --network_dim" in error
