"""Turning an image file into the training tensor: load as RGB, resize to cover the bucket, crop, scale."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from loracraft.data.buckets import Size, center_crop_box
from loracraft.errors import UserError

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _flatten_to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparent pixels become white, as image viewers show them."""
    if img.mode in _SIXTEEN_BIT_MODES:
        # A plain convert clips 16-bit grey at 255 and turns the picture white; scale it to 8 bits instead.
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image_rgb(path: Path) -> Image.Image:
    """Decode `path` upright (EXIF orientation applied) as RGB; a file Pillow cannot decode is a UserError."""
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return _flatten_to_rgb(upright)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot decode image {path} ({err}); re-save it as PNG/JPEG or remove it") from err


def resize_and_center_crop(img: Image.Image, resized_size: Size, bucket: Size) -> Image.Image:
    """Resize to `resized_size` (which covers `bucket`), then cut the centred bucket-sized window.

    Lanczos keeps detail when enlarging; the box filter averages whole source areas when shrinking,
    like kohya's default cv2 INTER_AREA, and does not ring or alias.
    """
    if img.size != resized_size:
        enlarging = resized_size[0] * resized_size[1] > img.size[0] * img.size[1]
        resample = Image.Resampling.LANCZOS if enlarging else Image.Resampling.BOX
        img = img.resize(resized_size, resample=resample)
    if img.size != bucket:
        img = img.crop(center_crop_box(resized_size, bucket))
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> float32 tensor (3, H, W) in [-1, 1], the VAE's input range."""
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    return pixels.to(torch.float32) / 127.5 - 1.0


def load_bucket_tensor(path: Path, resized_size: Size, bucket: Size) -> torch.Tensor:
    """The whole path from file to the (3, H, W) training tensor of one image."""
    return to_tensor(resize_and_center_crop(load_image_rgb(path), resized_size, bucket))
