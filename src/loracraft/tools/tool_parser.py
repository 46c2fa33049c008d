"""What every `loracraft` tool command shares: its parser's errors as one line, its output path rule and
its precision names.

kohya's scripts take `--save_precision float|fp16|bf16` (and `--precision` for the arithmetic): the
same names here, so a guide's command line works with `loracraft` in front.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
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


def add_caption_extension_flag(parser: argparse._ActionsContainer) -> None:
    """kohya's `--caption_extension` (and its old spelling `--caption_extention`), `.txt` as kohya's tagger
    and the kohya_ss GUI write; a value without its dot is refused in one line."""
    from loracraft.caption.images import checked_caption_extension

    parser.add_argument(
        "--caption_extension",
        "--caption_extention",
        dest="caption_extension",
        default=".txt",
        type=checked_caption_extension,
        help="The caption files' extension.",
    )


def add_tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    """Where a single-file model's tokenizers are when none lie beside it and the hub is out of reach
    (the model loader's message names these flags)."""
    parser.add_argument(
        "--tokenizer_path", help="The CLIP tokenizer folder, when the model has none beside it."
    )
    parser.add_argument("--tokenizer_2_path", help="SDXL's second tokenizer folder.")


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


LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt")


def check_lora_output(save_to: str, overwrite: bool, inputs: Mapping[str, str]) -> Path:
    """--save_to: a LoRA suffix, a free path (or --overwrite), and never one of the inputs."""
    path = check_new_output(save_to, overwrite)
    if path.suffix.lower() not in LORA_SUFFIXES:
        raise UserError(f"--save_to {path}: use a .safetensors, .ckpt or .pt file name")
    for flag, given in inputs.items():
        if Path(given).exists() and path.exists() and path.samefile(given):
            raise UserError(f"--save_to {path} is the {flag} file; write the result to a new file")
    return path


def check_dynamic(method: str | None, param: float | None) -> None:
    """kohya's rule (a method needs its parameter) and the range in which each parameter means something
    (the kohya_ss GUI's checks)."""
    if method is None:
        return
    if param is None:
        raise UserError(f"--dynamic_method {method} needs --dynamic_param (e.g. 0.9 for sv_fro)")
    if method == "sv_ratio" and param < 1:
        raise UserError(
            f"--dynamic_param {param:g}: for sv_ratio it is the largest kept singular value over the "
            "smallest, at least 1 (e.g. 4)"
        )
    if method != "sv_ratio" and not 0 < param <= 1:
        raise UserError(
            f"--dynamic_param {param:g}: for {method} it is the share of the module to keep, above 0 and at "
            "most 1 (e.g. 0.9)"
        )
