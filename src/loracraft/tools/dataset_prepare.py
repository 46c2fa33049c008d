"""`loracraft dataset prepare`: the kohya_ss GUI's "Dataset Preparation" tab as a command.

    OUTPUT/img/{repeats}_{instance} {class}/   the training images and their caption files
    OUTPUT/reg/{reg_repeats}_{class}/           the regularization images (with --reg_images)
    OUTPUT/log/  OUTPUT/model/                  for --logging_dir and --output_dir

The user's files are copied (or hard- or symbolically linked with --link), never moved, and nothing
that already exists is overwritten: every destination is checked before the first file is written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loracraft.atomic import write_atomic
from loracraft.data.scan import IMAGE_EXTENSIONS, list_images
from loracraft.errors import UserError
from loracraft.tools.tool_parser import ToolParser

CAPTION_EXTENSIONS = (".txt", ".caption")
# Characters Windows forbids in folder names; a prompt holding one cannot name a kohya folder anywhere.
_FORBIDDEN_IN_NAMES = set('<>:"/\\|?*')
LINK_MODES = ("hard", "symlink")


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft dataset prepare",
        description="Build kohya's img/ reg/ log/ model/ folder tree from a folder of images.",
    )
    parser.add_argument("--instance_prompt", required=True, help="The new token, e.g. 'sks' or a name.")
    parser.add_argument("--class_prompt", default="", help="The class it belongs to, e.g. 'dog'.")
    parser.add_argument("--train_images", required=True, type=Path, help="Folder of training images.")
    parser.add_argument("--repeats", type=int, default=40, help="Repeats per epoch of each image [40].")
    parser.add_argument("--reg_images", type=Path, help="Folder of regularization images of the class.")
    parser.add_argument("--reg_repeats", type=int, default=1, help="Repeats of each reg image [1].")
    parser.add_argument("--output", required=True, type=Path, help="Folder to create the tree in.")
    parser.add_argument(
        "--link", nargs="?", const="hard", choices=LINK_MODES,
        help="Link instead of copying: hard (default for a bare --link) or symlink.",
    )  # fmt: skip
    parser.add_argument(
        "--caption_extension",
        default=".txt",
        help="Extension of your caption files [.txt]; .caption is copied too.",
    )
    return parser


@dataclass(frozen=True)
class FileCopy:
    source: Path
    target: Path


@dataclass(frozen=True)
class Concept:
    """One folder of the tree and what goes into it."""

    folder: Path
    files: tuple[FileCopy, ...]
    images: int
    captions: int


def _check_prompt(flag: str, text: str) -> str:
    text = text.strip()
    bad = sorted(_FORBIDDEN_IN_NAMES & set(text))
    if bad:
        raise UserError(f"{flag} {text!r} cannot name a folder: remove {' '.join(bad)}")
    return text


def _concept(source: Path, flag: str, folder: Path, caption_extensions: Sequence[str]) -> Concept:
    if not source.is_dir():
        raise UserError(f"{flag} {source} does not exist or is not a folder")
    images = list_images(source)
    if not images:
        raise UserError(f"{flag} {source} holds no images ({' '.join(IMAGE_EXTENSIONS)}) at its top level")
    # The scan lists broken links among the images so that training names them; a copy would fail halfway.
    broken = [image for image in images if not image.is_file()]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise UserError(
            f"{flag}: {broken[0]}{more}: broken symbolic link(s), to nothing or to themselves; nothing was "
            "written. Remove them or restore their targets"
        )
    files, captions = [], 0
    for image in images:
        files.append(FileCopy(image, folder / image.name))
        for extension in caption_extensions:
            caption = image.with_name(image.stem + extension)
            if caption.is_file():
                files.append(FileCopy(caption, folder / caption.name))
                captions += 1
    return Concept(folder, tuple(files), len(images), captions)


def _refuse_files_in_the_way(output: Path, folders: Sequence[Path]) -> None:
    """A file where the tree needs a folder would stop the folders' creation halfway: refuse first."""
    for folder in folders:
        existing = next(
            (path for path in (folder, *folder.parents) if path.exists() or path.is_symlink()), None
        )
        if existing is None or existing.is_dir():
            continue
        if existing == output:
            raise UserError(
                f"--output {output} is an existing file, not a folder; nothing was written. Give a folder "
                "path (a new folder is created)"
            )
        raise UserError(
            f"{existing} is a file where the tree needs a folder; nothing was written. Move that file or "
            "choose another --output folder"
        )


def plan_tree(args: argparse.Namespace) -> list[Concept]:
    """What goes where; raises before anything is written when a target exists or an input is wrong."""
    instance = _check_prompt("--instance_prompt", args.instance_prompt)
    class_prompt = _check_prompt("--class_prompt", args.class_prompt)
    if not instance:
        raise UserError(
            "--instance_prompt is empty; give the token the LoRA learns, e.g. --instance_prompt sks"
        )
    for flag, value in (("--repeats", args.repeats), ("--reg_repeats", args.reg_repeats)):
        if value < 1:
            raise UserError(f"{flag} must be 1 or more, got {value}")
    if args.reg_images and not class_prompt:
        raise UserError("--reg_images needs --class_prompt: the reg folder is named after the class")
    extensions = tuple(dict.fromkeys((args.caption_extension, *CAPTION_EXTENSIONS)))
    concept_name = f"{instance} {class_prompt}".strip()
    concepts = [
        _concept(
            args.train_images,
            "--train_images",
            args.output / "img" / f"{args.repeats}_{concept_name}",
            extensions,
        )
    ]
    if args.reg_images:
        reg_folder = args.output / "reg" / f"{args.reg_repeats}_{class_prompt}"
        concepts.append(_concept(args.reg_images, "--reg_images", reg_folder, extensions))
    _refuse_files_in_the_way(args.output, tree_folders(concepts, args.output))
    existing = [f.target for c in concepts for f in c.files if f.target.exists() or f.target.is_symlink()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UserError(
            f"{existing[0]}{more} already exist(s); nothing was written. Choose a new --output folder "
            "or remove those files"
        )
    return concepts


def _transfer(link: str | None) -> Callable[[Path, Path], None]:
    if link == "hard":
        return os.link
    if link == "symlink":
        return lambda source, target: os.symlink(source.resolve(), target)
    # Copy to a temporary name and rename, so an interrupted run leaves no half-written image behind.
    return lambda source, target: write_atomic(target, lambda tmp: shutil.copy2(source, tmp))


def tree_folders(concepts: Sequence[Concept], output: Path) -> list[Path]:
    return [output / "log", output / "model", *(c.folder for c in concepts)]


def build_tree(concepts: Sequence[Concept], output: Path, link: str | None) -> None:
    transfer = _transfer(link)
    for folder in tree_folders(concepts, output):
        folder.mkdir(parents=True, exist_ok=True)
    for concept in concepts:
        for file in concept.files:
            try:
                transfer(file.source, file.target)
            except OSError as err:
                hint = " (hard links need one drive: use --link symlink or copy)" if link == "hard" else ""
                raise UserError(
                    f"cannot {link or 'copy'} {file.source} to {file.target}: {err}{hint}"
                ) from err


def train_command(output: Path, has_reg: bool, caption_extension: str) -> str:
    parts = [
        "loracraft train", "--pretrained_model_name_or_path MODEL.safetensors",
        f"--train_data_dir {shlex.quote(str(output / 'img'))}",
    ]  # fmt: skip
    if has_reg:
        parts.append(f"--reg_data_dir {shlex.quote(str(output / 'reg'))}")
    parts += [
        f"--output_dir {shlex.quote(str(output / 'model'))}",
        f"--logging_dir {shlex.quote(str(output / 'log'))}",
        f"--caption_extension {shlex.quote(caption_extension)}",
    ]
    return " \\\n    ".join(parts)


def report(concepts: Sequence[Concept], args: argparse.Namespace) -> str:
    verb = {"hard": "hard-linked", "symlink": "symlinked"}.get(args.link, "copied")
    lines = [f"Prepared {args.output} ({verb}; your files were not moved):"]
    for concept in concepts:
        relative = concept.folder.relative_to(args.output)
        lines.append(f"  {relative}/: {concept.images} images, {concept.captions} caption files")
        if concept.captions == 0 and concept is concepts[0]:
            concept_name = concept.folder.name.split("_", 1)[1]
            lines.append(f"    no captions: every image trains on the folder caption '{concept_name}'")
    lines += [
        "  log/  model/",
        "Train with:",
        "  " + train_command(args.output, len(concepts) > 1, args.caption_extension),
    ]
    return "\n".join(lines)


def main(argv: list[str], echo: Callable[[str], None] = print) -> int:
    args = make_parser().parse_args(argv)
    concepts = plan_tree(args)
    build_tree(concepts, args.output, args.link)
    echo(report(concepts, args))
    return 0
