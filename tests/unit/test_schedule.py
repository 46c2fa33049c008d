"""LR schedules: every kohya --lr_scheduler value, its arguments and units, against the formulas written
out here in float64 (transformers' and diffusers' definitions, with kohya's step arithmetic)."""

import math

import pytest
import torch
from transformers.optimization import Adafactor, AdafactorSchedule

from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.training.schedule import (
    ScheduleSteps,
    build_lr_scheduler,
    check_lr_scheduler,
    schedule_arguments,
    schedule_steps,
    unused_schedule_settings,
)

BASE_LR = 1.0


def lr_curve(total: int, num_processes: int = 1, **options) -> list[float]:
    """The learning rate each of `total` optimizer steps trains with."""
    config = TrainConfig(learning_rate=BASE_LR, **options)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    scheduler = build_lr_scheduler(config, optimizer, total, num_processes)
    curve = []
    for _ in range(total):
        curve.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return curve


def warm(step: int, warmup: int) -> float:
    return step / max(1, warmup)


def half_cosine(progress: float, cycles: float = 0.5) -> float:
    return 0.5 * (1 + math.cos(math.pi * cycles * 2 * progress))


def expected_cosine(s: int, warmup: int, total: int) -> float:
    return warm(s, warmup) if s < warmup else half_cosine((s - warmup) / (total - warmup))


def expected_linear(s: int, warmup: int, total: int) -> float:
    return warm(s, warmup) if s < warmup else max(0.0, (total - s) / (total - warmup))


def expected_restarts(s: int, warmup: int, total: int, cycles: int) -> float:
    if s < warmup:
        return warm(s, warmup)
    progress = (s - warmup) / (total - warmup)
    return 0.5 * (1 + math.cos(math.pi * ((cycles * progress) % 1.0)))


def expected_polynomial(s: int, warmup: int, total: int, power: float, lr_end: float = 1e-7) -> float:
    if s < warmup:
        return warm(s, warmup)
    remaining = 1 - (s - warmup) / (total - warmup)
    return ((BASE_LR - lr_end) * remaining**power + lr_end) / BASE_LR


def expected_inverse_sqrt(s: int, warmup: int, timescale: int) -> float:
    return warm(s, warmup) if s < warmup else 1 / math.sqrt((s + timescale - warmup) / timescale)


def expected_min_lr(s: int, warmup: int, total: int, ratio: float) -> float:
    if s < warmup:
        return warm(s, warmup)
    return half_cosine((s - warmup) / (total - warmup)) * (1 - ratio) + ratio


def expected_wsd(s: int, warmup: int, decay: int, total: int, ratio: float) -> float:
    stable = total - warmup - decay
    if s < warmup:
        return warm(s, warmup)
    if s < warmup + stable:
        return 1.0
    return half_cosine((s - warmup - stable) / decay) * (1 - ratio) + ratio


CASES = {
    "constant": ({"lr_scheduler": "constant"}, lambda s: 1.0),
    "constant_with_warmup": (
        {"lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 10},
        lambda s: warm(s, 10) if s < 10 else 1.0,
    ),
    "linear": ({"lr_scheduler": "linear", "lr_warmup_steps": 10}, lambda s: expected_linear(s, 10, 100)),
    "cosine": ({"lr_scheduler": "cosine", "lr_warmup_steps": 10}, lambda s: expected_cosine(s, 10, 100)),
    "cosine_with_restarts": (
        {"lr_scheduler": "cosine_with_restarts", "lr_warmup_steps": 4, "lr_scheduler_num_cycles": 3},
        lambda s: expected_restarts(s, 4, 100, 3),
    ),
    "polynomial": (
        {"lr_scheduler": "polynomial", "lr_warmup_steps": 5, "lr_scheduler_power": 2.0},
        lambda s: expected_polynomial(s, 5, 100, 2.0),
    ),
    "inverse_sqrt": (
        {"lr_scheduler": "inverse_sqrt", "lr_warmup_steps": 5, "lr_scheduler_timescale": 20},
        lambda s: expected_inverse_sqrt(s, 5, 20),
    ),
    "inverse_sqrt, timescale = warm-up": (
        {"lr_scheduler": "inverse_sqrt", "lr_warmup_steps": 8},
        lambda s: expected_inverse_sqrt(s, 8, 8),
    ),
    "cosine_with_min_lr": (
        {"lr_scheduler": "cosine_with_min_lr", "lr_warmup_steps": 10, "lr_scheduler_min_lr_ratio": 0.1},
        lambda s: expected_min_lr(s, 10, 100, 0.1),
    ),
    "warmup_stable_decay": (
        {"lr_scheduler": "warmup_stable_decay", "lr_warmup_steps": 10, "lr_decay_steps": 0.3},
        lambda s: expected_wsd(s, 10, 30, 100, 0.0),
    ),
    "piecewise_constant": (
        {"lr_scheduler": "piecewise_constant", "lr_scheduler_args": ["step_rules='1:30,0.5:60,0.1'"]},
        lambda s: 1.0 if s < 30 else 0.5 if s < 60 else 0.1,
    ),
    "lr_scheduler_type (torch.optim.lr_scheduler name)": (
        {"lr_scheduler_type": "StepLR", "lr_scheduler_args": ["step_size=7", "gamma=0.5"]},
        lambda s: 0.5 ** (s // 7),
    ),
    "lr_scheduler_type (dotted path)": (
        {"lr_scheduler_type": "torch.optim.lr_scheduler.ExponentialLR", "lr_scheduler_args": ["gamma=0.97"]},
        lambda s: 0.97**s,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_schedule_follows_its_formula(case):
    options, expected = CASES[case]
    curve = lr_curve(100, **options)
    assert curve == pytest.approx([expected(s) for s in range(100)], abs=1e-9)


def test_warmup_stable_decay_keeps_the_min_lr_ratio_after_warmup():
    # transformers' warm-up of this schedule changed across versions when a minimum is set; the rest not.
    options = {"lr_scheduler": "warmup_stable_decay", "lr_warmup_steps": 10, "lr_decay_steps": 40}
    curve = lr_curve(100, lr_scheduler_min_lr_ratio=0.2, **options)
    expected = [expected_wsd(s, 10, 40, 100, 0.2) for s in range(10, 100)]
    assert curve[10:] == pytest.approx(expected, abs=1e-9)
    assert curve[-1] > 0.2


@pytest.mark.parametrize(
    ("name", "cycles", "expected_cycles"),
    [("cosine_with_restarts", 3, 3), ("cosine_with_min_lr", 3, 1.5), ("warmup_stable_decay", 3, 1.5)],
)
def test_kohya_halves_the_cycles_of_min_lr_and_wsd(name, cycles, expected_cycles):
    config = TrainConfig(lr_scheduler=name, lr_scheduler_num_cycles=cycles, lr_scheduler_min_lr_ratio=0.1)
    assert schedule_arguments(config, ScheduleSteps(100, 0, 10))["num_cycles"] == expected_cycles


@pytest.mark.parametrize(
    ("warmup", "decay", "processes", "expected"),
    [
        (10, 0, 1, ScheduleSteps(200, 10, 0)),
        (0.05, 0.25, 1, ScheduleSteps(200, 10, 50)),
        ("10%", "20%", 1, ScheduleSteps(200, 20, 40)),
        (10, 0.25, 2, ScheduleSteps(400, 20, 100)),
    ],
)
def test_schedule_steps_are_kohyas(warmup, decay, processes, expected):
    config = TrainConfig(lr_warmup_steps=warmup, lr_decay_steps=decay)
    assert schedule_steps(config, 200, processes) == expected


def test_horizon_scales_with_processes_like_kohya():
    config = TrainConfig(learning_rate=1.0, lr_scheduler="linear")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(config, optimizer, 50, num_processes=2)
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    assert math.isclose(scheduler.get_last_lr()[0], 0.5)


def test_warmup_and_decay_longer_than_the_run_is_one_line():
    config = TrainConfig(lr_scheduler="warmup_stable_decay", lr_warmup_steps=60, lr_decay_steps=50)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(UserError, match="longer than the run's 100 steps"):
        build_lr_scheduler(config, optimizer, 100)


def test_schedule_free_optimizers_keep_their_rate():
    pytest.importorskip("schedulefree")
    curve = lr_curve(20, optimizer_type="AdamWScheduleFree", lr_scheduler="cosine", lr_warmup_steps=5)
    assert curve == [BASE_LR] * 20


def test_adafactor_relative_step_reports_adafactors_own_rate():
    """kohya forces AdaFactor's own schedule: before a step it reports the learning rate as given, then
    AdaFactor's relative step min(1e-2, 1/sqrt(step)) times the parameter scale max(1e-3, RMS(param))."""
    config = TrainConfig(optimizer_type="AdaFactor", learning_rate=3e-4, lr_scheduler="cosine")
    param = torch.nn.Parameter(torch.zeros(16))
    optimizer = Adafactor([param], lr=None, relative_step=True)
    scheduler = build_lr_scheduler(config, optimizer, 100)
    assert isinstance(scheduler, AdafactorSchedule) and scheduler.get_last_lr() == [3e-4]
    for step in (1, 2, 3):
        param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
        param_scale = max(1e-3, param.detach().pow(2).mean().sqrt().item())
        assert scheduler.get_last_lr()[0] == pytest.approx(param_scale * min(1e-2, 1 / math.sqrt(step)))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"lr_scheduler": "cosine", "lr_warmup_steps": 10}, None),
        ({"lr_scheduler": "constant"}, None),
        ({"lr_scheduler": "constant", "lr_warmup_steps": 10}, "--lr_scheduler constant has no warm-up"),
        ({"lr_scheduler_type": "StepLR", "lr_scheduler_args": ["step_size=2"], "lr_warmup_steps": 0.1},
         "--lr_scheduler_type StepLR has no warm-up"),
        ({"lr_scheduler": "piecewise_constant", "lr_scheduler_args": ["step_rules='1:3,0.5'"],
          "lr_warmup_steps": 3}, "--lr_scheduler piecewise_constant has no warm-up"),
        ({"optimizer_type": "AdaFactor"}, "instead of --lr_scheduler constant"),
        ({"optimizer_type": "AdaFactor", "lr_scheduler": "adafactor"}, None),
        ({"optimizer_type": "AdaFactor", "lr_scheduler": "adafactor", "lr_warmup_steps": 5},
         "--lr_scheduler adafactor has no warm-up"),
        ({"optimizer_type": "AdamWScheduleFree", "lr_scheduler": "cosine"}, "schedules its own learning rate"),
        ({"optimizer_type": "AdamWScheduleFree"}, None),
    ],
)  # fmt: skip
def test_unused_schedule_settings_are_named(options, expected):
    note = unused_schedule_settings(TrainConfig(**options))
    assert note == expected if expected is None else expected in note


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr_scheduler_type": "CosineAnnealingLR"}, "CosineAnnealingLR needs T_max: pass it as T_max=..."),
        ({"lr_scheduler_type": "StepLR", "lr_scheduler_args": ["step_size=2", "gama=0.5"]},
         "StepLR has no argument 'gama'; it takes gamma, last_epoch, step_size"),
        ({"lr_scheduler_type": "no_such_package.Schedule"}, "needs the module 'no_such_package'"),
        ({"lr_scheduler_type": "torch.optim.lr_scheduler.NoSuchLR"}, "has no class NoSuchLR"),
        ({"lr_scheduler": "polynomial", "lr_scheduler_args": ["power=2"]},
         "--lr_scheduler_args power: loracraft sets it from its own flag"),
        ({"lr_scheduler": "cosine", "lr_scheduler_args": ["lr_end=0.1"]},
         "has no argument 'lr_end'"),
    ],
)  # fmt: skip
def test_schedule_problems_stop_the_run_in_one_line(options, message):
    with pytest.raises(UserError) as caught:
        check_lr_scheduler(TrainConfig(**options), echo=lambda _: None)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_schedule_arguments_reach_the_schedule():
    curve = lr_curve(100, lr_scheduler="polynomial", lr_scheduler_args=["lr_end=0.25"])
    assert curve[50] == pytest.approx(((BASE_LR - 0.25) * 0.5 + 0.25) / BASE_LR)


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [
        (None, 100, None),
        (-1, 100, 0),
        (0, 100, 0),
        (5, 100, 5),
        ("50%", 9, 5),
        ("7%", 100, 7),
        ("10%", 1600, 160),
    ],
)
def test_text_encoder_stop_step(value, total, expected):
    assert TrainConfig(stop_text_encoder_training=value).text_encoder_stop_step(total) == expected
