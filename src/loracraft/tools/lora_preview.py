"""A base model in a diffusers pipeline with a LoRA file patched in at a chosen weight."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from loracraft.models.bundle import ModelBundle
from loracraft.models.loading import load_model_bundle
from loracraft.networks.lora_file import read_lora_file
from loracraft.networks.lora_network import LoRANetwork, build_lora_network


class LoRAPreview:
    """Generate images from a base model with one LoRA network that can swap files and weights.

    The network is applied once; switching to another file of the same rank loads its tensors, and the
    weight is the network multiplier, so weight 0 is exactly the base model.
    """

    def __init__(self, pipeline: StableDiffusionPipeline, network: LoRANetwork):
        self.pipeline = pipeline
        self.network = network
        self.loaded: Path | None = None

    @classmethod
    def from_files(cls, base: Path, tokenizer_dir: Path | None, lora_file: Path) -> LoRAPreview:
        bundle = load_model_bundle(base, tokenizer_path=tokenizer_dir)
        tensors, _ = read_lora_file(lora_file)
        # The rank and every module's alpha come from the tensors (loading sets each module's scale);
        # metadata may say "None" for a rank left at its default, as kohya writes it.
        network = build_lora_network(
            bundle.unet,
            bundle.text_encoders,
            bundle.family,
            rank=_rank_of(tensors),
            alpha=None,
            train_unet=any(k.startswith("lora_unet_") for k in tensors),
            train_text_encoder=any(k.startswith("lora_te") for k in tensors),
        )
        network.apply()
        network.eval()
        preview = cls(preview_pipeline(bundle), network)
        preview.use(lora_file, 1.0)
        return preview

    def use(self, lora_file: Path | None, multiplier: float) -> None:
        if lora_file is not None and lora_file != self.loaded:
            self.network.load_kohya_state_dict(read_lora_file(lora_file)[0], source=str(lora_file))
            self.loaded = lora_file
        self.network.set_multiplier(multiplier)

    def generate(
        self, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 3.0
    ) -> list[Image.Image]:
        """One image per (prompt, seed); each has its own generator, so batching never changes pixels."""
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        size = 8 * self.pipeline.unet.config.sample_size
        with torch.no_grad():
            return self.pipeline(
                prompt=prompts,
                generator=generators,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=size,
                width=size,
            ).images


def _rank_of(tensors: dict[str, torch.Tensor]) -> int:
    return next(t.shape[0] for k, t in tensors.items() if k.endswith("lora_down.weight"))


def preview_pipeline(bundle: ModelBundle) -> StableDiffusionPipeline:
    """An SD1 pipeline of the bundle's own modules (a network patched into them shows), DDIM, no bars."""
    pipeline = StableDiffusionPipeline(
        vae=bundle.vae,
        text_encoder=bundle.text_encoder,
        tokenizer=bundle.tokenizer,
        unet=bundle.unet,
        scheduler=DDIMScheduler.from_config(bundle.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
