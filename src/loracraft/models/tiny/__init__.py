"""loracraft-tiny: a few-MB text-to-image model with SD1's layout, trained on procedural shapes."""

from loracraft.models.tiny.measure import ImageStats, background_colour, dominant_colour, measure
from loracraft.models.tiny.palette import BACKGROUNDS, BASE_COLOURS, COLOURS, SHAPES, VAE_ONLY_COLOURS
from loracraft.models.tiny.shapes import ShapeSpec, caption_for, render_shape, sample_dataset, sample_specs

__all__ = [
    "BACKGROUNDS",
    "BASE_COLOURS",
    "COLOURS",
    "SHAPES",
    "VAE_ONLY_COLOURS",
    "ImageStats",
    "ShapeSpec",
    "background_colour",
    "caption_for",
    "dominant_colour",
    "measure",
    "render_shape",
    "sample_dataset",
    "sample_specs",
]
