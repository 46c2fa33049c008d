"""Precision, memory and attention on CUDA: fp16 with loss scaling, bf16, full fp16/bf16 adapters, float8
base weights, SDPA's memory-efficient kernel, xformers when installed, --lowram and torch.compile. Each test
trains on the tiny SD1 model and checks what the option does on the GPU; all skip without CUDA."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.config.schema import TrainConfig
from loracraft.models.attention import MemoryEfficientSdpaProcessor
from loracraft.training.batches import make_batch_loader
from loracraft.training.precision import FLOAT8
from loracraft.training.step import diffusion_loss
from loracraft.training.trainer import setup_training, start_run
from run_helpers import set_up, train_argv, train_steps

pytestmark = pytest.mark.gpu

F16, BF16 = torch.float16, torch.bfloat16


def cli_flags(tiny_sd1, tmp_path: Path, *extra: str) -> list[str]:
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    return train_argv(
        tiny_sd1.single_file,
        tree.train_dir,
        tmp_path / "out",
        "--resolution",
        "64",
        "--enable_bucket",
        "false",
        "--network_dim",
        "4",
        "--max_train_steps",
        "6",
        "--seed",
        "1",
        *extra,
        name="gpu",
    )


def saved_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    with safe_open(tmp_path / "out" / "gpu.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.endswith(".weight")}


def assert_trained(weights: dict[str, torch.Tensor]) -> None:
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert any(w.abs().sum() > 0 for k, w in weights.items() if k.endswith("lora_up.weight"))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda(tiny_sd1, tmp_path, precision):
    assert main(cli_flags(tiny_sd1, tmp_path, "--mixed_precision", precision)) == 0
    weights = saved_weights(tmp_path)
    assert_trained(weights)
    assert {w.dtype for w in weights.values()} == {torch.float32}


def run_config(tiny_sd1, tmp_path: Path, **settings) -> TrainConfig:
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    values = {
        "pretrained_model_name_or_path": str(tiny_sd1.single_file),
        "train_data_dir": str(tree.train_dir),
        "output_dir": str(tmp_path / "out"),
        "caption_extension": ".txt",
        "resolution": (64, 64),
        "enable_bucket": False,
        "train_batch_size": 2,
        "max_train_steps": 4,
        "network_dim": 4,
        "learning_rate": 1e-3,
        "cache_latents": True,
        "seed": 0,
        **settings,
    }
    return TrainConfig(**values)


def test_fp16_scales_the_loss_and_trains_float32_adapters(tiny_sd1, tmp_path):
    config = run_config(tiny_sd1, tmp_path, mixed_precision="fp16")
    start, setup, _ = set_up(config)
    scaler = start.accelerator.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    result = train_steps(start, setup, config)
    assert result.steps == 4 and torch.isfinite(torch.tensor(result.final_average_loss))
    # The scale started at 2**16 and moved only by the scaler's own factors (x2 growth, /2 on overflow).
    assert torch.log2(torch.tensor(scaler.get_scale())).item().is_integer()
    network = start.accelerator.unwrap_model(setup.parts.model).network
    assert {p.dtype for p in network.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in start.bundle.unet.parameters()} == {F16}


FULL_HALF = {
    # Plain AdamW, as kohya builds it, cannot hold its eps (1e-8) in fp16: the run must pass fused=True
    # itself, or the first step gives NaN and the run stops.
    "full_fp16": (["--mixed_precision", "fp16", "--full_fp16"], F16),
    "full_bf16": (["--mixed_precision", "bf16", "--full_bf16"], BF16),
}


@pytest.mark.parametrize(("flags", "dtype"), FULL_HALF.values(), ids=FULL_HALF)
def test_full_half_adapters_train_and_save_in_their_dtype(tiny_sd1, tmp_path, flags, dtype):
    # Without the scaler patch, fp16 adapters stop at "Attempting to unscale FP16 gradients".
    assert main(cli_flags(tiny_sd1, tmp_path, *flags)) == 0
    weights = saved_weights(tmp_path)
    assert_trained(weights)
    assert {w.dtype for w in weights.values()} == {dtype}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fp8_base_stores_float8_weights_on_the_gpu_and_trains(tiny_sd1, tmp_path, precision):
    config = run_config(tiny_sd1, tmp_path, mixed_precision=precision, fp8_base=True)
    start, setup, _ = set_up(config)
    layers = [m for m in start.bundle.unet.modules() if type(m) in (nn.Linear, nn.Conv2d)]
    assert {m.weight.dtype for m in layers} == {FLOAT8}
    assert {m.weight.device.type for m in layers} == {"cuda"}
    assert train_steps(start, setup, config).steps == 4
    network = start.accelerator.unwrap_model(setup.parts.model).network
    ups = [network.adapter(name).lora_up.weight for name in network.unet_names]
    assert all(torch.isfinite(up).all() for up in ups) and any(up.abs().sum() > 0 for up in ups)


def test_mem_eff_attn_runs_pytorchs_memory_efficient_kernel(tiny_sd1, tmp_path):
    config = run_config(tiny_sd1, tmp_path, mixed_precision="bf16", mem_eff_attn=True)
    start, setup, lines = set_up(config)
    processors = start.bundle.unet.attn_processors.values()
    assert {type(p) for p in processors} == {MemoryEfficientSdpaProcessor}
    assert not [line for line in lines if line.startswith("note: --mem_eff_attn")]
    batch = next(iter(setup.parts.loader))
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        diffusion_loss(setup.step_models, batch, start.accelerator.device).backward()
    ops = {event.name for event in profile.events()}
    assert "aten::_scaled_dot_product_efficient_attention" in ops
    assert "aten::_scaled_dot_product_flash_attention" not in ops


def test_xformers_attention_when_installed(tiny_sd1, tmp_path):
    pytest.importorskip("xformers")
    from diffusers.models.attention_processor import XFormersAttnProcessor

    config = run_config(tiny_sd1, tmp_path, mixed_precision="fp16", xformers=True)
    start, setup, _ = set_up(config)
    assert {type(p) for p in start.bundle.unet.attn_processors.values()} == {XFormersAttnProcessor}
    assert {type(p) for p in start.bundle.vae.attn_processors.values()} == {XFormersAttnProcessor}
    assert train_steps(start, setup, config).steps == 4


def test_lowram_puts_the_models_on_the_gpu_at_load_and_keeps_them_there(tiny_sd1, tmp_path):
    config = run_config(
        tiny_sd1, tmp_path, lowram=True, network_train_unet_only=True, cache_text_encoder_outputs=True
    )
    lines: list[str] = []
    start = start_run(config, lines.append)
    bundle = start.bundle
    assert {bundle.unet.device.type, bundle.text_encoder.device.type, bundle.vae.device.type} == {"cuda"}
    setup_training(config, start.plan, bundle, start.accelerator, start.seed, lines.append)
    # Their outputs are cached, yet they stay on the GPU rather than moving back into RAM.
    assert bundle.vae.device.type == "cuda" and bundle.text_encoder.device.type == "cuda"
    assert any(line.startswith("VAE: latents are cached, so the VAE stays on cuda") for line in lines)


def test_highvram_keeps_the_gpus_cached_memory_after_latent_caching(tiny_sd1, tmp_path):
    reserved = {}
    for highvram in (False, True):
        config = run_config(tiny_sd1, tmp_path / str(highvram), highvram=highvram)
        lines: list[str] = []
        start = start_run(config, lines.append)
        torch.cuda.empty_cache()
        make_batch_loader(config, start.plan, start.bundle, start.accelerator.device, lines.append)
        # The VAE's weights stay allocated either way; the batches' activations stay cached only with it.
        reserved[highvram] = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        del start
    assert reserved[True] > reserved[False]


def test_torch_compile_with_inductor_trains(tiny_sd1, tmp_path):
    assert main(cli_flags(tiny_sd1, tmp_path, "--mixed_precision", "bf16", "--torch_compile")) == 0
    assert_trained(saved_weights(tmp_path))
