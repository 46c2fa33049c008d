"""Measure whether a LoRA taught the tiny model a concept: generate from fixed prompts and seeds, count.

A colour concept is judged with the tiny model's own image statistic (`models.tiny.measure`): the trigger
prompts should come out in the concept's colour, and prompts without the trigger should keep the colour
they name. Both are shares of generations over fixed seeds, so a run is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw

from loracraft.models.tiny.measure import measure
from loracraft.models.tiny.palette import BACKGROUNDS, BASE_COLOURS, SHAPES
from loracraft.models.tiny.shapes import caption_for
from loracraft.tools.lora_preview import LoRAPreview

PROBE_SEEDS = (11, 12)


@dataclass(frozen=True)
class ProbeResult:
    trigger_rate: float
    """Share of trigger-prompt images drawn in the concept's colour."""
    control_rate: float
    """Share of no-trigger images drawn in the colour their prompt names."""


@dataclass(frozen=True)
class ConceptProbe:
    trigger_cases: tuple[tuple[str, str], ...]
    """(prompt, expected colour) with the trigger word."""
    control_cases: tuple[tuple[str, str], ...]
    """(prompt, expected colour) without it."""
    seeds: tuple[int, ...] = PROBE_SEEDS

    @classmethod
    def for_colour(cls, trigger: str, colour: str, seeds: tuple[int, ...] = PROBE_SEEDS) -> ConceptProbe:
        backgrounds = tuple(BACKGROUNDS)
        trigger_cases = tuple(
            (caption_for(shape, trigger, background), colour) for shape in SHAPES for background in backgrounds
        )
        control_cases = tuple(
            (caption_for(SHAPES[i % len(SHAPES)], base, backgrounds[i % len(backgrounds)]), base)
            for i, base in enumerate(BASE_COLOURS)
        )
        return cls(trigger_cases, control_cases, seeds)

    def rate(self, preview: LoRAPreview, cases: tuple[tuple[str, str], ...]) -> float:
        runs = [(prompt, colour, seed) for seed in self.seeds for prompt, colour in cases]
        images = preview.generate([p for p, _, _ in runs], [s for _, _, s in runs])
        hits = sum(measure(image).colour == colour for (_, colour, _), image in zip(runs, images, strict=True))
        return hits / len(runs)

    def measure(self, preview: LoRAPreview, multiplier: float) -> ProbeResult:
        preview.use(preview.loaded, multiplier)
        return ProbeResult(self.rate(preview, self.trigger_cases), self.rate(preview, self.control_cases))

    def grid_prompts(self) -> list[str]:
        """Rows of the demo grid: three trigger prompts, then two without the trigger."""
        return [prompt for prompt, _ in self.trigger_cases[::3]] + [p for p, _ in self.control_cases[:2]]


CELL = 128
LABEL_W = 260
HEADER_H = 20


def render_grid(preview: LoRAPreview, prompts: list[str], columns: list[tuple], seed: int = 0) -> Image.Image:
    """Rows are prompts; columns are (label, LoRA file or None for the base model, weight)."""
    grid = Image.new("RGB", (LABEL_W + CELL * len(columns), HEADER_H + CELL * len(prompts)), "white")
    pen = ImageDraw.Draw(grid)
    for c, (label, lora_file, weight) in enumerate(columns):
        pen.text((LABEL_W + c * CELL + 4, 4), label, fill="black")
        preview.use(lora_file, weight)
        images = preview.generate(prompts, [seed] * len(prompts))
        for r, image in enumerate(images):
            grid.paste(image.resize((CELL, CELL), Image.Resampling.NEAREST), (LABEL_W + c * CELL, HEADER_H + r * CELL))
    for r, prompt in enumerate(prompts):
        pen.text((4, HEADER_H + r * CELL + CELL // 2 - 6), prompt, fill="black")
    return grid
