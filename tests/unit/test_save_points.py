"""When a run saves and which older files it removes: kohya's names and removal rules."""

import json
from pathlib import Path

import pytest

from loracraft.config.schema import TrainConfig
from loracraft.training.save_points import SaveSchedule, epoch_stem, state_name, step_stem

KOHYA = json.loads((Path(__file__).parents[1] / "data" / "kohya" / "save_removals.json").read_text())


def schedule(num_epochs: int = 10, **settings) -> SaveSchedule:
    return SaveSchedule.of(TrainConfig(**settings), num_epochs)


def test_names_are_kohyas():
    assert epoch_stem("toy", 4) == "toy-000004"
    assert step_stem("toy", 200) == "toy-step00000200"
    assert state_name(epoch_stem("toy", 4)) == "toy-000004-state"
    assert state_name("toy") == "toy-state"


@pytest.mark.parametrize(
    "case", KOHYA["epoch_removals"], ids=lambda c: f"e{c['epoch']}-every{c['every']}-keep{c['keep']}"
)
def test_the_epoch_file_removed_is_kohyas(case):
    saves = schedule(save_every_n_epochs=case["every"], save_last_n_epochs=case["keep"])
    # kohya's 0 names a file that is never written (epochs count from 1).
    assert saves.epoch_to_remove(case["epoch"], saves.keep_epochs) == (case["removes"] or None)


@pytest.mark.parametrize(
    "case", KOHYA["step_removals"], ids=lambda c: f"s{c['step']}-every{c['every']}-keep{c['keep']}"
)
def test_the_step_file_removed_is_kohyas(case):
    saves = schedule(save_every_n_steps=case["every"], save_last_n_steps=case["keep"])
    assert saves.step_to_remove(case["step"], saves.keep_steps) == (case["removes"] or None)


def test_epoch_files_are_saved_every_n_epochs_but_not_after_the_last():
    saves = schedule(num_epochs=6, save_every_n_epochs=2)
    assert [epoch for epoch in range(1, 7) if saves.saves_after_epoch(epoch, 6)] == [2, 4]
    assert not any(schedule().saves_after_epoch(epoch, 10) for epoch in range(1, 11))


@pytest.mark.parametrize(("num_epochs", "ratio", "every"), [(10, 3, 3), (10, 5, 2), (4, 10, 1), (10, 1, 10)])
def test_save_n_epoch_ratio_sets_the_interval_as_kohya(num_epochs, ratio, every):
    # kohya: save_every_n_epochs = floor(num_epochs / save_n_epoch_ratio) or 1, over --save_every_n_epochs.
    assert schedule(num_epochs, save_n_epoch_ratio=ratio, save_every_n_epochs=7).every_n_epochs == every


def test_state_retention_defaults_to_the_files_and_can_differ():
    saves = schedule(save_every_n_steps=5, save_last_n_steps=10, save_state=True)
    assert saves.keep_step_states == 10 and saves.states_with_files and saves.state_at_end
    saves = schedule(save_every_n_epochs=1, save_last_n_epochs=3, save_last_n_epochs_state=1)
    assert (saves.keep_epochs, saves.keep_epoch_states) == (3, 1)
    assert schedule(save_state_on_train_end=True).state_at_end and not schedule().state_at_end
