"""What a generated image shows, as numbers: background, foreground colour, shape and where it lies.

Judging generations by these statistics, rather than by eye, is what lets tests and demos assert that a
model (or a LoRA) draws what its prompt asks for.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from loracraft.models.tiny.palette import BACKGROUNDS, COLOURS, RGB

# A pixel belongs to the foreground when it is this far (RGB distance) from the background estimate;
# the closest palette colour to any background is ~130 away, so this keeps anti-aliased edges out.
_FOREGROUND_DISTANCE = 60.0
# Below this share of the pixels there is no shape to judge, only noise.
_MIN_COVERAGE = 0.02
_BORDER = 2


@dataclass(frozen=True)
class ImageStats:
    """``colour``/``shape``/``centroid`` are None when the image has no foreground to speak of."""

    background: str
    colour: str | None
    shape: str | None
    centroid: tuple[float, float] | None
    coverage: float


def nearest(rgb: np.ndarray, named: dict[str, RGB]) -> str:
    names = list(named)
    distances = np.linalg.norm(np.asarray([named[n] for n in names], dtype=np.float64) - rgb, axis=1)
    return names[int(np.argmin(distances))]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def _border_colour(pixels: np.ndarray) -> np.ndarray:
    b = _BORDER
    frame = np.concatenate(
        [
            pixels[:b].reshape(-1, 3),
            pixels[-b:].reshape(-1, 3),
            pixels[:, :b].reshape(-1, 3),
            pixels[:, -b:].reshape(-1, 3),
        ]
    )
    return np.median(frame, axis=0)


def _foreground_mask(pixels: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    return np.linalg.norm(pixels - background_rgb, axis=2) > _FOREGROUND_DISTANCE


def _shape_from_fill(mask: np.ndarray) -> str:
    """A square fills its bounding box, a circle pi/4 of it, an upright triangle half of it."""
    rows, cols = np.nonzero(mask)
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = mask.sum() / box_area
    if fill > 0.89:
        return "square"
    return "circle" if fill > 0.64 else "triangle"


def background_colour(image: Image.Image, backgrounds: dict[str, RGB] = BACKGROUNDS) -> str:
    """The named background nearest to the median colour of the image's border."""
    return nearest(_border_colour(_pixels(image)), backgrounds)


def dominant_colour(image: Image.Image, colours: dict[str, RGB] = COLOURS) -> str | None:
    """The palette colour nearest to the median foreground pixel; None when there is no foreground."""
    return measure(image, colours).colour


def measure(
    image: Image.Image, colours: dict[str, RGB] = COLOURS, backgrounds: dict[str, RGB] = BACKGROUNDS
) -> ImageStats:
    """Background from the border, foreground = pixels far from it; centroid as (x, y) fractions."""
    pixels = _pixels(image)
    border = _border_colour(pixels)
    background = nearest(border, backgrounds)
    mask = _foreground_mask(pixels, border)
    coverage = float(mask.mean())
    if coverage < _MIN_COVERAGE:
        return ImageStats(background, None, None, None, coverage)
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    centroid = (float((cols.mean() + 0.5) / width), float((rows.mean() + 0.5) / height))
    colour = nearest(np.median(pixels[mask], axis=0), colours)
    return ImageStats(background, colour, _shape_from_fill(mask), centroid, coverage)
