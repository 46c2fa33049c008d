"""Precision, memory, attention and compile options on the tiny SD1 model, on the CPU: each test fails when
its option is ignored. (CUDA-only behaviour: tests/integration/test_train_gpu.py.)"""

from pathlib import Path

import pytest
import torch
from accelerate.utils import DynamoBackend, set_seed
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from safetensors import safe_open
from torch import nn

import loracraft.training.caching as caching
from data_helpers import load_bucket_tensor, make_kohya_dataset
from loracraft.cli import main
from loracraft.config.schema import TrainConfig
from loracraft.training.precision import FLOAT8
from loracraft.training.step import diffusion_loss
from run_helpers import set_up, train_argv, train_steps

pytestmark = pytest.mark.slow

BF16 = torch.bfloat16


def run_config(tiny_sd1, tmp_path: Path, **settings) -> TrainConfig:
    """A short run on 4 images (one dataset per test, made at the first call)."""
    data = tmp_path / "data"
    train_dir = data / "img" if data.exists() else make_kohya_dataset(data, reg_count=0).train_dir
    values = {
        "pretrained_model_name_or_path": str(tiny_sd1.single_file),
        "train_data_dir": str(train_dir),
        "output_dir": str(tmp_path / "out"),
        "caption_extension": ".txt",
        "resolution": (64, 64),
        "enable_bucket": False,
        "train_batch_size": 2,
        "max_train_steps": 2,
        "network_dim": 2,
        "learning_rate": 1e-3,
        "cache_latents": True,
        "latent_sampling": "mean",
        "network_train_unet_only": True,
        "cache_text_encoder_outputs": True,
        "seed": 0,
        **settings,
    }
    return TrainConfig(**values)


def first_loss(config: TrainConfig, adjust_bundle=None) -> float:
    """The loss of the first batch, with the noise and timesteps drawn from seed 0."""
    start, setup, _ = set_up(config, adjust_bundle)
    batch = next(iter(setup.parts.loader))
    set_seed(0)
    with torch.no_grad():
        return diffusion_loss(setup.step_models, batch, start.accelerator.device).item()


def round_through_float8(bundle) -> None:
    """The U-Net's Linear and Conv2d weights as --fp8_base stores them: cast to bf16, then float8."""
    for module in bundle.unet.modules():
        if type(module) in (nn.Linear, nn.Conv2d):
            module.weight.data = module.weight.data.to(BF16).to(FLOAT8).float()


def layer_weight_dtypes(model: nn.Module) -> set[torch.dtype]:
    return {m.weight.dtype for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d)}


def test_fp8_base_stores_the_unet_in_float8_and_computes_as_the_rounded_weights(tiny_sd1, tmp_path):
    config = run_config(tiny_sd1, tmp_path, mixed_precision="bf16", fp8_base=True)
    start, setup, lines = set_up(config)
    unet = start.bundle.unet
    assert layer_weight_dtypes(unet) == {FLOAT8}
    assert {p.dtype for p in unet.parameters()} == {FLOAT8, BF16}  # norms, biases, embeddings
    assert "precision: U-Net float8_e4m3fn (computes in bfloat16), LoRA float32, VAE bfloat16" in lines

    fp8 = first_loss(config)
    reference = first_loss(run_config(tiny_sd1, tmp_path, mixed_precision="bf16"), round_through_float8)
    plain = first_loss(run_config(tiny_sd1, tmp_path, mixed_precision="bf16"))
    assert fp8 == reference and fp8 != plain


@pytest.mark.parametrize(("flag", "text_encoder"), [("fp8_base", FLOAT8), ("fp8_base_unet", BF16)])
def test_fp8_text_encoder_only_with_fp8_base(tiny_sd1, tmp_path, flag, text_encoder):
    config = run_config(
        tiny_sd1,
        tmp_path,
        mixed_precision="bf16",
        network_train_unet_only=False,
        cache_text_encoder_outputs=False,
        **{flag: True},
    )
    start, setup, _ = set_up(config)
    assert layer_weight_dtypes(start.bundle.unet) == {FLOAT8}
    assert layer_weight_dtypes(start.bundle.text_encoder) == {text_encoder}
    # Embeddings cannot look up float8: they keep the compute dtype (kohya does the same).
    assert start.bundle.text_encoder.get_input_embeddings().weight.dtype == BF16
    result = train_steps(start, setup, config)
    network = start.accelerator.unwrap_model(setup.parts.model).network
    assert result.steps == 2 and any(
        network.adapter(name).lora_up.weight.abs().sum() > 0 for name in network.text_encoder_names
    )


def test_fp8_base_trains_end_to_end_from_the_command_line(tiny_sd1, tmp_path):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    out = tmp_path / "out"
    assert main(cli_flags(tiny_sd1, tree, out, "--mixed_precision", "bf16", "--fp8_base")) == 0
    with safe_open(out / "toy.safetensors", "pt") as f:
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
        assert f.metadata()["ss_fp8_base"] == "True"
    assert all(torch.isfinite(up).all() for up in ups) and any(up.abs().sum() > 0 for up in ups)


def cli_flags(tiny_sd1, tree, out: Path, *extra: str) -> list[str]:
    return train_argv(
        tiny_sd1.single_file,
        tree.train_dir,
        out,
        "--resolution",
        "64",
        "--enable_bucket",
        "false",
        "--network_dim",
        "2",
        "--max_train_steps",
        "2",
        "--learning_rate",
        "1e-3",
        "--seed",
        "1",
        *extra,
    )


def test_full_bf16_trains_bf16_adapters_and_saves_them_as_kohya_does(tiny_sd1, tmp_path):
    config = run_config(tiny_sd1, tmp_path, mixed_precision="bf16", full_bf16=True)
    start, setup, lines = set_up(config)
    network = start.accelerator.unwrap_model(setup.parts.model).network
    assert {p.dtype for p in network.parameters()} == {BF16}
    assert "precision: U-Net bfloat16, LoRA bfloat16, VAE bfloat16" in lines
    assert train_steps(start, setup, config).steps == 2
    assert any(network.adapter(name).lora_up.weight.abs().sum() > 0 for name in network.unet_names)

    # Without --save_precision kohya saves the network's own dtype.
    tree = make_kohya_dataset(tmp_path / "cli", reg_count=0)
    out = tmp_path / "cli-out"
    assert main(cli_flags(tiny_sd1, tree, out, "--mixed_precision", "bf16", "--full_bf16")) == 0
    with safe_open(out / "toy.safetensors", "pt") as f:
        weights = [f.get_tensor(k) for k in f.keys() if k.endswith(".weight")]
    assert {w.dtype for w in weights} == {BF16}


@pytest.mark.parametrize(("no_half_vae", "vae_dtype"), [(False, BF16), (True, torch.float32)])
def test_the_vae_runs_in_the_mixed_precision_dtype_unless_no_half_vae(
    tiny_sd1, tmp_path, no_half_vae, vae_dtype
):
    config = run_config(tiny_sd1, tmp_path, mixed_precision="bf16", no_half_vae=no_half_vae)
    start, setup, _ = set_up(config)
    assert start.bundle.vae.dtype == vae_dtype
    # The cached latents are the VAE's posterior means computed in that dtype.
    image = start.plan.images[0]
    pixels = load_bucket_tensor(image.record.path, image.choice.resized_size, image.choice.bucket)
    with torch.no_grad():
        expected = start.bundle.vae.encode(pixels[None].to(vae_dtype)).latent_dist.mean[0].float()
    assert torch.equal(setup.parts.loader.dataset.latents[0].latents, expected)


def test_switching_no_half_vae_re_encodes_the_disk_cache(tiny_sd1, tmp_path, capsys):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    flags = cli_flags(
        tiny_sd1, tree, tmp_path / "out", "--mixed_precision", "bf16", "--cache_latents_to_disk"
    )
    reports = []
    for extra in ([], [], ["--no_half_vae"]):
        assert main(flags + extra) == 0
        reports.append(next(line for line in capsys.readouterr().out.splitlines() if "latent cache:" in line))
    assert reports == [
        "latent cache: 4 encoded, 0 reused from disk",
        "latent cache: 0 encoded, 4 reused from disk",
        "latent cache: 4 encoded, 0 reused from disk",
    ]


@pytest.mark.parametrize("highvram", [False, True])
def test_highvram_keeps_the_cached_memory_between_latent_batches(tiny_sd1, tmp_path, monkeypatch, highvram):
    releases = []
    monkeypatch.setattr(caching, "release_cached_memory", releases.append)
    config = run_config(tiny_sd1, tmp_path, highvram=highvram, vae_batch_size=2)
    set_up(config)
    # 4 images in one bucket, 2 a VAE batch: kohya releases after each of the 2 batches.
    assert releases == ([] if highvram else [torch.device("cpu")] * 2)


def test_lowram_keeps_the_cached_encoders_on_the_device(tiny_sd1, tmp_path):
    _, _, lines = set_up(run_config(tiny_sd1, tmp_path, lowram=True))
    assert "VAE: latents are cached, so the VAE stays on cpu (--lowram) during training" in lines
    assert "text encoder: its outputs are cached, so it stays on cpu (--lowram) during training" in lines
    _, _, lines = set_up(run_config(tiny_sd1, tmp_path))
    assert "VAE: latents are cached, so the VAE stays on the CPU during training" in lines


@pytest.mark.parametrize(
    ("settings", "processor", "note"),
    [
        ({}, AttnProcessor2_0, None),
        ({"sdpa": False}, AttnProcessor, None),
        (
            {"xformers": True},
            AttnProcessor2_0,
            "note: --xformers: xformers is not installed; using PyTorch SDPA",
        ),
        (
            {"mem_eff_attn": True},
            AttnProcessor2_0,
            "note: --mem_eff_attn: PyTorch's memory-efficient attention",
        ),
    ],
    ids=["default", "sdpa-false", "xformers-missing", "mem-eff-on-cpu"],
)
def test_attention_flags_set_the_unets_attention(tiny_sd1, tmp_path, settings, processor, note):
    start, _, lines = set_up(run_config(tiny_sd1, tmp_path, **settings))
    assert {type(p) for p in start.bundle.unet.attn_processors.values()} == {processor}
    notes = [line for line in lines if line.startswith("note: --")]
    assert (notes == []) if note is None else (len(notes) == 1 and notes[0].startswith(note))


@pytest.mark.slow  # dynamo traces the whole step: about 40 s on two cores
def test_torch_compile_compiles_the_prepared_model_with_the_backend(tiny_sd1, tmp_path):
    config = run_config(tiny_sd1, tmp_path, torch_compile=True, dynamo_backend="eager", max_train_steps=1)
    start, setup, _ = set_up(config)
    assert start.accelerator.state.dynamo_plugin.backend == DynamoBackend.EAGER
    assert isinstance(setup.parts.model, torch._dynamo.eval_frame.OptimizedModule)
    assert train_steps(start, setup, config).steps == 1
    network = start.accelerator.unwrap_model(setup.parts.model).network
    assert any(network.adapter(name).lora_up.weight.abs().sum() > 0 for name in network.unet_names)


def test_without_torch_compile_the_backend_is_not_used(tiny_sd1, tmp_path):
    start, setup, _ = set_up(run_config(tiny_sd1, tmp_path, dynamo_backend="aot_eager"))
    assert start.accelerator.state.dynamo_plugin.backend == DynamoBackend.NO
    assert not isinstance(setup.parts.model, torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_recomputes_the_unet_blocks(tiny_sd1, tmp_path, checkpointing):
    config = run_config(tiny_sd1, tmp_path, gradient_checkpointing=checkpointing, max_train_steps=1)
    start, setup, _ = set_up(config)
    calls = []
    # A block after the first adapters: the gradient flows through it, so a checkpoint recomputes it.
    start.bundle.unet.up_blocks[0].resnets[0].register_forward_pre_hook(lambda *_: calls.append(1))
    train_steps(start, setup, config)
    assert len(calls) == (2 if checkpointing else 1)


def unet_gradients(config: TrainConfig) -> list[torch.Tensor]:
    """The U-Net adapters' gradients as the optimizer sees them at the first step."""
    start, setup, _ = set_up(config)
    seen = []

    def record(optimizer, *_):
        seen.extend(p.grad.detach().double().clone() for p in optimizer.param_groups[0]["params"])

    setup.parts.optimizer.optimizer.register_step_pre_hook(record)
    train_steps(start, setup, config)
    return seen


def test_max_grad_norm_scales_the_gradient_to_the_norm(tiny_sd1, tmp_path):
    raw = unet_gradients(run_config(tiny_sd1, tmp_path, max_grad_norm=0.0, max_train_steps=1))
    norm = torch.sqrt(sum((g**2).sum() for g in raw)).item()
    limit = norm / 4
    clipped = unet_gradients(run_config(tiny_sd1, tmp_path, max_grad_norm=limit, max_train_steps=1))
    # torch's clip_grad_norm_: g * limit / (norm + 1e-6), when the norm is above the limit.
    factor = limit / (norm + 1e-6)
    assert all(
        torch.allclose(c, g * factor, rtol=1e-5, atol=1e-12) for c, g in zip(clipped, raw, strict=True)
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--torch_compile", "--dynamo_backend", "ipex"], "--dynamo_backend ipex is not available"),
        (["--fp8_base"], "--fp8_base computes in the --mixed_precision dtype, so it needs"),
        (["--full_bf16", "--mixed_precision", "fp16"], "--full_bf16 needs --mixed_precision bf16, got fp16"),
    ],
)
def test_option_errors_are_one_line_before_anything_is_written(tiny_sd1, tmp_path, capsys, extra, message):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    out = tmp_path / "out"
    assert main(cli_flags(tiny_sd1, tree, out, *extra)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not out.exists()
