"""A labelled grid of sample images: one row per prompt, one column per LoRA (and multiplier).

Column labels wrap onto up to MAX_LABEL_LINES lines when a cell is narrower than the label (a 64-pixel
cell under "epoch 10 (final) · 1.5"), as AUTOMATIC1111's X/Y plot wraps its headers; the header grows
to fit them. What still does not fit ends in "...".
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

HEADER_HEIGHT = 24
"""The header of one line of labels; more lines make it taller."""
MAX_LABEL_WIDTH = 320
MAX_LABEL_LINES = 3
PADDING = 4
LINE_SPACING = 2


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]], column_labels: Sequence[str], row_labels: Sequence[str]
) -> Image.Image:
    """`rows[r][c]` under `column_labels[c]`, beside `row_labels[r]`; cells as large as the largest image
    (smaller ones sit at the cell's top left)."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell_width = max(image.width for row in rows for image in row)
    cell_height = max(image.height for row in rows for image in row)
    label_width = min(MAX_LABEL_WIDTH, max(measure.textlength(label, font=font) for label in row_labels))
    left = int(label_width) + 2 * PADDING
    headers = [_wrapped(measure, label, cell_width - 2 * PADDING, font) for label in column_labels]
    line_height = _line_height(measure, font)
    lines = max(len(header) for header in headers)
    header_height = max(HEADER_HEIGHT, lines * line_height + (lines - 1) * LINE_SPACING + 2 * PADDING)
    grid = Image.new(
        "RGB", (left + cell_width * len(column_labels), header_height + cell_height * len(rows)), "white"
    )
    pen = ImageDraw.Draw(grid)
    for column, header in enumerate(headers):
        for line, text in enumerate(header):
            top = PADDING + line * (line_height + LINE_SPACING)
            pen.text((left + column * cell_width + PADDING, top), text, fill="black", font=font)
    for row, (images, label) in enumerate(zip(rows, row_labels, strict=True)):
        top = header_height + row * cell_height
        pen.text(
            (PADDING, top + PADDING), _fitted(measure, label, label_width, font), fill="black", font=font
        )
        for column, image in enumerate(images):
            grid.paste(image.convert("RGB"), (left + column * cell_width, top))
    return grid


def _wrapped(measure: ImageDraw.ImageDraw, text: str, width: float, font) -> list[str]:
    """`text` in lines no wider than `width`, broken between words, at most MAX_LABEL_LINES."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < MAX_LABEL_LINES:
        line = words.pop(0)
        while words and measure.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:
        lines[-1] = f"{lines[-1]} {' '.join(words)}"
    return [_fitted(measure, line, width, font) for line in lines] or [""]


def _line_height(measure: ImageDraw.ImageDraw, font) -> int:
    left, top, right, bottom = measure.textbbox((0, 0), "Ag", font=font)
    return bottom - top


def _fitted(measure: ImageDraw.ImageDraw, text: str, width: float, font) -> str:
    if measure.textlength(text, font=font) <= width:
        return text
    while text and measure.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
