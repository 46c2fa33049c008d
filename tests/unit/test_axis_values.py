"""A grid axis as AUTOMATIC1111's X/Y/Z plot reads it. The expected lists are what A1111's
scripts/xyz_grid.py computes for the same text (numpy linspace for `[n]`, arange(a, b + s, s) for `(+s)`,
range(a, b + 1) for whole numbers), kept here as values."""

import pytest

from loracraft.sampling.axis_values import axis_numbers, axis_seeds

A1111_VALUES = [
    ("0.7-1.5 [5]", [0.7, 0.9, 1.1, 1.3, 1.5]),  # seed 003's weights
    ("0.4,0.7, 1.0", [0.4, 0.7, 1.0]),
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-2 (+0.25)", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("10-1 (-3)", [10, 7, 4, 1]),
    ("0-1 [3], 2", [0.0, 0.5, 1.0, 2.0]),
    ("0.5-1 [1]", [0.5]),
]


@pytest.mark.parametrize(("text", "values"), A1111_VALUES)
def test_axis_values_are_a1111s(text, values):
    assert axis_numbers(text) == pytest.approx(values, abs=1e-9)


@pytest.mark.parametrize("text", ["", "x", "1,,2", "1-2 [0]", "2-1", "1-2 (-1)", "1-2 (+0)", "nan", "1,inf"])
def test_what_is_no_axis_is_refused(text):
    with pytest.raises(ValueError):
        axis_numbers(text)


def test_a_step_never_passes_the_end():
    """A1111's arange(a, b + s, s) can overshoot (1-2 (+0.3) gives 2.2 there); b is the limit here."""
    assert axis_numbers("1-2 (+0.3)") == pytest.approx([1.0, 1.3, 1.6, 1.9])


def test_random_seeds_are_drawn_once_each():
    seeds = axis_seeds("-1--1 [8]")  # seed 003: eight random seeds
    assert len(seeds) == 8 and len(set(seeds)) == 8
    assert all(0 <= seed < 2**32 for seed in seeds)
    assert axis_seeds("3, 5-7") == [3, 5, 6, 7]


@pytest.mark.parametrize("text", ["1.5", "-2", "4294967296"])
def test_seeds_are_whole_numbers_from_minus_one(text):
    with pytest.raises(ValueError):
        axis_seeds(text)


def test_grid_reads_its_axes_as_a1111():
    from loracraft.tools.epoch_grid import make_parser

    args = make_parser().parse_args(["out", "--weights", "0.7-1.5 [5]", "--seeds", "1-3"])
    assert args.weights == (0.7, 0.9, 1.1, 1.3, 1.5)
    assert args.seeds == (1, 2, 3)
