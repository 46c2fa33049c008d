"""What a LoRA file does in diffusers: load it into a pipeline, capture every complaint, fuse it and check
each weight against W + m * (alpha/r) * up @ down (reference/lora-format.md §7 T3).

Shared by the interop tests (files from the export path on in-memory tiny modules) and the end-to-end
training tests (files `loracraft train` wrote, on the tiny models it trained from).
"""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from loracraft.networks.kohya_names import text_encoder_prefixes
from loracraft.networks.lora_file import read_lora_file
from loracraft.networks.targets import text_encoder_targets, unet_targets

BAD_LOAD_MESSAGES = ("unexpected keys", "not compatible", "not loaded", "not correctly renamed")
TEXT_ENCODER_COMPONENTS = ("text_encoder", "text_encoder_2")


def text_encoder_components(pipe: DiffusionPipeline) -> list[str]:
    """The pipeline's text encoders' component names, in kohya's TE1, TE2 order."""
    return [name for name in TEXT_ENCODER_COMPONENTS if getattr(pipe, name, None) is not None]


@contextmanager
def load_messages() -> Iterator[list[str]]:
    """Warnings and log records from diffusers, peft and transformers while a LoRA loads."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def bad_messages(messages: list[str]) -> list[str]:
    return [m for m in messages if any(bad in m.lower() for bad in BAD_LOAD_MESSAGES)]


def snapshot(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    weights = {}
    for component in ["unet", *text_encoder_components(pipe)]:
        weights |= {f"{component}.{k}": v.clone() for k, v in getattr(pipe, component).state_dict().items()}
    return weights


def target_weights(
    family: str, pipe: DiffusionPipeline, train_unet: bool, train_text_encoder: bool
) -> dict[str, str]:
    """{snapshot key of a targeted weight: its kohya module name}."""
    targets = {}
    if train_unet:
        targets |= {f"unet.{t.path}.weight": t.name for t in unet_targets(pipe.unet, family)}
    if train_text_encoder:
        components = text_encoder_components(pipe)
        for component, prefix in zip(components, text_encoder_prefixes(family), strict=True):
            model = getattr(pipe, component)
            targets |= {f"{component}.{t.path}.weight": t.name for t in text_encoder_targets(model, prefix)}
    return targets


def fuse_and_check(
    pipe: DiffusionPipeline,
    family: str,
    lora_file: Path,
    scale: float,
    atol: float,
    *,
    train_unet: bool = True,
    train_text_encoder: bool = True,
) -> dict[str, str]:
    """Load `lora_file` into `pipe` without complaints, fuse it at `scale` and check every weight: each
    targeted one moved by exactly scale * (alpha/r) * up @ down, every other one bit-identical. Returns
    the targets ({weight key: module name}) for further checks."""
    state, _ = read_lora_file(lora_file)
    targets = target_weights(family, pipe, train_unet, train_text_encoder)
    before = snapshot(pipe)
    with load_messages() as messages:
        pipe.load_lora_weights(lora_file.parent, weight_name=lora_file.name, adapter_name="t")
    assert bad_messages(messages) == []
    components = ["unet"] * train_unet + text_encoder_components(pipe) * train_text_encoder
    for component in components:
        no_keys = f"No LoRA keys associated to {type(getattr(pipe, component)).__name__}"
        assert not [m for m in messages if m.startswith(no_keys)], f"diffusers found no {component} keys"
    pipe.fuse_lora(components=components, lora_scale=scale)
    pipe.unload_lora_weights()
    after = snapshot(pipe)
    assert after.keys() == before.keys()
    assert {name for name in targets.values()} == {key.split(".", 1)[0] for key in state}
    for key, weight in before.items():
        if key not in targets:
            assert torch.equal(after[key], weight), f"{key} changed but is not a LoRA target"
            continue
        name = targets[key]
        up, down = state[f"{name}.lora_up.weight"].float(), state[f"{name}.lora_down.weight"].float()
        alpha = state[f"{name}.alpha"].item()
        delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * scale * alpha / down.shape[0]
        torch.testing.assert_close(after[key], weight + delta.to(weight.dtype), rtol=0, atol=atol, msg=key)
    return targets


def pipeline_of(
    family: str, unet, vae, text_encoders: list, tokenizers: list | None = None
) -> DiffusionPipeline:
    """A diffusers pipeline of the family's modules (tokenizers are not needed to load a LoRA)."""
    tokenizers = tokenizers or [None] * len(text_encoders)
    if family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoders[0],
            text_encoder_2=text_encoders[1],
            tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1],
            unet=unet,
            scheduler=DDIMScheduler(),
            add_watermarker=False,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoders[0],
        tokenizer=tokenizers[0],
        unet=unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
