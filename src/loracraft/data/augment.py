"""kohya's image augmentations, applied while loading a training image (reference §1.4).

Order: choose the crop (face crop, random crop or centre), decode, resize and crop, colour, flip. All
randomness comes from the `random.Random` passed in, so a seeded generator gives the same pixels.

- `random_crop`: the bucket-sized window at a uniformly random offset in the resized image (kohya).
- `face_crop_aug_range = (lo, hi)`: for files named `*_cx_cy_w_h` (face centre and size in pixels of
  the file, as kohya's `tools/detect_face_rotate.py` writes them) the image is scaled so that the
  face's longer side is between 1/hi and 1/lo of the bucket's shorter side, at random, and the crop is
  centred on the face (jittered as kohya does). kohya ignores the face box when bucketing is on; we
  use it in any bucket. Files without a face box train with the normal crop.
- `color_aug`: kohya's rule: with probability 0.33, either (half the time each) shift the hue by a
  uniform amount in +-8 OpenCV hue units (+-16 degrees) or apply a gamma uniform in [0.95, 1.05].
  kohya raises the 0-255 value itself to the gamma, which brightens mid-tones by up to 30%; we apply
  the gamma to values scaled to [0, 1], the adjustment kohya's comment intends.
- `flip_aug`: a horizontal flip with probability 0.5, of the pixels and the mask alike.
- `alpha_mask`: the alpha channel / 255 (all ones without alpha), resized and cropped with the image.
  The RGB pixels stay composited on white. A mask image from `conditioning_data_dir` (`masks.py`)
  replaces it, resized, cropped and flipped the same way.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from loracraft.config.subset_options import SubsetOptions
from loracraft.data.buckets import Size, center_crop_box
from loracraft.data.images import (
    Box,
    decode_upright,
    mask_to_tensor,
    open_image,
    resize_and_crop,
    to_tensor,
    upright_size,
)
from loracraft.data.masks import load_mask

COLOR_AUG_PROBABILITY = 0.33
HUE_SHIFT_DEGREES = 16.0  # kohya's 8 in OpenCV's half-degree hue units
GAMMA_RANGE = (0.95, 1.05)
FLIP_PROBABILITY = 0.5


@dataclass(frozen=True)
class TrainingImage:
    """One image ready for the VAE.

    `pixels` (3, H, W) float32 in [-1, 1]; `mask` (1, H, W) float32 in [0, 1] when alpha masks are on;
    `crop_ltrb` is the window cut from the image resized to `resized_size`, before any flip (SDXL's
    crop conditioning needs it; kohya mirrors the left edge for flipped samples).
    """

    pixels: torch.Tensor
    mask: torch.Tensor | None
    flipped: bool
    resized_size: Size
    crop_ltrb: Box


@dataclass(frozen=True)
class FaceBox:
    """A face's centre and size in pixels of the image file."""

    cx: int
    cy: int
    width: int
    height: int


def face_box_from_name(path: Path) -> FaceBox | None:
    """The face box of a file named `anything_cx_cy_w_h.ext`; None when the name carries none."""
    tokens = path.stem.split("_")
    if len(tokens) < 5 or not all(token.isdigit() for token in tokens[-4:]):
        return None
    box = FaceBox(*(int(token) for token in tokens[-4:]))
    # kohya treats a zero centre as "no face"; a zero size would divide by zero below.
    return box if box.cx > 0 and min(box.width, box.height) > 0 else None


def random_crop_box(resized_size: Size, bucket: Size, rng: random.Random) -> Box:
    """A bucket-sized window at a uniformly random place in the resized image."""
    left = rng.randint(0, resized_size[0] - bucket[0])
    top = rng.randint(0, resized_size[1] - bucket[1])
    return left, top, left + bucket[0], top + bucket[1]


def _face_offset(
    face_p: int, face_size: int, length: int, target: int, jitter: bool, random_crop: bool, rng: random.Random
) -> int:
    """Start of the crop along one axis: centred on the face, jittered like kohya, kept inside the image."""
    start = face_p - target // 2
    if random_crop:
        # A triangular spread around the face, so the background is seen too but the face stays likely.
        spread = max(length - face_p, face_p)
        start += rng.randint(0, spread) + rng.randint(0, spread) - spread
    elif jitter:
        start += rng.randint(-face_size // 20, face_size // 20)
    return max(0, min(start, length - target))


def face_crop_window(
    original: Size,
    bucket: Size,
    face: FaceBox,
    face_range: tuple[float, float],
    random_crop: bool,
    rng: random.Random,
) -> tuple[Size, Box]:
    """(resized size, crop box) of kohya's face crop, with the bucket as the target size."""
    width, height = original
    face_size = max(face.width, face.height)
    short_side = min(bucket)
    cover = max(bucket[0] / width, bucket[1] / height)
    # kohya never enlarges for a face (cap 1.0); a small image may still need enlarging to cover the bucket.
    cap = max(1.0, cover)
    min_scale = min(cap, max(cover, short_side / (face_size * face_range[1])))
    max_scale = min(cap, max(min_scale, short_side / (face_size * face_range[0])))
    scale = min_scale if min_scale >= max_scale else rng.uniform(min_scale, max_scale)
    resized = (max(bucket[0], int(width * scale + 0.5)), max(bucket[1], int(height * scale + 0.5)))
    # kohya jitters a centred face crop only for a real range and a face that is not tiny.
    jitter = face_range[0] != face_range[1] and face_size > short_side // 10 and face_size >= 40
    top = _face_offset(int(face.cy * scale + 0.5), face_size, resized[1], bucket[1], jitter, random_crop, rng)
    left = _face_offset(
        int(face.cx * scale + 0.5), face_size, resized[0], bucket[0], jitter, random_crop, rng
    )
    return resized, (left, top, left + bucket[0], top + bucket[1])


def color_augment(img: Image.Image, rng: random.Random) -> Image.Image:
    """kohya's colour augmentation (see the module docstring), on an RGB image."""
    if rng.random() > COLOR_AUG_PROBABILITY:
        return img
    if rng.random() > 0.5:
        # Pillow's HSV hue runs 0-255 for a full turn.
        shift = round(rng.uniform(-HUE_SHIFT_DEGREES, HUE_SHIFT_DEGREES) * 256 / 360)
        hue, saturation, value = img.convert("HSV").split()
        hue = hue.point(lambda h: (h + shift) % 256)
        return Image.merge("HSV", (hue, saturation, value)).convert("RGB")
    gamma = rng.uniform(*GAMMA_RANGE)
    return img.point([round(255 * (i / 255) ** gamma) for i in range(256)] * 3)


def _crop_plan(
    path: Path, original: Size, resized_size: Size, bucket: Size, options: SubsetOptions, rng: random.Random
) -> tuple[Size, Box]:
    face = face_box_from_name(path) if options.face_crop_aug_range else None
    if face is not None:
        return face_crop_window(original, bucket, face, options.face_crop_aug_range, options.random_crop, rng)
    if options.random_crop:
        return resized_size, random_crop_box(resized_size, bucket, rng)
    return resized_size, center_crop_box(resized_size, bucket)


def load_training_image(
    path: Path,
    resized_size: Size,
    bucket: Size,
    options: SubsetOptions,
    rng: random.Random,
    mask_path: Path | None = None,
) -> TrainingImage:
    """Decode `path` and apply the augmentations in `options` (see the module docstring); `mask_path` is
    the image's mask image from its folder's conditioning_data_dir, which overrides alpha_mask."""
    with open_image(path) as img:
        original = upright_size(img)
        resized_size, box = _crop_plan(path, original, resized_size, bucket, options, rng)
        rgb, alpha = decode_upright(img, path, at_least=resized_size)
    rgb = resize_and_crop(rgb, resized_size, box)
    if options.color_aug:
        rgb = color_augment(rgb, rng)
    pixels = to_tensor(rgb)
    mask = None
    if mask_path is not None:
        mask = load_mask(mask_path, original, resized_size, box)
    elif options.alpha_mask:
        mask = (
            mask_to_tensor(resize_and_crop(alpha, resized_size, box))
            if alpha is not None
            else torch.ones(1, bucket[1], bucket[0])
        )
    flipped = options.flip_aug and rng.random() < FLIP_PROBABILITY
    if flipped:
        pixels = pixels.flip(-1)
        mask = mask.flip(-1) if mask is not None else None
    return TrainingImage(pixels, mask, flipped, resized_size, box)


def mask_to_latent_size(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Masks (B, 1, H, W) resized to the latents' (h, w) by area averaging, as kohya's masked loss does."""
    if tuple(mask.shape[-2:]) == tuple(latent_size):
        return mask
    return F.interpolate(mask, size=latent_size, mode="area")
