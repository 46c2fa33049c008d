"""Measure whether a LoRA taught the tiny model a concept: generate from fixed prompts and seeds, count.

A colour concept is judged with the tiny model's own image statistic (`models.tiny.measure`, the palette
colour nearest to the foreground): the trigger prompts should move to the concept's colour, and prompts
without the trigger should not. All rates are shares of generations over fixed seeds, so a run repeats.
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
    control_concept_rate: float
    """Share of no-trigger images drawn in the concept's colour (the concept bleeding into them)."""
    control_rate: float
    """Share of no-trigger images drawn in the colour their prompt names."""


@dataclass(frozen=True)
class ConceptProbe:
    concept_colour: str
    trigger_cases: tuple[tuple[str, str], ...]
    """(prompt, expected colour) with the trigger word."""
    control_cases: tuple[tuple[str, str], ...]
    """(prompt, expected colour) without it."""
    seeds: tuple[int, ...] = PROBE_SEEDS

    @classmethod
    def for_colour(cls, trigger: str, colour: str, seeds: tuple[int, ...] = PROBE_SEEDS) -> ConceptProbe:
        backgrounds = tuple(BACKGROUNDS)
        trigger_cases = tuple(
            (caption_for(shape, trigger, background), colour)
            for shape in SHAPES
            for background in backgrounds
        )
        control_cases = tuple(
            (caption_for(SHAPES[i % len(SHAPES)], base, background), base)
            for i, (base, background) in enumerate(
                (base, background) for base in BASE_COLOURS for background in backgrounds
            )
        )
        return cls(colour, trigger_cases, control_cases, seeds)

    def colours(
        self, preview: LoRAPreview, cases: tuple[tuple[str, str], ...]
    ) -> list[tuple[str, str | None]]:
        """(expected colour, measured colour) for every case and seed."""
        runs = [(prompt, colour, seed) for seed in self.seeds for prompt, colour in cases]
        images = preview.generate([p for p, _, _ in runs], [s for _, _, s in runs])
        return [(colour, measure(image).colour) for (_, colour, _), image in zip(runs, images, strict=True)]

    def measure(self, preview: LoRAPreview, multiplier: float) -> ProbeResult:
        preview.use(preview.loaded, multiplier)
        trigger = self.colours(preview, self.trigger_cases)
        control = self.colours(preview, self.control_cases)
        return ProbeResult(
            trigger_rate=_share(trigger, lambda expected, got: got == expected),
            control_concept_rate=_share(control, lambda _, got: got == self.concept_colour),
            control_rate=_share(control, lambda expected, got: got == expected),
        )

    def grid_prompts(self) -> list[str]:
        """Rows of the demo grid: three trigger prompts (each shape, each background), then two without."""
        return [prompt for prompt, _ in self.trigger_cases[::4]] + [p for p, _ in self.control_cases[::7]]


def _share(pairs: list[tuple[str, str | None]], hit) -> float:
    return sum(hit(expected, got) for expected, got in pairs) / len(pairs)


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
            grid.paste(
                image.resize((CELL, CELL), Image.Resampling.NEAREST),
                (LABEL_W + c * CELL, HEADER_H + r * CELL),
            )
    for r, prompt in enumerate(prompts):
        pen.text((4, HEADER_H + r * CELL + CELL // 2 - 6), prompt, fill="black")
    return grid
