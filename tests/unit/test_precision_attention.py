"""Attention flags, the torch.compile backend, the fp16 loss scaler and the NaN stop's bookkeeping: kohya's
choices and what loracraft does where a choice cannot run here."""

import math

import pytest
import torch
from accelerate.utils import DynamoBackend
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from loracraft.errors import UserError
from loracraft.models.attention import MemoryEfficientSdpaProcessor, choose_attention, set_attention
from loracraft.training.accelerator import _unscale_fp16_gradients, check_dynamo_backend, make_accelerator
from loracraft.training.loop import NonFiniteLoss
from loracraft.training.progress import TrainingLog
from loracraft.training.trainer import non_finite_message
from model_helpers import tiny_unet

NO_XFORMERS = "--xformers: xformers is not installed; using PyTorch SDPA attention"
MEM_EFF_ON_CPU = "--mem_eff_attn: PyTorch's memory-efficient attention kernel runs on CUDA GPUs only"

# (mem_eff_attn, xformers, sdpa, xformers installed, cuda) -> attention, start of the note
ATTENTION = {
    "default-sdpa": (False, False, True, False, False, "sdpa", None),
    "sdpa-off-is-classic": (False, False, False, False, True, "classic", None),
    "xformers": (False, True, True, True, True, "xformers", None),
    "xformers-missing": (False, True, True, False, True, "sdpa", NO_XFORMERS),
    "xformers-without-cuda": (
        False,
        True,
        False,
        True,
        False,
        "sdpa",
        "--xformers: xformers needs a CUDA GPU",
    ),
    "mem-eff-on-cuda": (True, False, True, False, True, "mem_efficient", None),
    "mem-eff-wins-over-xformers": (True, True, True, True, True, "mem_efficient", None),
    "mem-eff-on-cpu": (True, False, True, False, False, "sdpa", MEM_EFF_ON_CPU),
}


@pytest.mark.parametrize(
    ("mem_eff_attn", "xformers", "sdpa", "installed", "cuda", "expected", "note"),
    ATTENTION.values(),
    ids=ATTENTION,
)
def test_choose_attention_in_kohyas_priority(mem_eff_attn, xformers, sdpa, installed, cuda, expected, note):
    attention, said = choose_attention(
        mem_eff_attn=mem_eff_attn, xformers=xformers, sdpa=sdpa, xformers_installed=installed, cuda=cuda
    )
    assert attention == expected
    assert (said is None) if note is None else (said.startswith(note) and "\n" not in said)


@pytest.mark.parametrize(
    ("attention", "processor"),
    [("sdpa", AttnProcessor2_0), ("classic", AttnProcessor), ("mem_efficient", MemoryEfficientSdpaProcessor)],
)
def test_set_attention_installs_the_processor(attention, processor):
    unet = tiny_unet()
    set_attention(unet, None, attention)
    assert {type(p) for p in unet.attn_processors.values()} == {processor}


def test_classic_and_sdpa_attention_compute_the_same_prediction():
    unet = tiny_unet().eval()
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32))
    with torch.no_grad():
        set_attention(unet, None, "classic")
        classic = unet(*inputs).sample
        set_attention(unet, None, "sdpa")
        sdpa = unet(*inputs).sample
    assert torch.allclose(classic, sdpa, atol=1e-5)


@pytest.mark.parametrize("backend", ["ipex", "tensort", "onnxrt"])
def test_a_dynamo_backend_this_pytorch_lacks_is_one_line(backend):
    with pytest.raises(UserError) as error:
        check_dynamo_backend(backend)
    message = str(error.value)
    assert message.startswith(f"--dynamo_backend {backend} is not available")
    assert "inductor" in message and "eager" in message and "\n" not in message


def test_the_dynamo_backend_reaches_accelerate(monkeypatch):
    # An `accelerate config` default must not compile a run without --torch_compile (kohya passes NO).
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "eager")
    assert make_accelerator("no", 1).state.dynamo_plugin.backend == DynamoBackend.NO
    compiled = make_accelerator("no", 1, dynamo_backend="aot_eager")
    assert compiled.state.dynamo_plugin.backend == DynamoBackend.AOT_EAGER


def scaled_fp16_gradient(scaler: torch.amp.GradScaler) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    """An fp16 weight whose gradient is 8 after the loss was scaled by 4 (the scaler's start)."""
    scaler.scale(torch.ones(()))  # the scaler starts its scale at the first scaled loss
    weight = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    weight.grad = torch.full((3,), 8.0, dtype=torch.float16)
    return weight, torch.optim.SGD([weight], lr=1.0)


def test_full_fp16_lets_the_scaler_unscale_fp16_gradients():
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    _, optimizer = scaled_fp16_gradient(scaler)
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.unscale_(optimizer)

    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    _unscale_fp16_gradients(scaler)
    weight, optimizer = scaled_fp16_gradient(scaler)
    scaler.unscale_(optimizer)
    assert weight.grad.tolist() == [2.0, 2.0, 2.0]


def test_the_log_finds_the_first_non_finite_loss_and_logs_nothing_after_it():
    log = TrainingLog(10, show_bar=False, average_window=10, sync_every=4)
    for step, value in enumerate([1.0, 3.0, math.inf, math.nan], start=1):
        log.step(step, 1, torch.tensor(value), {"unet": 1e-4})
    assert log.non_finite == (3, 1, math.inf)
    assert list(log.average.values) == [1.0, 3.0, math.inf]


def test_the_log_reads_finite_losses_without_a_stop():
    log = TrainingLog(10, show_bar=False, sync_every=2)
    for step in (1, 2, 3):
        log.step(step, 1, torch.tensor(0.5), {})
    assert log.non_finite is None and log.flush() == 0.5


@pytest.mark.parametrize(
    ("mixed_precision", "files", "expected"),
    [
        (
            "fp16",
            ["toy-000001.safetensors", "toy-000002.safetensors"],
            "the loss became nan at step 7 (epoch 3), so training stopped there; the last epoch file, "
            "toy-000002.safetensors, is intact. Likely causes: an fp16 overflow (try --mixed_precision bf16, "
            "and --no_half_vae), or a learning rate too high (lower --learning_rate / --unet_lr / "
            "--text_encoder_lr)",
        ),
        (
            "no",
            [],
            "the loss became nan at step 7 (epoch 3), so training stopped there; no LoRA file was written. "
            "Likely causes: a learning rate too high (lower --learning_rate / --unet_lr / --text_encoder_lr), "
            "or an fp16 overflow (try --mixed_precision bf16, and --no_half_vae)",
        ),
    ],
)
def test_the_stop_message_names_the_step_the_kept_file_and_the_causes(
    mixed_precision, files, expected, tmp_path
):
    message = non_finite_message(
        NonFiniteLoss(7, 3, math.nan), [tmp_path / f for f in files], mixed_precision
    )
    assert message == expected
