"""Small copies of a dataset's images for the caption editor's gallery and its large view.

Gradio sends an event's image files to the browser only from its working folder, the system's temp
folder or launch's `allowed_paths`, and a dataset can be anywhere: the editor shows copies it makes
under the temp folder (the user's images are only read). A copy is made once per version of an image
(its path, size and modification time), so a new filter or a reload does not decode the folder again.
Copies are upright, as training sees the image (EXIF orientation applied, transparency on white); an
image that cannot be decoded is shown as a grey square and the reason is given instead.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path

from PIL import Image

from loracraft.atomic import write_atomic
from loracraft.data.images import ImageFileError, decode_upright, open_image, upright_size

PREVIEW_FOLDER = Path(tempfile.gettempdir()) / "loracraft-previews"
THUMBNAIL_SIDE = 256
LARGE_SIDE = 1024
_PLACEHOLDER_GREY = (128, 128, 128)


def preview(image: Path, longest_side: int) -> tuple[Path, str | None]:
    """A JPEG copy of `image` whose longest side is at most `longest_side`, and None; for an image that
    cannot be read, a grey square and the one-line reason."""
    try:
        version = image.stat()
    except OSError as err:
        return _placeholder(longest_side), f"{image}: {err.strerror or err}"
    key = f"{image.resolve()}|{version.st_size}|{version.st_mtime_ns}|{longest_side}"
    copy = PREVIEW_FOLDER / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.jpg"
    if copy.is_file():
        return copy, None
    try:
        small = _downscaled(image, longest_side)
    except ImageFileError as err:
        return _placeholder(longest_side), str(err)
    PREVIEW_FOLDER.mkdir(parents=True, exist_ok=True)
    write_atomic(copy, lambda tmp: small.save(tmp, format="JPEG", quality=90))
    return copy, None


def _downscaled(image: Path, longest_side: int) -> Image.Image:
    with open_image(image) as opened:
        width, height = upright_size(opened)
        scale = min(1.0, longest_side / max(width, height))
        size = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
        rgb, _alpha = decode_upright(opened, image, at_least=size)
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    return rgb


def _placeholder(longest_side: int) -> Path:
    copy = PREVIEW_FOLDER / f"unreadable-{longest_side}.png"
    if not copy.is_file():
        PREVIEW_FOLDER.mkdir(parents=True, exist_ok=True)
        grey = Image.new("RGB", (longest_side, longest_side), _PLACEHOLDER_GREY)
        write_atomic(copy, lambda tmp: grey.save(tmp, format="PNG"))
    return copy
