"""What every `loracraft` tool command shares: its parser's errors as one line, its output path rule and
its precision names.

kohya's scripts take `--save_precision float|fp16|bf16` (and `--precision` for the arithmetic): the
same names here, so a guide's command line works with `loracraft` in front.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

import torch

from loracraft.errors import UserError

PRECISIONS = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ToolParser(argparse.ArgumentParser):
    """An argparse parser whose mistakes are one line (`loracraft resize: ...`), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog.removeprefix('loracraft ')}: {message}")


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace an existing output (refused otherwise)."
    )


def check_new_output(path: str | Path, overwrite: bool, flag: str = "--save_to") -> Path:
    """The output path, refused in one line when something is there already and --overwrite is not given:
    a tool never replaces a file the user made without being told to."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{flag} {path} already exists; choose another path or add --overwrite to replace it")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: the folder {path.parent} does not exist; create it first")
    return path


def compute_device(name: str | None, flag: str = "--device") -> torch.device:
    """The device a tool computes on (kohya's --device; the CPU when not given), refused in one line when
    this machine has none such (the kohya_ss GUI passes --device cuda by default)."""
    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag} {name}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise UserError(
            f"{flag} {name}: this machine has no such CUDA device; leave {flag} out to use the CPU"
        )
    return device
