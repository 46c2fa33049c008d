"""When a run draws sample images (kohya's rules), the images' file names, and the sample flags."""

from datetime import datetime

import pytest

from loracraft.config.load import build_config
from loracraft.config.sample_options import SampleOptions
from loracraft.data.plan import StepCount
from loracraft.errors import UserError
from loracraft.sampling.schedule import SamplePoint, planned_samples, sample_due, sample_file_name

PROMPTS = {"sample_prompts": "prompts.txt"}


def options(**values) -> SampleOptions:
    return SampleOptions(**PROMPTS, **values)


# Expected moments read off kohya's train_network.py loop: sample_images(epoch=0) before the first step,
# (epoch=None) after every optimizer step including the run's last, (epoch+1) at every epoch's end
# including the last, and sample_images_common's gate.
@pytest.mark.parametrize(
    ("values", "steps", "expected"),
    [
        ({"sample_every_n_steps": 3}, StepCount(4, 2, 8), [(None, 3), (None, 6)]),
        (
            {"sample_every_n_steps": 4, "sample_at_first": True},
            StepCount(4, 2, 8),
            [(0, 0), (None, 4), (None, 8)],
        ),
        ({"sample_every_n_epochs": 2, "sample_every_n_steps": 1}, StepCount(3, 5, 15), [(2, 6), (4, 12)]),
        # --max_train_steps 10 with 4 steps an epoch: the third epoch ends early, at step 10.
        ({"sample_every_n_epochs": 1}, StepCount(4, 3, 10), [(1, 4), (2, 8), (3, 10)]),
        ({"sample_every_n_steps": 5}, StepCount(4, 3, 10), [(None, 5), (None, 10)]),
        ({"sample_at_first": True}, StepCount(4, 3, 10), [(0, 0)]),
        ({}, StepCount(4, 3, 10), []),
    ],
)
def test_planned_samples_are_kohyas_moments(values, steps, expected):
    assert planned_samples(options(**values), steps) == [SamplePoint(*point) for point in expected]


def test_sample_due_follows_kohyas_gate():
    by_steps = options(sample_every_n_steps=2)
    assert sample_due(by_steps, step=4, epoch=None)
    assert not sample_due(by_steps, step=3, epoch=None)
    assert not sample_due(by_steps, step=4, epoch=2)  # an epoch's end is not a step sample
    assert not sample_due(by_steps, step=0, epoch=0)  # step 0 only with sample_at_first
    by_epochs = options(sample_every_n_epochs=2, sample_every_n_steps=2)
    assert sample_due(by_epochs, step=6, epoch=2)
    assert not sample_due(by_epochs, step=6, epoch=None)  # the epochs' rule turns the steps' off
    assert not sample_due(by_epochs, step=9, epoch=3)
    # A resumed run's start (epoch 0 at step 5) is not an epoch's end (kohya draws there: its quirk).
    assert not sample_due(by_epochs, step=5, epoch=0)
    assert sample_due(options(sample_at_first=True), step=0, epoch=0)
    assert not sample_due(SampleOptions(), step=0, epoch=0)


def test_file_names_are_kohyas():
    when = datetime(2026, 12, 2, 12, 0, 0)
    assert (
        sample_file_name("mychar", SamplePoint(4, 40), 0, None, when)
        == "mychar_e000004_00_20261202120000.png"
    )
    assert (
        sample_file_name("mychar", SamplePoint(None, 100), 3, 42, when)
        == "mychar_000100_03_20261202120000_42.png"
    )
    assert sample_file_name(None, SamplePoint(0, 0), 12, 7, when) == "e000000_12_20261202120000_7.png"


@pytest.mark.parametrize("name", ["sample_every_n_steps", "sample_every_n_epochs", "sample_at_first"])
def test_sampling_without_prompts_is_one_line_naming_the_flags(name):
    with pytest.raises(UserError) as caught:
        build_config({}, {name: True if name == "sample_at_first" else 10})
    assert str(caught.value) == (
        f"--{name} needs the prompts of the sample images: add --sample_prompts FILE (.txt, .toml or .json)"
    )


def test_zero_means_never_as_in_kohya():
    """The kohya_ss GUI's presets hold 0 for "no samples"; kohya reads 0 (or less) as not set."""
    config = build_config({"sample_every_n_steps": 0, "sample_every_n_epochs": 0}, {})
    assert (config.sample_every_n_steps, config.sample_every_n_epochs) == (None, None)
    assert build_config({}, {"sample_sampler": "k_euler_a"}).sample_sampler == "k_euler_a"
    with pytest.raises(UserError, match="--sample_sampler: Input should be 'ddim', 'pndm'"):
        build_config({}, {"sample_sampler": "dpm++_2m_karras"})
