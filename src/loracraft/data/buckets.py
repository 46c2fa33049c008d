"""Aspect-ratio buckets, exactly as kohya computes them (reference §4.4). Pure math on (width, height).

A bucket is the pixel size a batch is trained at. Each image goes to one bucket, is resized so that it
covers the bucket, and the overflow is cropped from both sides equally.
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


def adjust_bucket_limits(
    resolution: Size, min_bucket_reso: int, max_bucket_reso: int, steps: int
) -> tuple[int, int, list[str]]:
    """kohya rounds the min bucket side down and the max side up to the step; the area must fit between."""
    warnings = []
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


def select_bucket_no_upscale(width: int, height: int, max_area: int, steps: int) -> BucketChoice:
    """kohya's `--bucket_no_upscale`: images over `max_area` shrink to that area (one side rounded to
    the step, whichever keeps the aspect ratio better); the bucket is the size floored to the step, so
    the image is cropped, never padded or enlarged. A zero side means the image is smaller than a step."""
    aspect = width / height
    if width * height > max_area:
        fit_width = math.sqrt(max_area * aspect)
        fit_height = max_area / fit_width
        # The max() and the inf guard the divisions for extreme aspect ratios (a side rounding to zero).
        w_rounded = round_to_steps(fit_width, steps)
        ar_by_width = w_rounded / max(steps, round_to_steps(w_rounded / aspect, steps))
        h_rounded = round_to_steps(fit_height, steps)
        ar_by_height = (
            max(steps, round_to_steps(h_rounded * aspect, steps)) / h_rounded if h_rounded else math.inf
        )
        if abs(ar_by_width - aspect) < abs(ar_by_height - aspect):
            resized = (w_rounded, int(w_rounded / aspect + 0.5))
        else:
            resized = (int(h_rounded * aspect + 0.5), h_rounded)
    else:
        resized = (width, height)
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    ar_error = bucket[0] / bucket[1] - aspect if bucket[1] else math.inf
    return BucketChoice(bucket, resized, ar_error)


def center_crop_box(resized_size: Size, bucket: Size) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the bucket-sized window centred in the resized image."""
    left = (resized_size[0] - bucket[0]) // 2
    top = (resized_size[1] - bucket[1]) // 2
    return left, top, left + bucket[0], top + bucket[1]
