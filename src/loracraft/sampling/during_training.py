"""Sample images drawn while a run trains, from the training weights themselves.

`TrainingSamples.draw` uses the run's modules in place: the U-Net and text encoders with the LoRA patched
in (no copy of anything), the VAE (moved to the device for decoding and back when its latents are
cached) and text encoders parked on the CPU used there. For the drawing it puts the model in eval mode
(no adapter dropout) with every adapter at multiplier 1; afterwards every module's training flag, every
adapter's multiplier and every random generator (torch's CPU and CUDA ones, Python's, NumPy's) are what
they were, so a run that draws samples trains exactly the LoRA one without samples trains.

It never stops the run: whatever goes wrong while drawing (a prompt file edited into something invalid,
out of memory, a broken scheduler) is one warning line and no images, and an image that comes out all
black or NaN is saved all the same and named in a warning.

With several processes only the main process draws (the others go on to the next step and wait for it
there): the simplest correct choice, since drawing calls the U-Net outside DDP and needs no other
process. The prompt file is read again at every drawing, as kohya does, so it can be edited while the
run trains; the run's start has already read it once (`check_sample_prompts`), so a bad file stops the
run before training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from PIL import Image
from torch import nn

from loracraft.config.fields import options_of
from loracraft.config.sample_options import SampleOptions
from loracraft.config.schema import TrainConfig
from loracraft.models.bundle import ModelBundle
from loracraft.sampling.png_info import image_settings, write_sample_png
from loracraft.sampling.prompts import SamplePrompt, check_prompt_samplers, check_sample_prompts, read_prompts
from loracraft.sampling.render import SamplingModels, render_image
from loracraft.sampling.schedule import SamplePoint, sample_file_name, sample_folder
from loracraft.training.accelerator import release_cached_memory
from loracraft.training.rng_state import capture_rng, restore_rng


@dataclass(frozen=True)
class SampleImage:
    """One drawn image, saved at `path`; `settings` are what its PNG text records."""

    path: Path
    image: Image.Image
    prompt: SamplePrompt
    settings: dict[str, Any]
    problem: str | None
    """Why the image is no picture (all black, NaN), None when it is fine."""


class TrainingSamples:
    """The sample images of a run (`config`'s sample_* flags), drawn with its prepared `model`."""

    def __init__(
        self,
        config: TrainConfig,
        bundle: ModelBundle,
        model: nn.Module,
        accelerator: Accelerator,
        echo: Callable[[str], None],
    ):
        """Reads the prompt file and checks its samplers: a UserError here stops the run at its start."""
        self.options = options_of(SampleOptions, config)
        self.accelerator = accelerator
        self.echo = echo
        self.output_name = config.output_name
        self.folder = sample_folder(config.output_dir)
        self.lora_name = config.output_stem
        self.base_model = bundle.source.name
        self.model = accelerator.unwrap_model(model)
        prompt_file = check_sample_prompts(self.options)
        for note in prompt_file.notes if prompt_file is not None else ():
            echo(f"note: {note}")
        self.models = SamplingModels(
            unet=bundle.unet,
            vae=bundle.vae,
            text_encoders=bundle.text_encoders,
            tokenizers=bundle.tokenizers,
            clip_skip=config.clip_skip,
            v_prediction=config.v_parameterization,
            zero_terminal_snr=config.zero_terminal_snr,
        )

    def draw(self, *, step: int, epoch: int | None) -> list[SampleImage]:
        """Draw every prompt at this moment of the run (see schedule.SamplePoint) and save the images
        under OUTPUT/sample/; [] on the other processes and when drawing failed (after one warning)."""
        if not self.accelerator.is_main_process:
            return []
        try:
            with _TrainingStateKept(self.model, self.models.vae, self.accelerator):
                self.model.eval()
                self.model.network.set_multiplier(1.0)
                self.models.vae.to(self.accelerator.device)
                prompts = read_prompts(self.options.sample_prompts).prompts
                check_prompt_samplers(self.options.sample_sampler, prompts, self.options.sample_prompts)
                return [self._draw_one(prompt, SamplePoint(epoch, step)) for prompt in prompts]
        except Exception as error:  # sampling must never stop the run
            self.echo(f"warning: sample images at step {step} failed: {_reason(error)}; training goes on")
            return []

    def _draw_one(self, prompt: SamplePrompt, point: SamplePoint) -> SampleImage:
        rendered = render_image(
            self.models,
            prompt,
            default_sampler=self.options.sample_sampler,
            device=self.accelerator.device,
            autocast=self.accelerator.autocast,
        )
        name = sample_file_name(self.output_name, point, prompt.index, prompt.seed, datetime.now())
        path = self.folder / name
        settings = image_settings(
            prompt,
            rendered,
            lora=self.lora_name,
            base_model=self.base_model,
            epoch=point.epoch,
            step=point.step,
        )
        write_sample_png(path, rendered.image, settings)
        if rendered.problem is not None:
            self.echo(f"warning: sample image {path} is no picture: {rendered.problem} (saved all the same)")
        return SampleImage(path, rendered.image, prompt, settings, rendered.problem)


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _TrainingStateKept:
    """Puts back, on leaving, what drawing changes: every module's train/eval flag, every adapter's
    multiplier, the VAE's device, every random generator; and returns the device memory drawing
    cached to the driver."""

    def __init__(self, model: nn.Module, vae: nn.Module, accelerator: Accelerator):
        self.model, self.vae, self.accelerator = model, vae, accelerator

    def __enter__(self) -> None:
        self.generators = capture_rng()
        self.modes = [(module, module.training) for module in self.model.modules()]
        self.multipliers = [(adapter, adapter.multiplier) for adapter in self.model.network.children()]
        self.vae_device = self.vae.device

    def __exit__(self, *_: object) -> None:
        for module, training in self.modes:
            module.training = training
        for adapter, multiplier in self.multipliers:
            adapter.multiplier = multiplier
        self.vae.to(self.vae_device)
        restore_rng(self.generators)
        release_cached_memory(self.accelerator.device)
