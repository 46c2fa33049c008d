"""OUTPUT/NAME.log: a run told in plain text beside its files, readable without TensorBoard.

A run appends to it: a header (date, loracraft's version, the dataset plan, every setting as
`key = value` with secrets hidden), then a line per event (each epoch's average loss, and what the run
adds: validation losses, sample files) and how the run ended. A resumed run continues the same file with
a "resumed at step N" line. Each line reaches the file as it is written, so a killed run's log ends at its
last event. The main process alone writes it, and a log that cannot be written costs one warning, never
the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from loracraft import __version__
from loracraft.config.load import effective_config_toml
from loracraft.config.logging_options import SECRET_SETTINGS
from loracraft.config.schema import TrainConfig

HIDDEN = "(hidden)"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def settings_lines(config: TrainConfig) -> list[str]:
    """The run's settings as `key = value` lines (NAME.toml's format, which leaves secrets out); a
    secret that is set is shown as (hidden), so the reader knows it was given."""
    hidden = [f'{name} = "{HIDDEN}"' for name in SECRET_SETTINGS if getattr(config, name) is not None]
    return effective_config_toml(config).splitlines() + hidden


class RunLog:
    """NAME.log of one run; with `writes` False (any process but the main one) it writes nothing."""

    def __init__(self, path: Path, echo: Callable[[str], None] = print, writes: bool = True):
        self.path, self.echo, self.writes = path, echo, writes

    @classmethod
    def for_run(cls, config: TrainConfig, echo: Callable[[str], None], writes: bool) -> RunLog:
        return cls(Path(config.output_dir or ".") / f"{config.output_stem}.log", echo, writes)

    def begin(self, config: TrainConfig, plan_text: str, resumed_at: int | None = None) -> None:
        """The header; a resumed run (`resumed_at`: the state's step) whose log is there writes only the
        resume line."""
        if resumed_at is None or not self.path.exists():
            head = f"==== {_now()}  loracraft {__version__}: training {config.output_stem} ===="
            plan = [f"  {line}" for line in plan_text.splitlines()]
            settings = [f"  {line}" for line in settings_lines(config)]
            self._write([head, "plan:", *plan, "settings:", *settings])
        if resumed_at is not None:
            self.line(f"resumed at step {resumed_at} (loracraft {__version__})")

    def epoch(self, epoch: int, step: int, average_loss: float) -> None:
        self.line(f"epoch {epoch}: average loss {average_loss:.6f} (step {step})")

    def line(self, text: str) -> None:
        """One event, after the time it happened."""
        self._write([f"{_now()}  {text}"])

    def end(self, outcome: Literal["finished", "stopped", "failed"], detail: str = "") -> None:
        self.line(f"{outcome}: {detail}" if detail else outcome)

    def _write(self, lines: list[str]) -> None:
        if not self.writes:
            return
        # Opened for each write: every line is on disk once written, and nothing stays open to close.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write("".join(f"{line}\n" for line in lines))
        except OSError as error:
            self.writes = False
            self.echo(f"warning: cannot write {self.path} ({error}); training goes on without it")
