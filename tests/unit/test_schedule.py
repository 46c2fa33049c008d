"""LR schedules: kohya's names and warm-up units map onto diffusers' schedule helpers."""

import math

import pytest
import torch

from loracraft.config.schema import TrainConfig
from loracraft.training.schedule import build_lr_scheduler


def lr_curve(total: int, **options) -> list[float]:
    config = TrainConfig(learning_rate=1.0, **options)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(config, optimizer, total)
    curve = []
    for _ in range(total):
        curve.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return curve


def test_constant_ignores_warmup_like_kohya():
    assert lr_curve(10, lr_scheduler="constant", lr_warmup_steps=5) == [1.0] * 10


def test_warmup_ratio_is_a_share_of_total_steps():
    curve = lr_curve(100, lr_scheduler="constant_with_warmup", lr_warmup_steps=0.1)
    assert curve[0] == 0.0 and curve[5] == pytest.approx(0.5) and curve[10:] == [1.0] * 90


def test_cosine_decays_to_zero_from_the_peak():
    curve = lr_curve(100, lr_scheduler="cosine", lr_warmup_steps=10)
    assert curve[10] == pytest.approx(1.0)
    assert curve[55] == pytest.approx(0.5, abs=0.02)
    assert curve[-1] < 0.01


def test_linear_and_polynomial_power():
    linear = lr_curve(100, lr_scheduler="linear")
    squared = lr_curve(100, lr_scheduler="polynomial", lr_scheduler_power=2.0)
    assert linear[50] == pytest.approx(0.5)
    # diffusers' polynomial decays to lr_end=1e-7: (1 - t)^2 at the midpoint.
    assert squared[50] == pytest.approx(0.25, abs=1e-3)


def test_cosine_with_restarts_cycles():
    curve = lr_curve(100, lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=2)
    assert curve[0] == pytest.approx(1.0) and curve[50] == pytest.approx(1.0)
    assert curve[49] < 0.01 and curve[25] == pytest.approx(0.5, abs=0.05)


def test_horizon_scales_with_processes_like_kohya():
    config = TrainConfig(learning_rate=1.0, lr_scheduler="linear")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(config, optimizer, 50, num_processes=2)
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    assert math.isclose(scheduler.get_last_lr()[0], 0.5)
