"""loracraft: LoRA training for Stable Diffusion with kohya-compatible flags, datasets and files."""

__version__ = "0.1.0"
