"""`loracraft train` in a process that kills itself with SIGKILL at one exact moment, for the fault tests.

    runs = Runs(log_dir, env)
    finished = runs.run("state-first-file:3", ["train", "--pretrained_model_name_or_path", ...])

A moment is `NAME:N`:
  cache-written:N           right after the Nth latent cache file (.npz) is renamed into place
  state-first-file:S        when the first file of step S's state is written in its staging folder
  lora-before-rename:S      when step S's LoRA file is written to its temporary file, before the rename
  state-between-renames:S   between the two renames that replace step S's existing state folder
  mid-step:N                in this process's Nth training step, after the loss, before the update
  none:0                    never (the run ends as it would)

A SIGKILL cannot be caught: the process ends as a power cut or the OOM killer would end it. Each run is
a process of its own, forked from a server process that imported torch, diffusers and loracraft once
(seconds that every `loracraft train` would spend again otherwise).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from loracraft.cli import main
from loracraft.training import state_folder, trainer

# The parent side.


@dataclass(frozen=True)
class Finished:
    code: int
    """The exit status; -9 for a process that killed itself."""
    out: str
    err: str


class Child:
    def __init__(self, runs: Runs, pid: int, out: Path, err: Path):
        self.runs, self.pid, self._out, self._err = runs, pid, out, err

    def running(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def finish(self, timeout: float = 300) -> Finished:
        code = self.runs.receive(timeout)["code"]
        return Finished(code, self._out.read_text(), self._err.read_text())


class Runs:
    """Training processes forked one at a time from a process that has imported torch, diffusers and
    loracraft once (seconds each time otherwise). `log_dir` keeps their output."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]):
        self.log_dir, self.count, self.unread = log_dir, 0, b""
        self.current: Child | None = None
        self.server = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def start(self, moment: str, argv: Sequence[str | os.PathLike]) -> Child:
        """`loracraft ARGV` in a process that dies at `moment` (see the module's doc)."""
        self.count += 1
        out, err = self.log_dir / f"run{self.count}.out", self.log_dir / f"run{self.count}.err"
        order = {"moment": moment, "argv": [str(arg) for arg in argv], "out": str(out), "err": str(err)}
        self.server.stdin.write(json.dumps(order).encode() + b"\n")
        self.server.stdin.flush()
        self.current = Child(self, self.receive(120)["pid"], out, err)
        return self.current

    def run(self, moment: str, argv: Sequence[str | os.PathLike]) -> Finished:
        return self.start(moment, argv).finish()

    def receive(self, timeout: float) -> dict:
        """The server's next message (a JSON line)."""
        while b"\n" not in self.unread:
            ready, _, _ = select.select([self.server.stdout], [], [], timeout)
            data = os.read(self.server.stdout.fileno(), 4096) if ready else b""
            if not data:
                self.close()
                raise RuntimeError(f"no answer from the training processes' server within {timeout} s")
            self.unread += data
        line, self.unread = self.unread.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        """Stop the server, and the run it started last if a failed test left it running."""
        if self.current is not None and self.current.running():
            os.kill(self.current.pid, signal.SIGKILL)
        self.server.kill()
        self.server.wait()


def serve() -> None:
    """For each order read from stdin: fork, answer the child's pid, and its exit status when it ends."""
    # As in the test process (conftest.py): the same thread count computes the same bits.
    torch.set_num_threads(1)
    for line in sys.stdin.buffer:
        order = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_order(order)
        answer(pid=pid)
        answer(code=os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))


def answer(**message: int) -> None:
    os.write(sys.stdout.fileno(), json.dumps(message).encode() + b"\n")


def run_order(order: dict) -> None:
    """The forked child: its own output files, no stdin, the moment armed, then loracraft."""
    code = 1
    try:
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, path in ((1, order["out"]), (2, order["err"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        arm(order["moment"])
        code = main(order["argv"])
    except SystemExit as stop:  # argparse's --help and its errors
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Like multiprocessing's forked children: the server's exit handlers are not this process's.
        os._exit(code)


# The child side: where it dies.


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def on_nth(count: int, matches: Callable[[Path, Path], bool]) -> Callable[[Path, Path], bool]:
    """A predicate that holds on the `count`th call for which `matches` holds."""
    seen = 0

    def nth(src: Path, dst: Path) -> bool:
        nonlocal seen
        if not matches(src, dst):
            return False
        seen += 1
        return seen == count

    return nth


def never(_src: Path, _dst: Path) -> bool:
    return False


def kill_around_replace(*, before: Callable[[Path, Path], bool], after: Callable[[Path, Path], bool]) -> None:
    # Every rename of the atomic writes and of the state folders goes through os.replace.
    replace = os.replace

    def dying_replace(src, dst, **kwargs) -> None:
        if before(Path(src), Path(dst)):
            die()
        replace(src, dst, **kwargs)
        if after(Path(src), Path(dst)):
            die()

    os.replace = dying_replace


def step_suffix(step: int, tail: str) -> str:
    return f"-step{step:08d}{tail}"


def kill_after_first_state_file(step: int) -> None:
    # A state file's checksum is taken once the file is written and flushed to the disk.
    digest = state_folder.file_digest
    staging = step_suffix(step, f"-state{state_folder.STAGING_SUFFIX}")

    def dying_digest(path: Path) -> str:
        if path.parent.name.endswith(staging):
            die()
        return digest(path)

    state_folder.file_digest = dying_digest


def kill_mid_step(count: int) -> None:
    loss_of = trainer.diffusion_loss
    calls = 0

    def dying_loss(*args, **kwargs):
        nonlocal calls
        loss = loss_of(*args, **kwargs)
        calls += 1
        if calls == count:
            die()
        return loss

    trainer.diffusion_loss = dying_loss


def arm(moment: str) -> None:
    name, number = moment.split(":")
    n = int(number)
    if name == "cache-written":
        kill_around_replace(before=never, after=on_nth(n, lambda _src, dst: dst.suffix == ".npz"))
    elif name == "lora-before-rename":
        lora = step_suffix(n, ".safetensors")
        kill_around_replace(before=lambda _src, dst: dst.name.endswith(lora), after=never)
    elif name == "state-between-renames":
        replaced = step_suffix(n, f"-state{state_folder.REPLACED_SUFFIX}")
        kill_around_replace(before=never, after=lambda _src, dst: dst.name.endswith(replaced))
    elif name == "state-first-file":
        kill_after_first_state_file(n)
    elif name == "mid-step":
        kill_mid_step(n)
    elif name != "none":
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    serve()
