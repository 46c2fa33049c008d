"""The validation loss on the tiny SD1 model: the same weights give the same loss, other weights another;
per folder and overall; evaluating changes nothing training does (weights, every generator, the modules'
modes); and the step's fixed draws, the timesteps and the schedule, as pure functions."""

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from data_helpers import make_kohya_dataset, write_test_image
from loracraft.config.loss_options import LossOptions
from loracraft.config.schema import TrainConfig
from loracraft.data.summary import format_plan
from loracraft.training.dataset_setup import plan_dataset
from loracraft.training.loop import LoopHooks, run_epochs
from loracraft.training.progress import TrainingLog
from loracraft.training.rng_state import capture_rng
from loracraft.training.step import FixedDraws, StepModels, diffusion_loss, sample_losses
from loracraft.training.timesteps import training_noise_scheduler
from loracraft.training.validation import Validation, make_validation_set, validation_timesteps
from run_helpers import set_up

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    """`img/2_sks toy/` (4 images) and `img/1_other/` (3 images), all captioned."""
    root = tmp_path_factory.mktemp("validation-data")
    train_dir = make_kohya_dataset(root, reg_count=0, uncaptioned=()).train_dir
    other = train_dir / "1_other"
    other.mkdir()
    for i in range(3):
        write_test_image(other / f"other_{i:02d}.png", (64, 64), seed=50 + i)
        (other / f"other_{i:02d}.txt").write_text(f"other, shape {i}", encoding="utf-8")
    return train_dir


def run_config(tiny_sd1, train_dir: Path, tmp_path: Path, **settings) -> TrainConfig:
    """A few steps on 64x64 batches of one image; one image of each folder held out."""
    values = {
        "pretrained_model_name_or_path": str(tiny_sd1.single_file),
        "train_data_dir": str(train_dir),
        "output_dir": str(tmp_path / "out"),
        "caption_extension": ".txt",
        "resolution": (64, 64),
        "enable_bucket": False,
        "train_batch_size": 1,
        "max_train_steps": 3,
        "network_dim": 2,
        "learning_rate": 1e-2,
        "cache_latents": True,
        "latent_sampling": "mean",
        "network_train_unet_only": True,
        "cache_text_encoder_outputs": True,
        "seed": 0,
        "validation_split": 0.34,
        **settings,
    }
    return TrainConfig(**values)


def validation_of(start, lines: list[str]) -> Validation:
    return make_validation_set(
        start.config, start.plan.validation, start.bundle, start.accelerator.device, lines.append
    )


@pytest.fixture(scope="module")
def prepared(tiny_sd1, train_dir, tmp_path_factory):
    """(start, setup, validation, printed lines) of a cached run."""
    start, setup, lines = set_up(run_config(tiny_sd1, train_dir, tmp_path_factory.mktemp("run")))
    return start, setup, validation_of(start, lines), lines


def test_the_printed_plan_shows_the_split(prepared):
    start, _, validation, lines = prepared
    plan = "\n".join(lines)
    assert "  train  1_other: 2 images x 1 repeat = 2 samples" in plan
    assert (
        "Validation set (held out, never trained; each image once per evaluation)\n"
        "  1_other: 2 images train, 1 image validate (validation_split 0.34)\n"
        "  2_sks toy: 3 images train, 1 image validate (validation_split 0.34)\n"
        "  64x64: 2 samples -> 2 batches\n"
        "  2 batches per evaluation"
    ) in plan
    trained = {image.record.path for image in start.plan.images}
    held_out = {image.record.path for image in start.plan.validation.images}
    assert not trained & held_out and len(trained | held_out) == 7
    assert validation.batch_count == 2 and validation.timesteps == [200, 400, 600, 800]


def test_the_same_weights_give_the_same_loss_and_other_weights_another(prepared):
    start, setup, validation, _ = prepared
    first = validation.evaluate(setup.step_models, start.accelerator)
    again = validation.evaluate(setup.step_models, start.accelerator)
    assert again == first
    assert set(first.per_subset) == {"1_other", "2_sks toy"}
    assert list(first.per_timestep) == [200, 400, 600, 800]
    # One image per folder, each at the four timesteps: every mean weighs the same samples.
    assert first.overall == pytest.approx(sum(first.per_subset.values()) / 2, rel=1e-12)
    assert first.overall == pytest.approx(sum(first.per_timestep.values()) / 4, rel=1e-12)
    network = start.accelerator.unwrap_model(setup.parts.model).network
    up = next(p for name, p in network.named_parameters() if "lora_up" in name)
    with torch.no_grad():
        up.add_(0.5)
    try:
        changed = validation.evaluate(setup.step_models, start.accelerator)
    finally:
        with torch.no_grad():
            up.sub_(0.5)
    assert changed.overall != first.overall
    assert validation.evaluate(setup.step_models, start.accelerator) == first


def test_evaluating_leaves_generators_and_modes_as_they_were(prepared):
    start, setup, validation, _ = prepared
    model = setup.parts.model
    network = start.accelerator.unwrap_model(model).network
    frozen = next(iter(network.children()))
    model.train()
    frozen.eval()  # as --stop_text_encoder_training leaves an adapter
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    torch.manual_seed(123)
    np.random.seed(4)
    before = capture_rng()
    try:
        validation.evaluate(setup.step_models, start.accelerator)
    finally:
        hook.remove()
    assert capture_rng() == before
    assert seen == [False] * 8  # two batches, four timesteps, in eval mode
    assert model.training and not frozen.training
    assert all(module.training for module in network.children() if module is not frozen)


def test_a_capped_evaluation_measures_the_first_batches_alike(prepared):
    start, setup, validation, _ = prepared
    full = validation.evaluate(setup.step_models, start.accelerator)
    capped = Validation(validation.plan, validation.loader, timesteps=validation.timesteps, max_batches=1)
    (name, loss), *rest = capped.evaluate(setup.step_models, start.accelerator).per_subset.items()
    assert rest == [] and loss == full.per_subset[name]


def network_tensors(start, setup) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in start.accelerator.unwrap_model(setup.parts.model).network.state_dict().items()
    }


def train(start, setup, validation: Validation | None):
    """Train the planned steps, evaluating after every step and epoch when `validation` is given."""

    def evaluate(position):
        validation.evaluate(setup.step_models, start.accelerator, setup.parts.optimizer)

    hooks = LoopHooks(after_step=evaluate, after_epoch=evaluate) if validation else LoopHooks()
    log = TrainingLog(start.plan.steps.max_train_steps, show_bar=False)
    loss_of = partial(diffusion_loss, setup.step_models, device=start.accelerator.device)
    run_epochs(start.accelerator, setup.parts, loss_of, start.plan.steps, 1.0, log, hooks)


def test_a_run_with_validation_trains_exactly_like_one_without(tiny_sd1, train_dir, tmp_path):
    # Latents encoded at every step and drawn from the VAE's posterior: validation draws from it too.
    config = run_config(
        tiny_sd1, train_dir, tmp_path, cache_latents=False, latent_sampling="sample", max_train_steps=6
    )
    trained = []
    for evaluating in (True, False):
        start, setup, lines = set_up(config)
        validation = validation_of(start, lines)
        # The same loss whatever state the generators were in.
        torch.manual_seed(1)
        first = validation.evaluate(setup.step_models, start.accelerator)
        torch.manual_seed(2)
        assert validation.evaluate(setup.step_models, start.accelerator) == first
        train(start, setup, validation if evaluating else None)
        trained.append((network_tensors(start, setup), capture_rng()))
    (with_validation, generators), (without, generators_without) = trained
    assert with_validation.keys() == without.keys()
    assert all(torch.equal(with_validation[key], without[key]) for key in without)
    assert generators == generators_without


def test_a_dataset_config_holds_out_a_marked_folder_whole_and_names_a_lone_image(train_dir, tmp_path):
    lone = tmp_path / "1_lone"
    lone.mkdir()
    write_test_image(lone / "only.png", (64, 64), seed=9)
    (lone / "only.txt").write_text("lone", encoding="utf-8")
    config_file = tmp_path / "data.toml"
    config_file.write_text(
        f"[general]\nvalidation_split = 0.5\n[[datasets]]\nresolution = 64\n"
        f"[[datasets.subsets]]\nimage_dir = '{train_dir / '2_sks toy'}'\n"
        f"[[datasets.subsets]]\nimage_dir = '{lone}'\n"
        f"[[datasets.subsets]]\nimage_dir = '{train_dir / '1_other'}'\nis_validation = true\n",
        encoding="utf-8",
    )
    config = TrainConfig(dataset_config=str(config_file), caption_extension=".txt", max_train_epochs=1)
    lines = []
    plan = plan_dataset(config, seed=3, num_processes=1, echo=lines.append)
    assert [subset.name for subset in plan.subsets] == ["2_sks toy", "1_lone"]
    assert [(s.name, len(s.records), s.num_repeats) for s in plan.validation.subsets] == [
        ("2_sks toy", 2, 1),
        ("1_other", 3, 1),
    ]
    assert lines == [
        f"warning: {config_file} [[datasets]][0]: {lone} has a single image, so validation_split 0.5 cannot "
        "hold one out; it trains, and that concept has no validation loss"
    ]
    assert format_plan(plan).splitlines()[-5:] == [
        "Validation set (held out, never trained; each image once per evaluation)",
        "  2_sks toy: 2 images train, 2 images validate (validation_split 0.5)",
        "  1_other: 3 images validate (is_validation subset: the folder never trains)",
        "  64x64: 5 samples -> 5 batches",
        "  5 batches per evaluation",
    ]


def test_without_held_out_images_the_schedule_flags_are_noted(tiny_sd1, train_dir, tmp_path):
    config = run_config(tiny_sd1, train_dir, tmp_path, validation_split=0.0, validate_every_n_steps=5)
    lines = []
    assert make_validation_set(config, None, None, CPU, lines.append) is None
    assert lines == [
        "note: --validate_every_n_steps given, but no image is held out (--validation_split 0 and no "
        "is_validation subset), so no validation loss is measured"
    ]


@pytest.mark.parametrize(
    ("steps", "epochs", "due_at_steps", "due_at_epochs"),
    [
        (None, None, [], [1, 2, 3, 4]),
        (2, None, [2, 4, 6], [1, 2, 3, 4]),
        (None, 2, [], [2, 4]),
        (3, 3, [3, 6], [3]),
    ],
)
def test_when_validation_is_due(steps, epochs, due_at_steps, due_at_epochs):
    validation = Validation(
        plan=type("Plan", (), {"seed": 0})(),
        loader=[],
        timesteps=[],
        every_n_steps=steps,
        every_n_epochs=epochs,
    )
    assert [s for s in range(1, 7) if validation.due(step=s, epoch_end=None)] == due_at_steps
    assert [e for e in range(1, 5) if validation.due(step=0, epoch_end=e)] == due_at_epochs


@pytest.mark.parametrize(("low", "high"), [(0, 1000), (100, 900), (0, 999), (250, 251), (500, 500), (7, 998)])
def test_the_timesteps_are_kohyas(low, high):
    assert validation_timesteps(low, high) == np.linspace(low, high, 6, dtype=int)[1:-1].tolist()


class ZeroPrediction(torch.nn.Module):
    def forward(self, noisy_latents, timesteps, captions, **conditioning):
        self.noisy_latents, self.timesteps = noisy_latents, timesteps
        return torch.zeros_like(noisy_latents)


def test_fixed_draws_give_per_sample_losses_without_drawing():
    options = LossOptions(noise_offset=0.1, ip_noise_gamma=0.1, multires_noise_iterations=2)
    model = ZeroPrediction()
    models = StepModels(model, training_noise_scheduler(False), 1.0, None, options)
    latents = torch.linspace(-1, 1, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8)
    batch = {"latents": latents, "captions": ["a", "b"], "loss_weights": torch.tensor([1.0, 0.5])}
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([200, 800])
    before = torch.get_rng_state()
    losses = sample_losses(models, batch, CPU, FixedDraws(noise, timesteps))
    assert torch.equal(torch.get_rng_state(), before)
    a = training_noise_scheduler(False).alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    torch.testing.assert_close(model.noisy_latents, a.sqrt() * latents + (1 - a).sqrt() * noise)
    # The target is the noise, the prediction zero: each sample's loss is its noise's mean square, weighted.
    expected = (noise**2).mean(dim=(1, 2, 3)) * torch.tensor([1.0, 0.5])
    torch.testing.assert_close(losses, expected)
    assert losses.shape == (2,) and not math.isclose(losses[0].item(), losses[1].item())
