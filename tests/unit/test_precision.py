"""The run's dtypes (kohya's rules), float8 storage with per-layer upcast, the precision rules between
settings and the half-precision VAE's overflow. Expected values come from kohya's train_network.py rules
and from float64 arithmetic by hand."""

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

import loracraft.training.precision as precision_module
from loracraft.config.load import build_config
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.models.config_inference import base_config, model_kwargs
from loracraft.training.precision import (
    FLOAT8,
    Precision,
    check_float8,
    config_precision,
    describe_precision,
    fp16_vae_note,
    run_precision,
    store_in_float8,
)
from loracraft.training.vae_encoding import encode_images, vae_upcast_note

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (mixed_precision, flags) -> (compute, U-Net storage, text-encoder storage, adapters, VAE), as
# train_network.py decides them: prepare_dtype, the full_fp16/bf16 block, the fp8 block, vae_dtype.
KOHYA_DTYPES = {
    "no": ("no", {}, (F32, F32, F32, F32, F32)),
    "fp16": ("fp16", {}, (F16, F16, F16, F32, F16)),
    "bf16": ("bf16", {}, (BF16, BF16, BF16, F32, BF16)),
    "fp16-no_half_vae": ("fp16", {"no_half_vae": True}, (F16, F16, F16, F32, F32)),
    "no-no_half_vae": ("no", {"no_half_vae": True}, (F32, F32, F32, F32, F32)),
    "full_fp16": ("fp16", {"full_fp16": True}, (F16, F16, F16, F16, F16)),
    "full_bf16": ("bf16", {"full_bf16": True}, (BF16, BF16, BF16, BF16, BF16)),
    "fp8_base": ("bf16", {"fp8_base": True}, (BF16, FLOAT8, FLOAT8, F32, BF16)),
    "fp8_base_unet": ("fp16", {"fp8_base_unet": True}, (F16, FLOAT8, F16, F32, F16)),
    "fp8_base-and-unet": ("bf16", {"fp8_base": True, "fp8_base_unet": True}, (BF16, FLOAT8, BF16, F32, BF16)),
}


@pytest.mark.parametrize(("mixed_precision", "flags", "expected"), KOHYA_DTYPES.values(), ids=KOHYA_DTYPES)
def test_run_precision_follows_kohya(mixed_precision, flags, expected):
    assert run_precision(mixed_precision, **flags) == Precision(*expected)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"full_fp16": True}, "--full_fp16 needs --mixed_precision fp16, got no"),
        (
            {"full_fp16": True, "mixed_precision": "bf16"},
            "--full_fp16 needs --mixed_precision fp16, got bf16",
        ),
        (
            {"full_bf16": True, "mixed_precision": "fp16"},
            "--full_bf16 needs --mixed_precision bf16, got fp16",
        ),
        ({"full_fp16": True, "full_bf16": True, "mixed_precision": "fp16"}, "exclude each other"),
        ({"fp8_base": True}, "--fp8_base computes in the --mixed_precision dtype"),
        ({"fp8_base_unet": True}, "--fp8_base_unet computes in the --mixed_precision dtype"),
    ],
)
def test_invalid_precision_combinations_are_one_line(values, message):
    with pytest.raises(UserError) as error:
        build_config({}, values)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "values",
    [
        {"mixed_precision": "fp16", "full_fp16": True},
        {"mixed_precision": "bf16", "full_bf16": True},
        {"mixed_precision": "fp16", "fp8_base": True, "full_fp16": True},
        {"mixed_precision": "bf16", "fp8_base_unet": True},
        {"no_half_vae": True},
    ],
)
def test_valid_precision_combinations(values):
    config = build_config({}, values)
    assert all(getattr(config, name) == value for name, value in values.items())


def test_describe_precision_names_each_part():
    fp8 = run_precision("bf16", fp8_base_unet=True, no_half_vae=True)
    assert describe_precision(fp8, text_encoder_runs=True) == (
        "precision: U-Net float8_e4m3fn (computes in bfloat16), text encoder bfloat16, LoRA float32, "
        "VAE float32"
    )
    assert describe_precision(run_precision("no"), text_encoder_runs=False) == (
        "precision: U-Net float32, LoRA float32, VAE float32"
    )


def frozen_layers() -> nn.Sequential:
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, stride=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    return layers.requires_grad_(False)


def float64_reference(layers: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and input gradient (of the output's sum) in float64, from the values the layers hold and
    pass on: weights rounded to bf16 (the run's cast) then float8, biases, the input and the hidden
    activation rounded to bf16."""
    conv, _, linear = layers

    def bf16(t: torch.Tensor) -> torch.Tensor:
        return t.to(BF16).double()

    x64 = x.double().requires_grad_(True)
    w_conv = conv.weight.to(BF16).to(FLOAT8).double()
    w_linear = linear.weight.to(BF16).to(FLOAT8).double()
    hidden = F.conv2d(bf16(x64), w_conv, bf16(conv.bias), stride=2, padding=1)
    out = bf16(hidden).flatten(1) @ w_linear.T + bf16(linear.bias)
    out.sum().backward()
    return out.detach(), x64.grad


def test_float8_layers_store_float8_and_match_float64_forward_and_backward():
    layers = frozen_layers()
    x = torch.randn(2, 3, 8, 8)
    expected_out, expected_grad = float64_reference(layers, x)

    torch.nn.Module.to(layers, dtype=BF16)
    assert store_in_float8(layers, BF16) == 2
    assert layers[0].weight.dtype == layers[2].weight.dtype == FLOAT8
    assert layers[0].bias.dtype == layers[2].bias.dtype == BF16
    x = x.requires_grad_(True)
    out = layers(x)
    out.sum().backward()

    assert out.dtype == BF16 and x.grad.dtype == torch.float32
    # What remains is bf16's rounding of each result (relative 2**-9) and of the gradient's terms.
    assert (out.double() - expected_out).abs().max() <= expected_out.abs().max() * 2**-7
    assert (x.grad.double() - expected_grad).abs().max() <= expected_grad.abs().max() * 2**-7


def test_float8_layers_keep_no_upcast_weight_for_the_backward_pass():
    layers = frozen_layers()
    torch.nn.Module.to(layers, dtype=BF16)
    store_in_float8(layers, BF16)
    weight_shapes = {tuple(layers[0].weight.shape), tuple(layers[2].weight.shape)}
    saved = []

    def pack(tensor):
        saved.append((tuple(tensor.shape), tensor.dtype))
        return tensor

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layers(x).sum().backward()
    saved_weights = [dtype for shape, dtype in saved if shape in weight_shapes]
    assert saved_weights == [FLOAT8, FLOAT8]


def test_float8_layers_pass_no_gradient_to_an_input_that_needs_none():
    layers = frozen_layers()
    torch.nn.Module.to(layers, dtype=BF16)
    store_in_float8(layers, BF16)
    assert not layers(torch.randn(1, 3, 8, 8)).requires_grad


def test_check_float8_accepts_the_cpu():
    check_float8(torch.device("cpu"))


def test_check_float8_refuses_a_pytorch_without_float8(monkeypatch):
    monkeypatch.setattr(precision_module, "FLOAT8", None)
    with pytest.raises(UserError) as error:
        check_float8(torch.device("cpu"))
    message = str(error.value)
    assert message.startswith("--fp8_base / --fp8_base_unet: this PyTorch has no float8 type")
    assert "drop the flag" in message and "\n" not in message


def test_check_float8_refuses_a_device_that_cannot_convert(monkeypatch):
    # A dtype the tensor cannot be converted to stands in for a device without float8 (Apple's MPS).
    monkeypatch.setattr(precision_module, "FLOAT8", "no-such-dtype")
    with pytest.raises(UserError) as error:
        check_float8(torch.device("cpu"))
    message = str(error.value)
    assert message.startswith("--fp8_base / --fp8_base_unet: cpu cannot hold float8 weights (")
    assert "drop the flag" in message and "\n" not in message


def tiny_vae(overflowing: bool) -> AutoencoderKL:
    torch.manual_seed(0)
    shape = {"block_out_channels": [16, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}
    vae = AutoencoderKL(**model_kwargs({**base_config("sd1", "vae"), **shape})).eval()
    if overflowing:
        with torch.no_grad():  # activations past fp16's largest value (65504) in the first convolution
            vae.encoder.conv_in.weight.mul_(1e5)
    return vae


def test_a_half_vae_that_overflows_runs_in_float32_from_then_on():
    vae = tiny_vae(overflowing=True)
    torch.nn.Module.to(vae, dtype=F16)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert not torch.isfinite(vae.encode(pixels.half()).latent_dist.mean).all()  # the trap is real
    in_float32 = copy.deepcopy(vae)
    torch.nn.Module.to(in_float32, dtype=F32)

    notes = []
    latents = encode_images(vae, pixels, 2, "mean", on_upcast=notes.append)

    with torch.no_grad():
        assert torch.equal(latents, in_float32.encode(pixels).latent_dist.mean)
    assert vae.dtype == F32 and notes == [vae_upcast_note(F16)]
    assert notes[0].startswith("the VAE gave NaN/inf latents in float16") and "--no_half_vae" in notes[0]


def test_a_half_vae_that_does_not_overflow_stays_half():
    vae = tiny_vae(overflowing=False)
    torch.nn.Module.to(vae, dtype=BF16)
    notes = []
    latents = encode_images(vae, torch.rand(2, 3, 64, 64) * 2 - 1, 1, "mean", on_upcast=notes.append)
    assert vae.dtype == BF16 and not notes and latents.dtype == F32 and torch.isfinite(latents).all()


class _Vae:
    def __init__(self, **config):
        self.config = config


class _Bundle:
    def __init__(self, family, **vae_config):
        self.family, self.vae = family, _Vae(**vae_config)


@pytest.mark.parametrize(
    ("family", "mixed_precision", "vae_config", "expected"),
    [
        ("sdxl", "fp16", {"force_upcast": True}, torch.float32),
        ("sdxl", "fp16", {}, torch.float32),
        ("sdxl", "fp16", {"force_upcast": False}, torch.float16),  # a VAE made for fp16
        ("sdxl", "bf16", {"force_upcast": True}, torch.bfloat16),  # bf16 has fp32's range
        ("sd1", "fp16", {"force_upcast": True}, torch.float16),  # kohya's SD1 default
    ],
)
def test_sdxls_vae_leaves_fp16_without_no_half_vae(family, mixed_precision, vae_config, expected):
    config = TrainConfig.model_validate({"mixed_precision": mixed_precision})
    bundle = _Bundle(family, **vae_config)
    assert config_precision(config, bundle).vae == expected
    note = fp16_vae_note(config, bundle)
    assert (note is not None) == (expected == torch.float32)
    if note:
        assert note.startswith("VAE in float32: SDXL's VAE overflows in fp16 (NaN latents)")
