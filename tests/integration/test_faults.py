"""Faults during a run: a training process killed (SIGKILL) while it caches, in a step or in a save; a disk
that fills up during a save; SIGTERM. After each, every file in the output folder loads, the next start
removes what the killed run left half-written and says so, and `--resume latest` ends with the LoRA file,
byte for byte, of the run that was never stopped.

The killed processes are real and die at exact moments (tests/dying_run.py), never after a sleep. The
reference run and the disk-full runs train in this process.
"""

import errno
import os
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest
import safetensors.torch
import torch

from data_helpers import KohyaTree, make_kohya_dataset
from dying_run import Child, Runs
from loracraft.cli import main
from loracraft.config.load import build_config, read_config_file
from loracraft.networks import lora_file
from loracraft.training.run_state import OPTIMIZER
from loracraft.training.state_folder import MANIFEST, STAGING_SUFFIX, verify_state_folder
from run_helpers import train_argv

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and SIGTERM are POSIX signals"),
]

STEPS = 12
# 8 samples in batches of 2: 3 epochs of 4 steps, a LoRA file and a state after each.
FLAGS = (
    "--resolution", "64,64", "--enable_bucket", "--min_bucket_reso", "64", "--max_bucket_reso", "128",
    "--network_dim", "4", "--network_alpha", "2", "--train_batch_size", "2", "--max_train_epochs", "3",
    "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "2",
    "--mixed_precision", "no", "--seed", "11", "--max_data_loader_n_workers", "0",
    "--cache_latents", "--cache_latents_to_disk", "--save_every_n_steps", "1", "--save_state",
)  # fmt: skip
# The files record when they were written; a fixed clock makes two runs' files comparable.
SOURCE_DATE = "1700000000"
KILLED = -signal.SIGKILL


@dataclass(frozen=True)
class Reference:
    dataset: KohyaTree
    """Its latent caches are filled."""
    lora: bytes
    """The final file of the run that was never stopped."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # First, so that the first process starts while the reference trains.
    runs = Runs(tmp_path_factory.mktemp("runs"), {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE})
    yield runs
    runs.close()


@pytest.fixture(scope="module")
def reference(runs, tiny_sd1, tmp_path_factory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    dataset = make_kohya_dataset(root, reg_count=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOURCE_DATE_EPOCH", SOURCE_DATE)
        assert main(train_argv(tiny_sd1.single_file, dataset.train_dir, root / "out", *FLAGS)) == 0
    return Reference(dataset, (root / "out" / "toy.safetensors").read_bytes())


@pytest.fixture
def fixed_clock(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", SOURCE_DATE)


def check_every_file_loads(out: Path) -> None:
    """Every LoRA and adapter file opens, every state with a manifest matches it, NAME.toml loads as a
    --config_file and says the run did not finish."""
    for path in out.rglob("*.safetensors"):
        safetensors.torch.load_file(path)
    for manifest in out.rglob(MANIFEST):
        verify_state_folder(manifest.parent, "after the kill:")
    config = out / "toy.toml"
    if config.exists():
        build_config(read_config_file(config), {})
        assert config.read_text().startswith("# loracraft run running: if this line stays")


def leftovers(out: Path) -> list[str]:
    return sorted(path.name for path in out.iterdir() if path.name.startswith("."))


def names_match(names: list[str], patterns: list[str]) -> bool:
    return len(names) == len(patterns) and all(map(fnmatch, names, patterns))


def removal_note(out: Path, names: list[str]) -> str:
    return f"note: removed {len(names)} unfinished file(s) a stopped run left in {out}: {', '.join(names)}"


def state(step: int) -> str:
    return f"toy-step{step:08d}-state"


def killed(runs: Runs, moment: str, argv: list[str], out: Path, leaves: list[str]) -> str:
    """Run until `moment`, check what is left in `out` (`leaves`: the hidden names, as patterns); returns
    what the run printed."""
    run = runs.run(moment, argv)
    assert run.code == KILLED, f"{moment}: exit {run.code}\n{run.err[-3000:]}"
    check_every_file_loads(out)
    assert names_match(leftovers(out), leaves), f"{moment}: {leftovers(out)}"
    return run.out


def test_a_run_killed_while_caching_latents_ends_with_the_uninterrupted_file_when_started_again(
    runs, reference, tiny_sd1, tmp_path, capsys
):
    dataset = make_kohya_dataset(tmp_path / "data", reg_count=0)  # its latents are not cached yet
    out = tmp_path / "out"
    argv = train_argv(tiny_sd1.single_file, dataset.train_dir, out, *FLAGS)

    # Once the first cache file is complete.
    killed(runs, "cache-written:1", argv, out, leaves=[])
    assert len(list(dataset.concept_dir.glob("*.npz"))) == 1
    # No state yet, and --resume latest says so.
    assert main([*argv, "--resume", "latest"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --resume latest: no complete state of 'toy' in {out}; states are saved with --save_state "
        "or --save_state_on_train_end"
    )

    again = runs.run("none:0", argv)
    assert again.code == 0, again.err[-3000:]
    assert "latent cache: 3 encoded, 1 reused from disk" in again.out
    assert (out / "toy.safetensors").read_bytes() == reference.lora


def test_a_run_killed_in_a_step_or_in_a_save_resumes_to_the_uninterrupted_file(
    runs, reference, tiny_sd1, tmp_path
):
    out = tmp_path / "out"
    fresh = train_argv(tiny_sd1.single_file, reference.dataset.train_dir, out, *FLAGS)
    latest = [*fresh, "--resume", "latest"]

    # Killed with step 3's state half staged: its staging folder holds one file.
    killed(runs, "state-first-file:3", fresh, out, leaves=[f".{state(3)}{STAGING_SUFFIX}"])
    assert sorted(path.name for path in out.glob("*-state")) == [state(1), state(2)]

    # --resume latest removes the staging folder and goes on from step 2; killed with step 5's LoRA file
    # written to its temporary file, not yet renamed.
    printed = killed(
        runs, "lora-before-rename:5", latest, out, leaves=[".toy-step00000005.safetensors.*.tmp"]
    )
    assert removal_note(out, [f".{state(3)}{STAGING_SUFFIX}"]) in printed
    assert f"resuming {state(2)}: epoch 1, step 2 of {STEPS}" in printed
    assert not (out / "toy-step00000005.safetensors").exists()

    # From step 4; killed in the middle of step 7.
    temporary = leftovers(out)
    printed = killed(runs, "mid-step:3", latest, out, leaves=[])
    assert removal_note(out, temporary) in printed
    assert f"resuming {state(4)}: epoch 1, step 4 of {STEPS}" in printed

    # Resumed from the older step 4 (its step 5 exists: the new one replaces it), killed between the two
    # renames of the replacement: the old state waits as .NAME.old, the new one staged beside it.
    killed(
        runs,
        "state-between-renames:5",
        [*fresh, "--resume", str(out / state(4))],
        out,
        leaves=[f".{state(5)}.old", f".{state(5)}{STAGING_SUFFIX}"],
    )
    assert not (out / state(5)).exists()

    finished = runs.run("none:0", latest)
    assert finished.code == 0, finished.err[-3000:]
    assert f"note: put back {state(5)}, whose replacement a stopped run never finished" in finished.out
    assert removal_note(out, [f".{state(5)}{STAGING_SUFFIX}"]) in finished.out
    assert f"resuming {state(6)}: epoch 2, step 6 of {STEPS}" in finished.out
    assert leftovers(out) == []
    assert (out / "toy.safetensors").read_bytes() == reference.lora


def full_disk(tmp: Path) -> None:
    """Write part of a file, then fail as a write to a full disk does."""
    tmp.write_bytes(b"\0" * 4096)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))


def visible_files(out: Path) -> dict[Path, bytes]:
    return {
        path.relative_to(out): path.read_bytes()
        for path in out.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(out).parts)
    }


def assert_only_the_status_changed(out: Path, before: dict[Path, bytes]) -> None:
    """Every file as it was, but NAME.toml's first line, which now says the run failed, and NAME.log,
    which ends with it (the simulated full disk still takes those small writes)."""
    after = visible_files(out)
    status, *config = after.pop(Path("toy.toml")).decode().splitlines(keepends=True)
    assert status.startswith("# loracraft run failed: could not write ")
    assert "".join(config).encode() == before.pop(Path("toy.toml")).split(b"\n", 1)[1]
    log_before, log_after = before.pop(Path("toy.log")), after.pop(Path("toy.log"))
    assert log_after.startswith(log_before)
    assert log_after[len(log_before) :].decode().split("  ", 1)[1].startswith("failed: could not write ")
    assert after == before


def test_a_full_disk_at_the_first_save_stops_in_one_line(
    reference, tiny_sd1, tmp_path, monkeypatch, capsys, fixed_clock
):
    out = tmp_path / "out"
    write_atomic = lora_file.write_atomic
    before: dict[Path, bytes] = {}

    def first_lora_fails(path, write):
        if Path(path).name == "toy-step00000001.safetensors":
            before.update(visible_files(out))
            write = full_disk
        write_atomic(path, write)

    monkeypatch.setattr(lora_file, "write_atomic", first_lora_fails)
    assert main(train_argv(tiny_sd1.single_file, reference.dataset.train_dir, out, *FLAGS)) == 2

    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: could not write {out / 'toy-step00000001.safetensors'}: No space left on device: the disk "
        "is full; free some space (or choose another --output_dir). The files saved before are intact; then "
        "run it again"
    )
    assert sorted(before) == [Path("toy.log"), Path("toy.toml")]
    assert_only_the_status_changed(out, before)
    assert leftovers(out) == []


def test_a_full_disk_at_a_later_save_keeps_the_saved_states_and_resumes(
    reference, tiny_sd1, tmp_path, monkeypatch, capsys, fixed_clock
):
    out = tmp_path / "out"
    argv = train_argv(tiny_sd1.single_file, reference.dataset.train_dir, out, *FLAGS)
    save = torch.save
    before: dict[Path, bytes] = {}

    def sixth_state_fails(obj, path, *args, **kwargs):
        path = Path(path)
        if path.name == OPTIMIZER and path.parent.name == f".{state(6)}{STAGING_SUFFIX}":
            before.update(visible_files(out))
            full_disk(path)
        save(obj, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", sixth_state_fails)
        assert main(argv) == 2

    err = capsys.readouterr().err
    assert "Traceback" not in err
    resume = f"loracraft train --config_file {out / 'toy.toml'} --resume {out / state(5)}"
    assert err.strip().splitlines()[-1] == (
        f"error: could not write {out / state(6)}: No space left on device: the disk is full; free some "
        f"space (or choose another --output_dir). The files saved before are intact; then resume with: {resume}"
    )
    # Step 6's LoRA file was written before its state.
    assert Path("toy-step00000006.safetensors") in before and Path(state(5), OPTIMIZER) in before
    assert_only_the_status_changed(out, before)
    assert leftovers(out) == []

    # Space freed.
    assert main([*argv, "--resume", "latest"]) == 0
    assert f"resuming {state(5)}: epoch 2, step 5 of {STEPS}" in capsys.readouterr().out
    assert (out / "toy.safetensors").read_bytes() == reference.lora


def wait_for(path: Path, child: Child, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert child.running(), f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.02)


def test_sigterm_saves_a_state_and_a_file_and_the_printed_command_resumes(
    runs, reference, tiny_sd1, tmp_path
):
    out = tmp_path / "out"
    child = runs.start("none:0", train_argv(tiny_sd1.single_file, reference.dataset.train_dir, out, *FLAGS))
    wait_for(out / "toy-step00000002.safetensors", child)
    os.kill(child.pid, signal.SIGTERM)
    stopped = child.finish()

    assert stopped.code == 128 + signal.SIGTERM == 143
    message = stopped.err.strip().splitlines()[-1]
    # The step it stops at depends on when the signal lands.
    match = re.fullmatch(
        rf"stopped by SIGTERM at step (\d+) of {STEPS}; saved toy-step(\d{{8}})\.safetensors and "
        r"toy-step\2-state\. Resume with: (.+)",
        message,
    )
    assert match, message
    step, command = int(match[1]), match[3]
    assert command == f"loracraft train --config_file {out / 'toy.toml'} --resume {out / state(step)}"
    assert (out / f"toy-step{step:08d}.safetensors").is_file()
    verify_state_folder(out / state(step), "after SIGTERM:")
    assert f"stopped by SIGTERM at step {step}" in (out / "toy.toml").read_text().splitlines()[0]
    assert not (out / "toy.safetensors").exists()

    resumed = runs.run("none:0", shlex.split(command)[1:])
    assert resumed.code == 0, resumed.err[-3000:]
    assert (out / "toy.safetensors").read_bytes() == reference.lora
