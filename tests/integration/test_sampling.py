"""Sample images on the tiny models: every kohya sampler, every prompt option, SD1/SD2/SDXL, problem
images; and drawing during a run (a set-up tiny SD1 run): the training weights in place at multiplier 1,
everything the run depends on put back, failures as one warning line."""

import importlib.util
import re
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from data_helpers import make_kohya_dataset
from loracraft.config.load import build_config
from loracraft.config.sample_options import SAMPLERS
from loracraft.errors import UserError
from loracraft.sampling import render
from loracraft.sampling.during_training import TrainingSamples
from loracraft.sampling.png_info import read_sample_settings
from loracraft.sampling.prompts import SamplePrompt
from loracraft.sampling.render import SamplingModels, render_image
from loracraft.sampling.samplers import check_sampler, make_sampler
from loracraft.training.rng_state import capture_rng
from run_helpers import set_up

CPU = torch.device("cpu")


def models_of(bundle, **settings) -> SamplingModels:
    return SamplingModels(bundle.unet, bundle.vae, bundle.text_encoders, bundle.tokenizers, **settings)


def draw(models: SamplingModels, **values):
    prompt = {
        "prompt": "a red circle",
        "negative_prompt": None,
        "width": 64,
        "height": 64,
        "seed": 1,
        "steps": 2,
        "scale": 7.5,
        "sampler": None,
        "index": 0,
        **values,
    }
    return render_image(
        models, SamplePrompt(**prompt), default_sampler="ddim", device=CPU, autocast=nullcontext
    )


def pixels(rendered) -> np.ndarray:
    return np.asarray(rendered.image, dtype=np.int16)


@pytest.fixture(scope="module")
def sd1(tiny_sd1_bundle) -> SamplingModels:
    return models_of(tiny_sd1_bundle)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_kohya_sampler_draws(sd1, sampler):
    steps = 4 if sampler == "pndm" else 2  # PNDM's warm-up needs 4 (check_sampler says so at the start)
    if sampler in ("lms", "k_lms") and importlib.util.find_spec("scipy") is None:
        with pytest.raises(
            UserError, match=f"^--sample_sampler: the {sampler} sampler .* needs scipy: pip install"
        ):
            check_sampler(sampler, steps, "--sample_sampler")
        return
    check_sampler(sampler, steps, "--sample_sampler")
    rendered = draw(sd1, sampler=sampler, steps=steps)
    assert (rendered.image.size, rendered.sampler, rendered.seed, rendered.problem) == (
        (64, 64),
        sampler,
        1,
        None,
    )
    assert pixels(rendered).std() > 0


@pytest.mark.parametrize("sampler", ["euler_a", "dpm_2_a"])
def test_ancestral_samplers_are_reproducible_from_the_seed(sd1, sampler):
    """Their per-step noise comes from the image's own generator, not from the global one."""
    first = draw(sd1, sampler=sampler)
    torch.manual_seed(123)
    assert np.array_equal(pixels(first), pixels(draw(sd1, sampler=sampler)))
    assert not np.array_equal(pixels(first), pixels(draw(sd1, sampler=sampler, seed=2)))


def test_every_prompt_option_changes_the_image(sd1):
    base = pixels(draw(sd1))
    assert np.array_equal(base, pixels(draw(sd1)))
    assert draw(sd1, width=128, height=64).image.size == (128, 64)
    changed = {
        "seed": draw(sd1, seed=2),
        "negative prompt": draw(sd1, negative_prompt="blue square"),
        "CFG scale": draw(sd1, scale=3.0),
        "steps": draw(sd1, steps=3),
        "sampler": draw(sd1, sampler="euler"),
        "emphasis": draw(sd1, prompt="(a red:1.5) circle"),
    }
    assert [name for name, rendered in changed.items() if np.array_equal(pixels(rendered), base)] == []
    assert all(rendered.problem is None for rendered in changed.values())
    # A scale of 1 or less draws without guidance, so the negative prompt has nothing to do.
    unguided = pixels(draw(sd1, scale=1.0))
    assert np.array_equal(unguided, pixels(draw(sd1, scale=1.0, negative_prompt="blue square")))


def test_a_prompt_without_seed_draws_a_new_one_each_time(sd1):
    first, second = draw(sd1, seed=None), draw(sd1, seed=None)
    assert first.seed != second.seed
    assert np.array_equal(pixels(first), pixels(draw(sd1, seed=first.seed)))


def test_long_prompts_are_encoded_in_chunks(sd1):
    """Past 75 tokens kohya's pipeline adds 75-token chunks (up to 225) instead of cutting the prompt."""
    long = "a red circle on a blue square, " * 12  # about 100 tokens
    cut = draw(sd1, prompt=long)
    assert cut.problem is None
    assert not np.array_equal(pixels(cut), pixels(draw(sd1, prompt=long + "yellow star")))


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_draw_at_the_asked_size(request, family):
    bundle = request.getfixturevalue(f"tiny_{family}_bundle")
    models = models_of(bundle, v_prediction=family == "sd2")
    rendered = draw(models, width=64, height=96)
    assert (rendered.image.size, rendered.problem) == ((64, 96), None)
    if family == "sdxl":  # the size conditioning reaches the U-Net: same noise, other original size
        assert not np.array_equal(pixels(draw(models)), pixels(draw(models, width=72, height=64))[:, :64])
    else:  # v-prediction reads the U-Net's output another way
        assert not np.array_equal(pixels(rendered), pixels(draw(models_of(bundle), width=64, height=96)))


def test_schedulers_are_kohyas_with_v_prediction_and_zero_terminal_snr():
    ddim = make_sampler("ddim", v_prediction=False, zero_terminal_snr=False)
    assert (ddim.config.beta_start, ddim.config.beta_end, ddim.config.beta_schedule) == (
        0.00085,
        0.012,
        "scaled_linear",
    )
    assert (ddim.config.num_train_timesteps, ddim.config.clip_sample, ddim.config.prediction_type) == (
        1000,
        True,
        "epsilon",
    )
    rescaled = make_sampler("ddim", v_prediction=True, zero_terminal_snr=True)
    assert rescaled.config.prediction_type == "v_prediction"
    assert (rescaled.config.rescale_betas_zero_snr, rescaled.config.timestep_spacing) == (True, "trailing")
    assert float(rescaled.alphas_cumprod[-1]) == 0.0
    heun = make_sampler("heun", v_prediction=True, zero_terminal_snr=True)  # no such option: kohya's schedule
    assert (heun.config.prediction_type, heun.config.timestep_spacing) == ("v_prediction", "linspace")
    assert (
        make_sampler("dpmsolver", v_prediction=False, zero_terminal_snr=False).config.algorithm_type
        == "dpmsolver"
    )
    assert make_sampler("k_dpm_2_a", v_prediction=False, zero_terminal_snr=False).__class__.__name__ == (
        "KDPM2AncestralDiscreteScheduler"
    )


@pytest.fixture
def own_vae(tiny_sd1):
    """A VAE of the tiny model's own that a test may change (the shared bundle's must stay as it is)."""
    return AutoencoderKL.from_pretrained(tiny_sd1.diffusers_dir / "vae")


def test_nan_and_black_images_are_reported(tiny_sd1_bundle, own_vae, monkeypatch):
    models = models_of(tiny_sd1_bundle)
    models = SamplingModels(models.unet, own_vae, models.text_encoders, models.tokenizers)
    decode = own_vae.decode
    monkeypatch.setattr(
        own_vae, "decode", lambda latents: SimpleNamespace(sample=-torch.ones_like(decode(latents).sample))
    )
    black = draw(models)
    assert (black.problem, np.asarray(black.image).max()) == ("the image is all black", 0)
    monkeypatch.setattr(
        own_vae, "decode", lambda latents: SimpleNamespace(sample=decode(latents).sample * torch.nan)
    )
    assert draw(models).problem == "the VAE gave NaN/inf pixels, even in float32"
    monkeypatch.undo()
    unet_forward = tiny_sd1_bundle.unet.forward
    monkeypatch.setattr(
        tiny_sd1_bundle.unet,
        "forward",
        lambda *args, **kwargs: SimpleNamespace(sample=unet_forward(*args, **kwargs).sample * torch.inf),
    )
    assert draw(models).problem == "the U-Net gave NaN/inf latents"


def test_a_half_vae_that_overflows_decodes_again_in_float32(tiny_sd1_bundle, own_vae, monkeypatch):
    """The black SDXL samples of fp16 VAEs: the image is decoded again in float32, then the VAE goes back
    to its half precision (the run encodes with it)."""
    reference = pixels(
        draw(
            SamplingModels(
                tiny_sd1_bundle.unet, own_vae, tiny_sd1_bundle.text_encoders, tiny_sd1_bundle.tokenizers
            )
        )
    )
    own_vae.to(torch.bfloat16)
    decode = own_vae.decode

    def overflowing(latents):
        decoded = decode(latents).sample
        return SimpleNamespace(sample=decoded * torch.nan if own_vae.dtype == torch.bfloat16 else decoded)

    monkeypatch.setattr(own_vae, "decode", overflowing)
    rescued = draw(
        SamplingModels(
            tiny_sd1_bundle.unet, own_vae, tiny_sd1_bundle.text_encoders, tiny_sd1_bundle.tokenizers
        )
    )
    assert rescued.problem is None and own_vae.dtype == torch.bfloat16
    # float32 decoding of the bf16-rounded weights: close to the float32 VAE's image, not black
    assert np.abs(pixels(rescued) - reference).mean() < 8


# ---- drawing during a run -----------------------------------------------------------------------------

PROMPTS = "a red circle --w 64 --h 64 --s 2 --d 5\nsks toy --n blue --s 2 --l 4 --ss euler_a --w 64 --h 64\n"


@pytest.fixture(scope="module")
def run(tiny_sd1, tmp_path_factory):
    """A set-up tiny SD1 run (nothing trained) that samples every step, with a LoRA of random weights."""
    root = tmp_path_factory.mktemp("sampling_run")
    tree = make_kohya_dataset(root / "data", reg_count=0)
    prompts = root / "prompts.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    values = {
        "pretrained_model_name_or_path": str(tiny_sd1.single_file),
        "train_data_dir": str(tree.train_dir),
        "output_dir": str(root / "out"),
        "output_name": "toy",
        "caption_extension": ".txt",
        "resolution": (64, 64),
        "max_train_steps": 2,
        "mixed_precision": "no",
        "seed": 0,
        "max_data_loader_n_workers": 0,
        "sample_every_n_steps": 1,
        "sample_prompts": str(prompts),
    }
    config = build_config({}, values)
    start, setup, _ = set_up(config)
    network = setup.parts.model.network
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    lines: list[str] = []
    samples = TrainingSamples(config, start.bundle, setup.parts.model, start.accelerator, lines.append)
    return SimpleNamespace(
        config=config, start=start, setup=setup, samples=samples, lines=lines, prompts=prompts
    )


def run_state(model):
    """Everything drawing must leave as it was: LoRA tensors, module modes, multipliers, generators."""
    return (
        {key: value.clone() for key, value in model.network.state_dict().items()},
        [module.training for module in model.modules()],
        [adapter.multiplier for adapter in model.network.children()],
        capture_rng(),
    )


def assert_same_state(before, after):
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][key], after[0][key]) for key in before[0])
    assert before[1:] == after[1:]


def test_drawing_uses_the_training_weights_at_multiplier_1_and_puts_everything_back(run, monkeypatch):
    model = run.setup.parts.model
    model.train()
    first_adapter = next(model.network.children())
    first_adapter.eval()  # a module whose mode differs from its parent's (a frozen text-encoder adapter)
    model.network.set_multiplier(0.5)  # whatever the run had: drawing uses 1
    torch.manual_seed(77)
    seen = []
    real_render = render_image

    def watching(models, prompt, **kwargs):
        seen.append((model.training, {adapter.multiplier for adapter in model.network.children()}))
        return real_render(models, prompt, **kwargs)

    monkeypatch.setattr("loracraft.sampling.during_training.render_image", watching)
    before = run_state(model)
    images = run.samples.draw(step=3, epoch=None)
    assert_same_state(before, run_state(model))
    assert model.training and not first_adapter.training
    assert seen == [(False, {1.0}), (False, {1.0})]

    folder = run.start.config.output_dir + "/sample"
    names = [image.path.name for image in images]
    assert re.fullmatch(r"toy_000003_00_\d{14}_5\.png", names[0]) and re.fullmatch(
        r"toy_000003_01_\d{14}\.png", names[1]
    )
    assert all(str(image.path.parent) == folder and image.problem is None for image in images)
    settings = read_sample_settings(images[1].path)
    assert settings == images[1].settings
    assert (settings["prompt"], settings["negative_prompt"], settings["sampler"], settings["scale"]) == (
        "sks toy",
        "blue",
        "euler_a",
        4.0,
    )
    assert (settings["step"], settings["epoch"], settings["lora"], settings["index"]) == (3, None, "toy", 1)

    # The image is the LoRA's at full strength: what the models draw at multiplier 1, not at 0.5 or 0.
    models = run.samples.models
    prompt = images[0].prompt
    for multiplier, same in ((1.0, True), (0.0, False)):
        model.network.set_multiplier(multiplier)
        model.eval()
        drawn = render_image(models, prompt, default_sampler="ddim", device=CPU, autocast=nullcontext)
        assert np.array_equal(np.asarray(drawn.image), np.asarray(images[0].image)) == same
    model.network.set_multiplier(1.0)
    model.train()


def test_a_failing_sampler_is_one_warning_and_training_goes_on(run, monkeypatch):
    model = run.setup.parts.model
    model.train()

    def broken(*args, **kwargs):
        raise RuntimeError("scheduler exploded\nsecond line")

    monkeypatch.setattr(render, "make_sampler", broken)
    before = run_state(model)
    run.lines.clear()
    assert run.samples.draw(step=7, epoch=None) == []
    assert run.lines == [
        "warning: sample images at step 7 failed: RuntimeError: scheduler exploded second line; training goes on"
    ]
    assert_same_state(before, run_state(model))


def test_a_prompt_file_broken_during_the_run_is_a_warning(run):
    """The file is read again at every drawing (kohya's users edit it while training)."""
    run.lines.clear()
    try:
        run.prompts.write_text("a cat --w wide\n", encoding="utf-8")
        assert run.samples.draw(step=9, epoch=2) == []
    finally:
        run.prompts.write_text(PROMPTS, encoding="utf-8")
    assert run.lines == [
        f"warning: sample images at step 9 failed: UserError: {run.prompts} line 1: --w 'wide' is not a whole number "
        "of 0 or more; write e.g. --w 768; training goes on"
    ]


def test_a_black_image_is_saved_and_named_in_a_warning(run, monkeypatch):
    vae = run.samples.models.vae
    monkeypatch.setattr(vae, "decode", lambda latents: SimpleNamespace(sample=-torch.ones(1, 3, 64, 64)))
    run.lines.clear()
    images = run.samples.draw(step=2, epoch=1)
    assert [image.problem for image in images] == ["the image is all black"] * 2
    assert images[0].path.name.startswith("toy_e000001_00_") and images[0].path.is_file()
    assert run.lines == [
        f"warning: sample image {image.path} is no picture: the image is all black (saved all the same)"
        for image in images
    ]


def test_only_the_main_process_draws(run):
    other_process = SimpleNamespace(is_main_process=False, unwrap_model=lambda model: model)
    samples = TrainingSamples(run.config, run.start.bundle, run.setup.parts.model, other_process, print)
    assert samples.draw(step=1, epoch=None) == []


def test_a_bad_prompt_file_stops_the_run_at_its_start(run, tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_text("a cat --ss pndm --s 2\n", encoding="utf-8")
    config = run.config.model_copy(update={"sample_prompts": str(bad)})
    with pytest.raises(UserError) as caught:
        TrainingSamples(config, run.start.bundle, run.setup.parts.model, run.start.accelerator, print)
    assert str(caught.value) == (
        f"{bad} prompt 1: the pndm sampler needs at least 4 steps, not 2: raise the prompt's steps (--s) or "
        "choose another sampler"
    )
