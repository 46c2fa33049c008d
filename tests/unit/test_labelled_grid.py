"""The labelled grid's header: one line for labels that fit their cell, wrapped lines (and a taller
header) for labels that do not, as A1111's X/Y plot wraps its column headers."""

from PIL import Image, ImageDraw, ImageFont

from loracraft.sampling.grid import HEADER_HEIGHT, _wrapped, labelled_grid


def cells(columns: int, size: int) -> list[list[Image.Image]]:
    return [[Image.new("RGB", (size, size), "red") for _ in range(columns)]]


def test_labels_that_fit_keep_the_one_line_header():
    grid = labelled_grid(cells(2, 256), ["epoch 1 · 0.5", "epoch 2 · 1"], ["a prompt"])
    assert grid.height == HEADER_HEIGHT + 256


def test_long_labels_wrap_between_words_and_the_header_grows():
    grid = labelled_grid(cells(2, 64), ["epoch 10 (final) · 1.5", "base"], ["a prompt"])
    assert grid.height > HEADER_HEIGHT + 64
    # the cells sit below the header, the header above them is white but for the text
    assert grid.getpixel((grid.width - 1, grid.height - 1)) == (255, 0, 0)
    assert grid.getpixel((grid.width - 1, grid.height - 65)) == (255, 255, 255)


def test_every_wrapped_line_fits_its_cell():
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrapped(measure, "epoch 10 (final) · 1.5", 56, font)
    assert 1 < len(lines) <= 3
    assert " ".join(line.removesuffix("...") for line in lines).startswith("epoch 10")
    assert all(measure.textlength(line, font=font) <= 56 for line in lines)
    (only,) = _wrapped(measure, "supercalifragilistic-expialidocious", 56, font)
    assert only.endswith("...") and measure.textlength(only, font=font) <= 56
