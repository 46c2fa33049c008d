"""The images a caption run works on, and each one decoded as the captioners take it.

The images are found as training finds them (data/scan.py's extensions, hidden files left out), in name
order, with `--recursive` in every subfolder too. Each is decoded upright (EXIF orientation applied, as
training sees it) to 8-bit RGB, transparency on white.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from loracraft.data.images import decode_upright, open_image
from loracraft.data.scan import list_images, read_folder
from loracraft.errors import UserError


def find_images(folder: Path, recursive: bool = False) -> list[Path]:
    """The images of `folder` (and with `recursive` of its subfolders, hidden ones left out), in order."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{folder} {what}; pass the folder that holds the images")
    images = list_images(folder)
    if recursive:
        for entry in sorted(read_folder(folder, "image folder"), key=lambda entry: entry.name):
            if entry.is_dir() and not entry.name.startswith("."):
                images += find_images(Path(entry.path), recursive=True)
    return images


def load_rgb(path: Path) -> Image.Image:
    """The image upright in 8-bit RGB, its `info["path"]` naming it for a captioner's messages; an
    unreadable file is an ImageFileError naming it."""
    with open_image(path) as img:
        rgb, _alpha = decode_upright(img, path)
    rgb.info["path"] = os.fspath(path)
    return rgb


def checked_caption_extension(caption_extension: str) -> str:
    """`--caption_extension` as kohya appends it to the image's stem: it must start with its dot."""
    if not caption_extension.startswith(".") or caption_extension == ".":
        raise UserError(f"--caption_extension {caption_extension!r}: start it with a dot, e.g. .txt")
    return caption_extension


def caption_path(image: Path, caption_extension: str) -> Path:
    """Where the caption of `image` is: `<stem><caption_extension>` beside it, as kohya reads it."""
    return image.with_name(image.stem + caption_extension)


def relative_name(path: Path, folder: Path) -> str:
    """`path` as the user knows it in a run over `folder` (`sub/a.png`)."""
    try:
        return os.fspath(path.relative_to(folder))
    except ValueError:
        return os.fspath(path)
