"""The learning-rate curve `loracraft plan` draws: the run's own schedule, stepped as accelerate steps it,
per parameter group; a real run's rates are compared in tests/integration/test_plan_command.py."""

import pytest
import torch
from PIL import Image

from loracraft.atomic import leftover_temp_files
from loracraft.config.schema import TrainConfig
from loracraft.training.lr_curve import (
    COLOURS,
    describe_lr_curve,
    draw_lr_curve,
    lr_curve,
    write_lr_curve,
)


def groups(unet_lr: float = 1e-4, text_encoder_lr: float | None = None) -> list[dict]:
    found = [{"params": [torch.zeros(2, requires_grad=True)], "lr": unet_lr, "name": "unet"}]
    if text_encoder_lr is not None:
        found.append(
            {"params": [torch.zeros(2, requires_grad=True)], "lr": text_encoder_lr, "name": "textencoder"}
        )
    return found


def test_warmup_rises_linearly_then_holds_for_every_group_at_its_own_rate():
    config = TrainConfig(lr_scheduler="constant_with_warmup", lr_warmup_steps=4)
    curve = lr_curve(config, groups(1e-4, 5e-5), total_steps=8)
    assert curve.groups == ("unet", "textencoder")
    assert curve.rates[0] == pytest.approx([0, 2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4, 1e-4])
    assert curve.rates[1] == pytest.approx([rate / 2 for rate in curve.rates[0]])
    assert curve.notes == () and curve.stops == {}


@pytest.mark.parametrize("name", ["cosine_with_restarts", "linear", "polynomial", "constant_with_warmup"])
def test_several_processes_follow_the_same_curve(name):
    # accelerate steps a prepared schedule once per process; the horizon and warm-up are scaled to match.
    config = TrainConfig(lr_scheduler=name, lr_warmup_steps=0.2, lr_scheduler_num_cycles=3)
    one = lr_curve(config, groups(), total_steps=30)
    four = lr_curve(config, groups(), total_steps=30, num_processes=4)
    assert four.rates[0] == pytest.approx(one.rates[0])
    assert one.rates[0][0] == 0 and max(one.rates[0]) == pytest.approx(1e-4)


def test_restarts_come_back_to_the_full_rate():
    config = TrainConfig(lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=2, learning_rate=1e-3)
    rates = lr_curve(config, groups(1e-3), total_steps=20).rates[0]
    assert rates[0] == rates[10] == pytest.approx(1e-3)
    assert rates[9] < 1e-4 and rates[19] < 1e-4


def test_the_text_encoder_stop_and_what_cannot_be_known_are_said():
    config = TrainConfig(optimizer_type="Prodigy", learning_rate=1.0, stop_text_encoder_training="50%")
    curve = lr_curve(config, groups(1.0, 1.0), total_steps=10)
    assert curve.stops == {"textencoder": 5}
    assert curve.notes == (
        "Prodigy steps by d * lr, with d estimated while training: the curve shows lr; d cannot be known "
        "before the run (the run logs d*lr)",
    )
    assert describe_lr_curve(curve) == [
        "  unet: 1 at step 1, 1 at step 5, 1 at step 10; highest 1",
        "  textencoder: 1 at step 1, 1 at step 5, 1 at step 10; highest 1; frozen from step 5",
        f"  note: {curve.notes[0]}",
    ]


def test_the_png_has_a_line_per_group_and_is_written_atomically(tmp_path):
    config = TrainConfig(lr_scheduler="cosine", lr_warmup_steps=3)
    curve = lr_curve(config, groups(1e-4, 3e-5), total_steps=40)
    path = write_lr_curve(curve, tmp_path / "toy-lr.png", "toy")
    assert leftover_temp_files(path) == []
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == draw_lr_curve(curve, "toy").size
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert COLOURS[0] in colours and COLOURS[1] in colours and COLOURS[2] not in colours


def test_a_group_drawn_under_anothers_line_says_so_in_the_legend():
    from loracraft.training.lr_curve import LRCurve, legend_labels

    same, other = (1e-3, 5e-4, 0.0), (1e-4, 1e-4, 1e-4)
    curve = LRCurve(("unet", "textencoder", "textencoder2"), (same, same, other), {}, ())
    assert legend_labels(curve) == ["unet", "textencoder: the line of unet", "textencoder2"]
    frozen = LRCurve(("unet", "textencoder"), (same, same), {"textencoder": 2}, ())
    assert legend_labels(frozen) == ["unet", "textencoder (frozen from step 2)"]
