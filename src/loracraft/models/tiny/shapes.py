"""Procedural captioned images: one flat shape of one colour on a flat background, fully seeded."""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from loracraft.models.tiny.palette import BACKGROUNDS, BASE_COLOURS, COLOURS, RGB, SHAPES

# Drawn at 4x and box-filtered down so edges are anti-aliased like real photos, not jagged.
_SUPERSAMPLE = 4
# Small per-image colour jitter keeps the VAE from memorising seven exact RGB values.
_JITTER = 12


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that decides one image; ``centre`` and ``extent`` are fractions of the image side."""

    shape: str
    colour: str
    background: str
    centre: tuple[float, float]
    extent: float
    colour_rgb: RGB
    background_rgb: RGB


def _jittered(rgb: RGB, rng: np.random.Generator) -> RGB:
    shifted = np.clip(np.asarray(rgb) + rng.integers(-_JITTER, _JITTER + 1, size=3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def random_spec(shape: str, colour: str, background: str, rng: np.random.Generator) -> ShapeSpec:
    """Pick size, position and colour jitter; the shape always stays inside the frame with a margin."""
    extent = float(rng.uniform(0.35, 0.6))
    lo, hi = 0.05 + extent / 2, 0.95 - extent / 2
    centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
    return ShapeSpec(
        shape=shape,
        colour=colour,
        background=background,
        centre=centre,
        extent=extent,
        colour_rgb=_jittered(COLOURS[colour], rng),
        background_rgb=_jittered(BACKGROUNDS[background], rng),
    )


def draw(spec: ShapeSpec, size: int = 64) -> Image.Image:
    """Render a spec as an RGB image of ``size`` x ``size`` pixels."""
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), spec.background_rgb)
    pen = ImageDraw.Draw(image)
    cx, cy = spec.centre[0] * big, spec.centre[1] * big
    half = spec.extent * big / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    if spec.shape == "circle":
        pen.ellipse(box, fill=spec.colour_rgb)
    elif spec.shape == "square":
        pen.rectangle(box, fill=spec.colour_rgb)
    elif spec.shape == "triangle":
        pen.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=spec.colour_rgb)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; expected one of {SHAPES}")
    return image.resize((size, size), Image.Resampling.BOX)


def render_shape(
    shape: str, colour: str, background: str, size: int = 64, *, rng: np.random.Generator
) -> Image.Image:
    """One image of a ``colour`` ``shape`` on a ``background``, with seeded size, position and jitter."""
    return draw(random_spec(shape, colour, background, rng), size)


def caption_for(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def sample_specs(
    n: int,
    seed: int,
    colours: tuple[str, ...] = BASE_COLOURS,
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS),
    shapes: tuple[str, ...] = SHAPES,
) -> list[ShapeSpec]:
    """``n`` specs with shape, colour and background drawn uniformly from the given names."""
    rng = np.random.default_rng(seed)
    return [
        random_spec(
            shapes[rng.integers(len(shapes))],
            colours[rng.integers(len(colours))],
            backgrounds[rng.integers(len(backgrounds))],
            rng,
        )
        for _ in range(n)
    ]


def sample_dataset(
    n: int,
    seed: int,
    colours: tuple[str, ...] = BASE_COLOURS,
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS),
    shapes: tuple[str, ...] = SHAPES,
    size: int = 64,
) -> list[tuple[Image.Image, str]]:
    """``n`` (image, caption) pairs; the same arguments always give the same pixels."""
    specs = sample_specs(n, seed, colours, backgrounds, shapes)
    return [(draw(s, size), caption_for(s.shape, s.colour, s.background)) for s in specs]
