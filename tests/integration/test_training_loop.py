"""The trainer's own pieces (model, accelerator, loader, loop, step) on the tiny SD1 topology.

The loop tests run the real `run_epochs`, `diffusion_loss`, `build_model` and accelerate preparation,
over a plan of images that exist only as cached latents and text states, so a case takes a second.
"""

from functools import partial
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from lycoris.modules.locon import LoConModule

from data_helpers import load_bucket_tensor, make_kohya_dataset
from loracraft.config.schema import TrainConfig
from loracraft.data.dataset import BucketBatchDataset, batch_loader
from loracraft.data.plan import DatasetPlan, build_epoch_plan
from loracraft.data.records import ImageRecord, Subset
from loracraft.models.bundle import ModelBundle
from loracraft.models.loading import load_model_bundle
from loracraft.training.accelerator import make_accelerator
from loracraft.training.loop import LoopHooks, LoopResult, TrainingParts, prepare_training, run_epochs
from loracraft.training.optimizer import build_optimizer
from loracraft.training.progress import TrainingLog
from loracraft.training.schedule import build_lr_scheduler
from loracraft.training.step import StepModels, diffusion_loss
from loracraft.training.trainer import build_model, setup_training, start_run
from model_helpers import tiny_text_encoder, tiny_unet

pytestmark = pytest.mark.slow


def synthetic_plan(
    images: int, batch_size: int, accumulation: int, epochs: int | None, max_steps: int | None = None
) -> DatasetPlan:
    """One folder of `images` 64x64 images, one repeat, one bucket."""
    records = tuple(
        ImageRecord(Path(f"img{i:02d}.png"), "sks", 64, 64, False, "1_sks") for i in range(images)
    )
    return build_epoch_plan(
        [Subset(Path("1_sks"), "sks", 1, False, records)],
        seed=0,
        max_train_epochs=epochs,
        max_train_steps=max_steps,
        gradient_accumulation_steps=accumulation,
        resolution=(64, 64),
        train_batch_size=batch_size,
        enable_bucket=False,
    )


def cached_loader(plan: DatasetPlan, text_states: bool = True):
    """The plan's batches from random cached latents (and text states): no image is read."""
    generator = torch.Generator().manual_seed(0)
    latents = [torch.randn(4, 8, 8, generator=generator) for _ in plan.images]
    states = [torch.randn(77, 32, generator=generator) for _ in plan.images] if text_states else None
    return batch_loader(BucketBatchDataset(plan, latents=latents, text_states=states), num_workers=0)


def run_config(**settings) -> TrainConfig:
    values = {
        "network_dim": 2,
        "network_alpha": 1,
        "learning_rate": 1e-3,
        "unet_lr": 1e-3,
        "text_encoder_lr": 1e-3,
        "lr_scheduler": "linear",
        "lr_warmup_steps": 0,
        "mixed_precision": "no",
        "max_grad_norm": 1.0,
        "network_train_unet_only": True,
        "cache_text_encoder_outputs": True,
        **settings,
    }
    return TrainConfig(**values)


def in_memory_bundle() -> ModelBundle:
    """The tiny SD1-topology U-Net and text encoder, frozen as loaded models are; no VAE or tokenizer
    (latents and text states are cached)."""
    unet, text_encoder = tiny_unet().requires_grad_(False), tiny_text_encoder().requires_grad_(False)
    return ModelBundle("sd1", unet, text_encoder, None, None, {}, Path("tiny"))


class CountingOptimizerSteps:
    def __init__(self, optimizer: torch.optim.Optimizer):
        self.count = 0
        optimizer.register_step_post_hook(self._count)

    def _count(self, *_) -> None:
        self.count += 1


def prepared(config: TrainConfig, bundle: ModelBundle, plan: DatasetPlan, loader, accelerator):
    model = build_model(config, bundle)
    groups = model.network.param_groups(config.effective_unet_lr, config.effective_text_encoder_lrs)
    optimizer = build_optimizer(config, groups)
    steps = CountingOptimizerSteps(optimizer)
    scheduler = build_lr_scheduler(config, optimizer, plan.steps.max_train_steps)
    parts = prepare_training(accelerator, model, loader, optimizer, scheduler)
    return parts, steps, scheduler


def train_loop(accelerator, parts: TrainingParts, plan: DatasetPlan) -> LoopResult:
    step_models = StepModels(parts.model, DDPMScheduler(), 0.5, encode_images=None)
    log = TrainingLog(plan.steps.max_train_steps, show_bar=False)
    loss_of = partial(diffusion_loss, step_models, device=accelerator.device)
    return run_epochs(accelerator, parts, loss_of, plan.steps, 1.0, log, LoopHooks())


# (images = batches at batch size 1 unless given, batch size, accumulation, epochs, max_train_steps)
STEP_GRID = {
    "15-batches-accum2-2-epochs": (15, 1, 2, 2, None),  # 8 steps per epoch, not 7.5
    "5-batches-accum2-3-epochs": (5, 1, 2, 3, None),
    "3-batches-accum3": (3, 1, 3, 1, None),
    "4-batches-of-2-accum3-2-epochs": (8, 2, 3, 2, None),
    "short-last-batch-accum2": (7, 3, 2, 2, None),  # batches of 3, 3, 1
    "max-steps-mid-epoch": (5, 1, 1, None, 7),
    "max-steps-mid-epoch-accum2": (5, 1, 2, None, 4),
}


@pytest.mark.parametrize(
    ("images", "batch", "accumulation", "epochs", "max_steps"), STEP_GRID.values(), ids=STEP_GRID
)
def test_optimizer_and_schedule_step_exactly_as_planned(images, batch, accumulation, epochs, max_steps):
    plan = synthetic_plan(images, batch, accumulation, epochs, max_steps)
    config = run_config(gradient_accumulation_steps=accumulation)
    accelerator = make_accelerator("no", accumulation)
    parts, optimizer_steps, scheduler = prepared(
        config, in_memory_bundle(), plan, cached_loader(plan), accelerator
    )

    result = train_loop(accelerator, parts, plan)

    planned = plan.steps.max_train_steps
    assert (result.steps, optimizer_steps.count, scheduler.last_epoch) == (planned, planned, planned)
    # The linear schedule was built for the planned steps: it ends exactly at zero.
    assert scheduler.get_last_lr() == [0.0]


def _uncast_lycoris_3_diff(self: LoConModule, x: torch.Tensor, scale: float = 1) -> torch.Tensor:
    """LyCORIS 3.x's bypass path: its adapter weights meet the input in their own dtype (4.x casts them)."""
    return self.lora_up(self.lora_down(x)) * self.scale * scale


def test_bf16_runs_the_model_under_autocast_and_trains_float32_adapters(monkeypatch):
    monkeypatch.setattr(LoConModule, "bypass_forward_diff", _uncast_lycoris_3_diff)
    plan = synthetic_plan(2, 2, 1, epochs=2)
    config = run_config(mixed_precision="bf16")
    accelerator = make_accelerator("bf16", 1)
    parts, optimizer_steps, _ = prepared(config, in_memory_bundle(), plan, cached_loader(plan), accelerator)
    model = accelerator.unwrap_model(parts.model)
    # Outside the precision context the bf16 base and the float32 adapters do not mix.
    with pytest.raises(RuntimeError):
        model.unet(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), torch.tensor([10]), torch.randn(1, 77, 32))

    result = train_loop(accelerator, parts, plan)

    assert result.steps == optimizer_steps.count == 2 and torch.isfinite(
        torch.tensor(result.final_average_loss)
    )
    assert {p.dtype for p in model.unet.parameters() if not p.requires_grad} == {torch.bfloat16}
    trained = [p for p in model.network.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} == {torch.float32}
    assert any(
        model.network.adapter(name).lora_up.weight.abs().sum() > 0 for name in model.network.unet_names
    )


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_gradient_checkpointing_recomputes_the_trained_text_encoder(tiny_sd1, checkpointing):
    bundle = load_model_bundle(tiny_sd1.diffusers_dir)
    config = run_config(
        gradient_checkpointing=checkpointing, network_train_unet_only=False, cache_text_encoder_outputs=False
    )
    model_layer_calls = []
    plan = synthetic_plan(1, 1, 1, epochs=1)
    accelerator = make_accelerator("no", 1)
    parts, _, _ = prepared(config, bundle, plan, cached_loader(plan, text_states=False), accelerator)
    model = accelerator.unwrap_model(parts.model)
    mlp = next(
        module for name, module in model.text_encoders[0].named_modules() if name.endswith("layers.0.mlp")
    )
    mlp.register_forward_pre_hook(lambda *_: model_layer_calls.append(model.text_encoders[0].training))

    train_loop(accelerator, parts, plan)

    # One step: a checkpointed layer runs again in the backward pass, in training mode.
    assert model_layer_calls == ([True, True] if checkpointing else [False])
    network = model.network
    assert any(network.adapter(name).lora_up.weight.abs().sum() > 0 for name in network.text_encoder_names)


def setup_for(tiny_sd1, tmp_path: Path, **settings):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    config = run_config(
        pretrained_model_name_or_path=str(tiny_sd1.single_file),
        train_data_dir=str(tree.train_dir),
        output_dir=str(tmp_path / "out"),
        caption_extension=".txt",
        resolution=(64, 64),
        enable_bucket=False,
        train_batch_size=2,
        max_train_epochs=1,
        seed=0,
        **settings,
    )
    lines: list[str] = []
    start = start_run(config, lines.append)
    return (
        start,
        setup_training(config, start.plan, start.bundle, start.accelerator, start.seed, lines.append),
        lines,
    )


def test_cached_latents_leave_the_vae_out_of_the_step(tiny_sd1, tmp_path):
    start, setup, lines = setup_for(tiny_sd1, tmp_path, cache_latents=True, latent_sampling="mean")
    assert setup.step_models.encode_images is None
    assert start.bundle.vae.device == torch.device("cpu")
    assert "VAE: latents are cached, so the VAE stays on the CPU during training" in lines
    assert "text encoder: its outputs are cached, so it stays on the CPU during training" in lines
    assert len(setup.step_models.model.text_encoders) == 0
    # The memory cache holds the posterior means, as --latent_sampling mean asks.
    image = start.plan.images[0]
    pixels = load_bucket_tensor(image.record.path, image.choice.resized_size, image.choice.bucket)
    with torch.no_grad():
        mean = start.bundle.vae.encode(pixels[None]).latent_dist.mean[0]
    assert torch.allclose(setup.parts.loader.dataset.latents[0].latents, mean, atol=1e-5)


def test_uncached_latents_are_encoded_in_the_step_with_the_chosen_sampling(tiny_sd1, tmp_path):
    start, setup, lines = setup_for(tiny_sd1, tmp_path, cache_latents=False, latent_sampling="mean")
    assert any(line.startswith("VAE: encodes every batch's images on cpu during training") for line in lines)
    pixels = next(iter(setup.parts.loader))["pixels"]
    latents = setup.step_models.encode_images(pixels)
    with torch.no_grad():
        posterior = start.bundle.vae.encode(pixels).latent_dist
    assert torch.equal(latents, posterior.mean)
