"""Aspect-ratio buckets, exactly as kohya computes them (reference §4.4). Pure math on (width, height).

A bucket is the pixel size a batch is trained at. Each image goes to one bucket, is resized so that it
covers the bucket, and the overflow is cropped from both sides equally. Where kohya's arithmetic
divides by zero we refuse the setting (`adjust_bucket_limits`) or give the image the smallest bucket
of its shape (`select_bucket_no_upscale`).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from loracraft.errors import UserError

Size = tuple[int, int]


@dataclass(frozen=True)
class BucketChoice:
    """Where an image goes: its bucket, the size it is resized to before the crop, and kohya's
    aspect-ratio error (bucket aspect minus image aspect; `ss_bucket_info` averages its magnitude)."""

    bucket: Size
    resized_size: Size
    ar_error: float

    @property
    def kept_area(self) -> float:
        """The share of the resized image inside the bucket; the centre crop discards the rest."""
        return self.bucket[0] * self.bucket[1] / (self.resized_size[0] * self.resized_size[1])


def adjust_bucket_limits(
    resolution: Size, min_bucket_reso: int, max_bucket_reso: int, steps: int
) -> tuple[int, int, list[str]]:
    """kohya rounds the min bucket side down and the max side up to the step; the area must fit between."""
    warnings = []
    if min_bucket_reso < steps:
        # Rounded down it would be a zero-width bucket (kohya then divides by zero making the list).
        raise UserError(
            f"--min_bucket_reso {min_bucket_reso} is smaller than --bucket_reso_steps {steps}; "
            f"set it to {steps} or more"
        )
    if min_bucket_reso % steps:
        rounded = min_bucket_reso - min_bucket_reso % steps
        warnings.append(
            f"--min_bucket_reso {min_bucket_reso} rounded down to {rounded}, a multiple of {steps}"
        )
        min_bucket_reso = rounded
    if max_bucket_reso % steps:
        rounded = max_bucket_reso + steps - max_bucket_reso % steps
        warnings.append(f"--max_bucket_reso {max_bucket_reso} rounded up to {rounded}, a multiple of {steps}")
        max_bucket_reso = rounded
    if min(resolution) < min_bucket_reso or max(resolution) > max_bucket_reso:
        raise UserError(
            f"--resolution {resolution[0]},{resolution[1]} must lie between --min_bucket_reso {min_bucket_reso} "
            f"and --max_bucket_reso {max_bucket_reso}; change one of them"
        )
    return min_bucket_reso, max_bucket_reso, warnings


def make_bucket_resolutions(
    max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[Size]:
    """kohya's bucket list: the largest square of the area, then for every width from `min_size` to
    `max_size` the tallest height within the area (capped at `max_size`), in both orientations."""
    max_area = max_reso[0] * max_reso[1]
    square = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(square, square)}
    for width in range(min_size, max_size + 1, divisible):
        height = min(max_size, (max_area // width) // divisible * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
    return sorted(resos)


def cover_size(width: int, height: int, bucket: Size) -> Size:
    """The smallest size with the image's aspect ratio that covers `bucket` (kohya's rounding)."""
    # Match the side of the bucket the image is relatively shorter on; the other side overflows.
    scale = bucket[1] / height if width / height > bucket[0] / bucket[1] else bucket[0] / width
    return int(width * scale + 0.5), int(height * scale + 0.5)


def select_bucket(width: int, height: int, buckets: Sequence[Size]) -> BucketChoice:
    """kohya's normal mode: the image's own size if it is a bucket, else the bucket with the smallest
    aspect-ratio error (first in sorted order on ties); small images are upscaled to cover it."""
    aspect = width / height
    bucket = (
        (width, height)
        if (width, height) in buckets
        else min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))
    )
    return BucketChoice(bucket, cover_size(width, height, bucket), bucket[0] / bucket[1] - aspect)


def round_to_steps(x: float, steps: int) -> int:
    rounded = int(x + 0.5)
    return rounded - rounded % steps


def fits_one_step(width: int, height: int, steps: int) -> bool:
    """Whether `--bucket_no_upscale` can bucket the image: a side under one step needs enlarging."""
    return min(width, height) >= steps


def _kohya_shrunk_size(width: int, height: int, max_area: int, steps: int) -> Size | None:
    """kohya's size for an image over `max_area`: shrunk to that area, one side rounded to the step
    (whichever keeps the aspect ratio better). None where the rounding leaves a side under one step."""
    aspect = width / height
    fit_width = math.sqrt(max_area * aspect)
    w_rounded = round_to_steps(fit_width, steps)
    h_for_width = round_to_steps(w_rounded / aspect, steps)
    h_rounded = round_to_steps(max_area / fit_width, steps)
    w_for_height = round_to_steps(h_rounded * aspect, steps)
    # kohya divides by these two, so where one is zero its BucketManager.select_bucket raises
    # ZeroDivisionError (e.g. 96x64 at resolution 64, or 100x8000 at resolution 512, steps 64).
    if not (h_for_width and h_rounded):
        return None
    if abs(w_rounded / h_for_width - aspect) < abs(w_for_height / h_rounded - aspect):
        size = (w_rounded, int(w_rounded / aspect + 0.5))
    else:
        size = (int(h_rounded * aspect + 0.5), h_rounded)
    return size if fits_one_step(*size, steps) else None


def shrinks_below_one_step(width: int, height: int, max_area: int, steps: int) -> bool:
    """Whether kohya's `--bucket_no_upscale` shrinking leaves the image under one step on a side, so it
    gets the smallest bucket of its shape instead (see `select_bucket_no_upscale`)."""
    return width * height > max_area and _kohya_shrunk_size(width, height, max_area, steps) is None


def _one_step_bucket(width: int, height: int, max_area: int, steps: int) -> tuple[Size, Size]:
    """(resized size, bucket) with the short side exactly one step: the smallest bucket of the image's
    shape. The long side is floored to the step and kept within the area, or one step if none fits."""
    scale = steps / min(width, height)
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    longest = max(steps, max_area // steps // steps * steps)
    bucket = (min(resized[0] - resized[0] % steps, longest), min(resized[1] - resized[1] % steps, longest))
    return resized, bucket


def select_bucket_no_upscale(width: int, height: int, max_area: int, steps: int) -> BucketChoice:
    """kohya's `--bucket_no_upscale`: images over `max_area` shrink to that area (one side rounded to
    the step, whichever keeps the aspect ratio better); the bucket is the size floored to the step, so
    the image is cropped, never padded or enlarged.

    Where that shrinking leaves a side under one step (kohya: ZeroDivisionError), the image shrinks
    only until its short side is one step, into the smallest bucket of its shape, and is cropped to it.
    The image must be at least one step on each side (`fits_one_step`): kohya gives a smaller one a
    zero-width bucket (50x4000 -> 0x3968), so its crop holds no pixels.
    """
    if not fits_one_step(width, height, steps):
        raise ValueError(f"a {width}x{height} image has no bucket of {steps}-pixel steps without enlarging")
    resized = (
        (width, height) if width * height <= max_area else _kohya_shrunk_size(width, height, max_area, steps)
    )
    if resized is None:
        resized, bucket = _one_step_bucket(width, height, max_area, steps)
    else:
        bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    return BucketChoice(bucket, resized, bucket[0] / bucket[1] - width / height)


def center_crop_box(resized_size: Size, bucket: Size) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the bucket-sized window centred in the resized image."""
    left = (resized_size[0] - bucket[0]) // 2
    top = (resized_size[1] - bucket[1]) // 2
    return left, top, left + bucket[0], top + bucket[1]
