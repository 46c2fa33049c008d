"""The first step each optimizer takes, computed by hand in float64 from its paper's update rule, so an
ignored name or argument shows; and what the loop reads and switches: d * lr, schedule-free weights."""

import math

import pytest
import torch
from test_optimizers import needs

from loracraft.config.schema import TrainConfig
from loracraft.training.optimizer import build_optimizer, evaluation_weights, learning_rates
from loracraft.training.progress import TrainingLog
from loracraft.training.schedule import build_lr_scheduler

P0 = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
G = torch.tensor([0.3, -0.2, 0.0, 1.5], dtype=torch.float64)


def first_step(lr: float, **options) -> torch.Tensor:
    """The change of P0 after one step with gradient G."""
    config = TrainConfig(learning_rate=lr, **options)
    param = torch.nn.Parameter(P0.clone())
    optimizer = build_optimizer(config, [{"params": [param], "lr": lr, "name": "unet"}])
    param.grad = G.clone()
    optimizer.step()
    return param.detach() - P0


def adamw_first_step(lr: float, weight_decay: float, eps: float = 1e-8) -> torch.Tensor:
    # Bias-corrected m/sqrt(v) after one step is g/|g|; decoupled decay shrinks the weights first.
    return -lr * weight_decay * P0 - lr * G / (G.abs() + eps)


def test_adamw_first_step():
    delta = first_step(1e-2, optimizer_args=["weight_decay=0.1"])
    assert torch.allclose(delta, adamw_first_step(1e-2, 0.1), atol=1e-12)


def test_lion_first_step_is_the_sign_of_the_gradient():
    pytest.importorskip("lion_pytorch")
    delta = first_step(1e-2, optimizer_type="Lion", optimizer_args=["weight_decay=0.5"])
    # Lion: w <- w(1 - lr*wd) - lr*sign(beta1*m + (1-beta1)*g), with m = 0 at the first step.
    assert torch.allclose(delta, -1e-2 * 0.5 * P0 - 1e-2 * torch.sign(G), atol=1e-12)


def test_sgd_nesterov_first_step_uses_kohyas_momentum():
    # Nesterov SGD with momentum mu: buffer b = g at the first step, update g + mu*b = (1 + mu) g.
    assert torch.allclose(first_step(0.1, optimizer_type="SGDNesterov"), -0.1 * 1.9 * G, atol=1e-12)
    assert torch.allclose(
        first_step(0.1, optimizer_type="SGDNesterov", optimizer_args=["momentum=0.5"]),
        -0.1 * 1.5 * G,
        atol=1e-12,
    )


def test_prodigy_first_step_is_scaled_by_d0():
    pytest.importorskip("prodigyopt")
    d0, beta1, beta2, eps = 1e-6, 0.9, 0.999, 1e-8
    # Prodigy's first step, before d has grown: Adam's moments of d0*g, step d0*lr.
    expected = -d0 * 1.0 * (1 - beta1) * G / (math.sqrt(1 - beta2) * G.abs() + eps)
    assert torch.allclose(first_step(1.0, optimizer_type="Prodigy"), expected, rtol=1e-9, atol=1e-18)
    assert torch.allclose(first_step(0.5, optimizer_type="Prodigy"), 0.5 * expected, rtol=1e-9, atol=1e-18)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_adamw8bit_first_step_is_adamws_with_8bit_state(device):
    if device == "cpu":
        needs("bitsandbytes")
    else:
        pytest.importorskip("bitsandbytes")
    config = TrainConfig(optimizer_type="AdamW8bit", learning_rate=1e-2, optimizer_args=["weight_decay=0.0"])
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(8192, generator=generator)  # above bitsandbytes' 4096: 8-bit state
    grad = torch.randn(8192, generator=generator)
    param = torch.nn.Parameter(start.clone().to(device))
    optimizer = build_optimizer(config, [{"params": [param], "lr": 1e-2}])
    param.grad = grad.clone().to(device)
    optimizer.step()
    expected = -1e-2 * grad.double() / (grad.double().abs() + 1e-8)
    assert torch.allclose((param.detach().cpu() - start).double(), expected, atol=1e-4)
    assert optimizer.state[param]["state1"].dtype == torch.uint8


def test_learning_rates_show_d_times_lr_for_adaptive_optimizers():
    pytest.importorskip("prodigyopt")
    config = TrainConfig(optimizer_type="Prodigy", learning_rate=1.0, lr_scheduler="linear")
    params = [torch.nn.Parameter(torch.randn(16)), torch.nn.Parameter(torch.randn(16))]
    groups = [
        {"params": [params[0]], "lr": 1.0, "name": "unet"},
        {"params": [params[1]], "lr": 1.0, "name": "te"},
    ]
    optimizer = build_optimizer(config, groups)
    scheduler = build_lr_scheduler(config, optimizer, 10)
    for _ in range(3):
        for param in params:
            param.grad = torch.ones(16)  # a steady direction, along which Prodigy raises d
        optimizer.step()
        scheduler.step()
    rates = learning_rates(optimizer, scheduler)
    d = optimizer.param_groups[0]["d"]
    assert d > 1e-6  # Prodigy has raised its estimate above d0
    assert rates == pytest.approx({"unet": 0.7, "te": 0.7, "d*lr/unet": d * 0.7, "d*lr/te": d * 0.7})


def test_learning_rates_of_a_plain_optimizer_are_the_schedules():
    config = TrainConfig(learning_rate=1e-3)
    optimizer = build_optimizer(config, [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3}])
    assert learning_rates(optimizer, build_lr_scheduler(config, optimizer, 10)) == {"group0": 1e-3}


def test_schedule_free_saves_and_samples_with_its_average_weights():
    """Schedule-free AdamW trains on y = (1 - beta1) z + beta1 x and converges on x (Defazio et al.
    2024): inside `evaluation_weights` the parameters are x, outside y again."""
    pytest.importorskip("schedulefree")
    config = TrainConfig(optimizer_type="AdamWScheduleFree", learning_rate=0.1)
    param = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
    optimizer = build_optimizer(config, [{"params": [param], "lr": 0.1}])
    assert optimizer.param_groups[0]["train_mode"]  # built in training mode, as kohya does
    for _ in range(5):
        param.grad = torch.randn(8, dtype=torch.float64)
        optimizer.step()
    y = param.detach().clone()
    with evaluation_weights(optimizer):
        x = param.detach().clone()
        assert not optimizer.param_groups[0]["train_mode"]
    z = optimizer.state[param]["z"]
    beta1 = optimizer.param_groups[0]["betas"][0]
    assert torch.allclose(y, (1 - beta1) * z + beta1 * x, atol=1e-12) and not torch.allclose(x, y)
    assert torch.allclose(param.detach(), y, atol=1e-12) and optimizer.param_groups[0]["train_mode"]


def test_evaluation_weights_leave_other_optimizers_alone():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = build_optimizer(TrainConfig(learning_rate=0.1), [{"params": [param], "lr": 0.1}])
    with evaluation_weights(optimizer):
        assert torch.equal(param.detach(), torch.ones(2))


def test_progress_bar_shows_d_times_lr():
    log = TrainingLog(total_steps=2, show_bar=True)
    log.step(1, 1, torch.tensor(0.25), {"unet": 1.0, "text_encoder": 1.0, "d*lr/unet": 3e-6})
    log.flush()
    assert "lr=1.00e+00" in log.bar.postfix and "d*lr=3.00e-06" in log.bar.postfix
    log.close()
