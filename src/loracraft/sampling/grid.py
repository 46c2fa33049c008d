"""A labelled grid of sample images: one row per prompt, one column per LoRA (and multiplier)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

HEADER_HEIGHT = 24
MAX_LABEL_WIDTH = 320
PADDING = 4


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]], column_labels: Sequence[str], row_labels: Sequence[str]
) -> Image.Image:
    """`rows[r][c]` under `column_labels[c]`, beside `row_labels[r]`; cells as large as the largest image
    (smaller ones sit at the cell's top left), labels cut with "..." where they do not fit."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell_width = max(image.width for row in rows for image in row)
    cell_height = max(image.height for row in rows for image in row)
    label_width = min(MAX_LABEL_WIDTH, max(measure.textlength(label, font=font) for label in row_labels))
    left = int(label_width) + 2 * PADDING
    grid = Image.new(
        "RGB", (left + cell_width * len(column_labels), HEADER_HEIGHT + cell_height * len(rows)), "white"
    )
    pen = ImageDraw.Draw(grid)
    for column, label in enumerate(column_labels):
        text = _fitted(measure, label, cell_width - 2 * PADDING, font)
        pen.text((left + column * cell_width + PADDING, PADDING), text, fill="black", font=font)
    for row, (images, label) in enumerate(zip(rows, row_labels, strict=True)):
        top = HEADER_HEIGHT + row * cell_height
        pen.text(
            (PADDING, top + PADDING), _fitted(measure, label, label_width, font), fill="black", font=font
        )
        for column, image in enumerate(images):
            grid.paste(image.convert("RGB"), (left + column * cell_width, top))
    return grid


def _fitted(measure: ImageDraw.ImageDraw, text: str, width: float, font) -> str:
    if measure.textlength(text, font=font) <= width:
        return text
    while text and measure.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
