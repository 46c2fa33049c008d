"""The parts of the memory estimate: optimizer state sizes against the optimizers' real state, the live
byte count of the simulated step, and the printed table. The estimate against measured memory is in
tests/integration/test_plan_command.py (CPU) and test_plan_gpu.py (CUDA)."""

import importlib
import warnings

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.training.activation_memory import LiveBytes, simulate_step
from loracraft.training.memory_estimate import MemoryEstimate, WeightPart, format_memory
from loracraft.training.optimizer import build_optimizer
from loracraft.training.optimizer.registry import kind_of
from loracraft.training.optimizer.state_size import SIZES, optimizer_state_size

MIB = 1 << 20


def lora_like_weights() -> list[torch.Tensor]:
    """A down weight (random), an up weight (zeros, as LoRA starts), a 1x1 conv down weight, a small
    vector: over and under bitsandbytes' 8-bit threshold, 2-D and 4-D."""
    torch.manual_seed(0)
    return [
        torch.randn(4, 5000, requires_grad=True),
        torch.zeros(5000, 4, requires_grad=True),
        torch.randn(4, 8, 1, 1, requires_grad=True),
        torch.randn(100, requires_grad=True),
    ]


def real_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The bytes of every tensor in the optimizer's state, each distinct storage once (bitsandbytes
    shares one quantization map between weights; it is left out, 1 KiB per optimizer)."""
    storages = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key not in ("qmap1", "qmap2"):
                storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(storages.values()) - 4 * sum(
        1 for state in optimizer.state.values() if torch.is_tensor(state.get("step"))
    )


@pytest.mark.parametrize(
    "name, args",
    [(name, []) for name in SIZES]
    + [
        ("AdamW", ["amsgrad=True"]),
        ("Prodigy", ["betas=(0.0,0.99)", "slice_p=11"]),
        ("AdaFactor", ["relative_step=False", "beta1=0.9"]),
        ("AdamW8bit", ["min_8bit_size=16"]),
        ("Adam", []),
        ("SGD", []),
        ("SGD", ["momentum=0.9"]),
    ],
)
def test_state_size_is_what_the_optimizer_keeps_after_a_step(name, args):
    module = kind_of(name).module.partition(".")[0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    rate = 1.0 if kind_of(name).adaptive else 1e-3
    config = TrainConfig(optimizer_type=name, optimizer_args=args, learning_rate=rate)
    weights = lora_like_weights()
    estimated = optimizer_state_size(config, weights)  # before training, as the plan counts it
    try:
        optimizer = build_optimizer(config, [{"params": weights, "lr": rate}])
    except UserError as error:  # an argument this version of the package does not have yet
        pytest.skip(str(error))
    for weight in weights:
        weight.grad = torch.randn_like(weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            optimizer.step()
        except Exception as error:
            if not kind_of(name).uses_bitsandbytes:
                raise
            pytest.skip(f"this bitsandbytes cannot step on the CPU: {error}")
    assert estimated.known
    assert estimated.bytes == real_state_bytes(optimizer)


def test_an_unknown_optimizer_counts_two_states_and_says_so():
    config = TrainConfig(optimizer_type="torch.optim.Rprop")
    estimated = optimizer_state_size(config, [torch.zeros(10)])
    assert not estimated.known and estimated.bytes == 2 * 10 * 4


def test_live_bytes_counts_what_operations_create_while_it_lives():
    with FakeTensorMode(), LiveBytes(torch.device("cpu")) as live:
        a = torch.empty(1000)  # 4000 bytes
        b = a * 2  # 8000 live
        view = b[:10]  # a view holds no new memory
        del a
        c = b + 1  # 8000 again: the peak stays
        assert (live.live, live.peak) == (8000, 8000)
        del b, c
        assert live.live == 4000  # the view keeps b's storage alive
        del view
        assert live.live == 0


def test_a_simulated_step_counts_saved_inputs_and_gradients():
    # loss = sum((x @ W.T)²) for x (64, 512): the peak comes when W's gradient (1 MiB) is made from x,
    # which autograd saved for it, and y's gradient (128 KiB each); the loss and its seed gradient take
    # 4 bytes each. The forward's own peak (x, y, y²) is lower.
    layer = nn.Linear(512, 512, bias=False)
    peak = simulate_step(
        lambda: layer(torch.ones(64, 512)).square().sum(),
        [layer],
        lambda: [layer.weight],
        torch.device("cpu"),
    )
    assert peak.gradients == 512 * 512 * 4
    assert peak.activations == 2 * 64 * 512 * 4 + 8
    assert layer.weight.grad is None and not isinstance(layer.weight, torch._subclasses.FakeTensor)


def test_the_table_shows_each_part_the_total_and_the_other_setting():
    estimate = MemoryEstimate(
        device=torch.device("cuda:0"), capacity=24 * 1024 * MIB, bucket=(1024, 768), batch_size=2,
        weights=(WeightPart("U-Net", 4896 * MIB, "float16"), WeightPart("VAE", 160 * MIB, "float32")),
        held_elsewhere=("text encoders (outputs cached)",), adapters=WeightPart("LoRA", 88 * MIB, "float32"),
        gradients=88 * MIB, optimizer_state=176 * MIB, optimizer_known=True,
        activations={False: 30 * 1024 * MIB, True: 3 * 1024 * MIB}, checkpointing=False,
    )  # fmt: skip
    assert format_memory(estimate, "cuda:0 (RTX 4090)", "AdamW") == [
        "Memory (estimated peak on cuda:0 (RTX 4090) with 24.0 GiB; largest bucket 1024x768, batch 2)",
        "  U-Net                     4.8 GiB  float16",
        "  VAE                     160.0 MiB  float32",
        "  LoRA weights             88.0 MiB  float32",
        "  LoRA gradients           88.0 MiB",
        "  optimizer state         176.0 MiB  AdamW",
        "  activations              30.0 GiB  one step without gradient checkpointing",
        "  total                    35.3 GiB  of 24.0 GiB",
        "  with --gradient_checkpointing: activations 3.0 GiB, total 8.3 GiB",
        "  kept off the device: text encoders (outputs cached)",
        "  warning: this is more than the device's 24.0 GiB: turn on --gradient_checkpointing, lower "
        "--train_batch_size or the resolution, or cache latents and text-encoder outputs",
    ]
