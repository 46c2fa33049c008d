"""How well the tiny model draws its own prompts: a fixed prompt set, fixed seeds, measured outcomes."""

from dataclasses import dataclass

from diffusers import StableDiffusionPipeline

from loracraft.models.tiny.generate import generate
from loracraft.models.tiny.measure import ImageStats, measure
from loracraft.models.tiny.palette import BACKGROUNDS, BASE_COLOURS, SHAPES
from loracraft.models.tiny.shapes import caption_for

# Every base colour on every background, shapes in rotation: 12 prompts that cover the caption space.
EVAL_CASES: tuple[tuple[str, str, str], ...] = tuple(
    (SHAPES[(i + j) % len(SHAPES)], colour, background)
    for i, colour in enumerate(BASE_COLOURS)
    for j, background in enumerate(BACKGROUNDS)
)
EVAL_SEEDS: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Evaluation:
    """Shares of generations whose measured colour+background, and shape, match the prompt."""

    colour_and_background: float
    shape: float
    stats: list[tuple[tuple[str, str, str], ImageStats]]


def evaluate(
    pipeline: StableDiffusionPipeline,
    cases: tuple[tuple[str, str, str], ...] = EVAL_CASES,
    seeds: tuple[int, ...] = EVAL_SEEDS,
    steps: int = 20,
    guidance: float = 3.0,
) -> Evaluation:
    runs = [(case, seed) for seed in seeds for case in cases]
    images = generate(
        pipeline, [caption_for(*case) for case, _ in runs], [seed for _, seed in runs], steps, guidance
    )
    stats = [(case, measure(image)) for (case, _), image in zip(runs, images, strict=True)]
    right = sum(s.colour == colour and s.background == background for (_, colour, background), s in stats)
    shaped = sum(s.shape == shape for (shape, _, _), s in stats)
    return Evaluation(right / len(stats), shaped / len(stats), stats)
