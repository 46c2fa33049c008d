"""A sample image's settings inside its PNG: what users' tools read, and everything else as JSON.

Two text chunks:
- "parameters", AUTOMATIC1111's infotext, which A1111's PNG Info tab, Forge, ComfyUI loaders, civitai and
  image browsers read: the prompt, "Negative prompt: ..." and one "Key: value, ..." line (Steps,
  Sampler, CFG scale, Seed, Size, Model, then the LoRA, its weight, the epoch and step). Samplers are named as A1111
  names them where it has the same one; a value with a comma, colon or newline is JSON-quoted, as A1111
  writes it.
- "loracraft": every setting as JSON, in loracraft's (kohya's) names, the sampler as kohya names it.

The file is written atomically: a reader never sees half an image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from loracraft.atomic import write_atomic
from loracraft.sampling.prompts import SamplePrompt
from loracraft.sampling.render import RenderedImage

PARAMETERS_KEY = "parameters"
SETTINGS_KEY = "loracraft"

# kohya's sampler -> A1111's name of the same sampler (dpmsolver and dpmsingle have none).
A1111_SAMPLERS = {
    "ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "k_lms": "LMS", "euler": "Euler", "k_euler": "Euler",
    "euler_a": "Euler a", "k_euler_a": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "k_dpm_2": "DPM2",
    "dpm_2_a": "DPM2 a", "k_dpm_2_a": "DPM2 a", "dpmsolver++": "DPM++ 2M",
}  # fmt: skip


def image_settings(prompt: SamplePrompt, rendered: RenderedImage, **context: Any) -> dict[str, Any]:
    """What a sample image's PNG records: the prompt, every drawing setting, and `context` (the LoRA,
    the base model, the epoch and step of a run, the multiplier of `loracraft sample`)."""
    return {
        "prompt": prompt.prompt,
        "negative_prompt": prompt.negative_prompt,
        "width": prompt.width,
        "height": prompt.height,
        "seed": rendered.seed,
        "steps": prompt.steps,
        "scale": prompt.scale,
        "sampler": rendered.sampler,
        "index": prompt.index,
        **context,
        "problem": rendered.problem,
    }


def parameters_text(settings: Mapping[str, Any]) -> str:
    """A1111's infotext for `settings` (an `image_settings` result)."""
    lines = [settings["prompt"]]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    pairs = {
        "Steps": settings["steps"],
        "Sampler": A1111_SAMPLERS.get(settings["sampler"], settings["sampler"]),
        "CFG scale": settings["scale"],
        "Seed": settings["seed"],
        "Size": f"{settings['width']}x{settings['height']}",
        "Model": settings.get("base_model"),
        "LoRA": settings.get("lora"),
        "LoRA weight": settings.get("multiplier"),
        "Epoch": settings.get("epoch"),
        "Step": settings.get("step"),
    }
    lines.append(
        ", ".join(f"{key}: {_quoted(str(value))}" for key, value in pairs.items() if value is not None)
    )
    return "\n".join(lines)


def _quoted(text: str) -> str:
    # A1111's infotext_utils.quote: only values that would break the "Key: value, " line are quoted.
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def write_sample_png(path: Path, image: Image.Image, settings: Mapping[str, Any]) -> None:
    """Save `image` at `path` with both text chunks, atomically."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_text(settings))
    info.add_text(SETTINGS_KEY, json.dumps(dict(settings), ensure_ascii=False))
    write_atomic(path, lambda temporary: image.save(temporary, format="PNG", pnginfo=info))


def read_sample_settings(path: Path) -> dict[str, Any]:
    """The JSON settings a sample PNG carries."""
    with Image.open(path) as image:
        return json.loads(image.text[SETTINGS_KEY])
