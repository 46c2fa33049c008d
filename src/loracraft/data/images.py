"""Turning an image file into pixels: open it safely, decode it upright as RGB (and its alpha), resize, crop.

Every path from a file to pixels goes through `open_image` and `decode_upright`, so each image meets the
same size limit, the same EXIF orientation and the same colour conversion in scanning, checking,
caching and training.
"""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from loracraft.data.buckets import Size
from loracraft.data.file_errors import describe_os_error, is_access_error
from loracraft.errors import UserError

MAX_IMAGE_PIXELS = 100_000_000
"""The largest image loracraft opens: 100 megapixels (300 MB as 8-bit RGB). Larger files are refused
from their header, before any pixel is decoded: a decompression bomb (a small file claiming a huge
size) would otherwise exhaust memory, and no bucket needs such detail."""

Box = tuple[int, int, int, int]
_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientations 5-8 rotate by 90 degrees, so the stored width is the displayed height.
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
RESAVE_FIX = "re-save it as PNG/JPEG or remove it"
_DOWNSCALE = "downscale it or remove it"


class ImageFileError(UserError):
    """An image file that cannot be used; `reason` is the short cause for lists of bad files."""

    def __init__(self, path: Path, reason: str, fix: str = RESAVE_FIX) -> None:
        super().__init__(f"cannot decode image {path} ({reason}); {fix}")
        self.path, self.reason, self.fix = path, reason, fix

    def __reduce__(self):
        # DataLoader workers send exceptions between processes; the default would drop path and reason.
        return ImageFileError, (self.path, self.reason, self.fix)


def _too_large(path: Path, size: Size) -> ImageFileError:
    width, height = size
    reason = f"{width}x{height} = {width * height / 1e6:.0f} MP, over the {MAX_IMAGE_PIXELS / 1e6:g} MP limit"
    return ImageFileError(path, reason, _DOWNSCALE)


def _unusable(path: Path, err: Exception) -> ImageFileError:
    """Why Pillow could not open or decode `path`: a file the user cannot reach, or bytes that are wrong."""
    if is_access_error(err):
        problem = describe_os_error(err, path)
        return ImageFileError(path, problem.reason, problem.fix)
    if path.is_file() and path.stat().st_size == 0:
        return ImageFileError(path, "empty file")
    return ImageFileError(path, str(err) or type(err).__name__)


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """Pillow's lazy open (the header only, no pixels), refusing images over `MAX_IMAGE_PIXELS`."""
    try:
        # Our own limit is the guard; Pillow's warning would repeat on every open of a 90-100 MP photo.
        # catch_warnings is not thread-safe, but overlapping blocks like this one can only leave this
        # same filter behind.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as err:
        # Pillow refuses images beyond twice its own limit (179 MP) before we see the size; its message has it.
        raise ImageFileError(
            path, f"{err} (loracraft's limit: {MAX_IMAGE_PIXELS / 1e6:g} MP)", _DOWNSCALE
        ) from err
    except _DECODE_ERRORS as err:
        raise _unusable(path, err) from err
    with img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise _too_large(path, img.size)
        yield img


def is_transposed(img: Image.Image) -> bool:
    """Whether the EXIF (or XMP) orientation turns the stored picture by 90 degrees, as in phone photos
    held upright. Reads only what the header holds."""
    # A PNG's getexif() decodes the whole image to look for EXIF after the pixels, where writers rarely
    # put it; without EXIF before the pixels the PNG is taken as upright.
    if img.format == "PNG" and "exif" not in img.info:
        return False
    return img.getexif().get(_EXIF_ORIENTATION_TAG) in _TRANSPOSED_ORIENTATIONS


def upright_size(img: Image.Image) -> Size:
    """(width, height) as displayed, from the header of an opened image."""
    return (img.height, img.width) if is_transposed(img) else img.size


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def _to_eight_bit(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES:
        # A plain convert clips 16-bit grey at 255 and turns the picture white; scale it to 8 bits instead.
        return Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8), "L")
    return img


def split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Any Pillow mode -> (8-bit RGB, alpha as "L" or None). Transparent pixels become white, as image
    viewers show them; the alpha is returned apart for `--alpha_mask`."""
    img = _to_eight_bit(img)
    if not _has_alpha(img):
        return img.convert("RGB"), None
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB"), rgba.getchannel("A")


def decode_upright(
    img: Image.Image, path: Path, *, at_least: Size | None = None
) -> tuple[Image.Image, Image.Image | None]:
    """Decode an opened image upright: (RGB, alpha or None). A decoding failure is an `ImageFileError`.

    `at_least` is the upright size the caller will resize to; a JPEG much larger than that is decoded
    at 1/2, 1/4 or 1/8 scale by its DCT (Pillow's `draft`): about twice as fast for a 12 MP photo, and
    itself a clean downscale.
    """
    try:
        if at_least is not None and img.format == "JPEG":
            stored = (at_least[1], at_least[0]) if is_transposed(img) else at_least
            img.draft(None, stored)
        img.load()
        return split_alpha(ImageOps.exif_transpose(img))
    except _DECODE_ERRORS as err:
        raise _unusable(path, err) from err


def resize_image(img: Image.Image, size: Size) -> Image.Image:
    """Lanczos keeps detail when enlarging; the box filter averages whole source areas when shrinking,
    like kohya's default cv2 INTER_AREA, and does not ring or alias."""
    if img.size == size:
        return img
    enlarging = size[0] * size[1] > img.size[0] * img.size[1]
    return img.resize(size, resample=Image.Resampling.LANCZOS if enlarging else Image.Resampling.BOX)


def resize_and_crop(img: Image.Image, resized_size: Size, box: Box) -> Image.Image:
    """Resize to `resized_size`, then cut `box` (left, top, right, bottom) out of the resized picture."""
    img = resize_image(img, resized_size)
    return img if box == (0, 0, *img.size) else img.crop(box)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> float32 tensor (3, H, W) in [-1, 1], the VAE's input range."""
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    return pixels.to(torch.float32) / 127.5 - 1.0


def mask_to_tensor(alpha: Image.Image) -> torch.Tensor:
    """An "L" alpha channel -> float32 tensor (1, H, W) in [0, 1] (kohya's alpha / 255)."""
    return torch.from_numpy(np.array(alpha, dtype=np.uint8))[None].to(torch.float32) / 255.0
