"""Our LoRA files load in diffusers with exactly the intended effect (reference/lora-format.md §7 T3).

A tiny pipeline with SD1's block topology gets a LoRA from the real export path (build_lora_network ->
kohya_state_dict -> save_lora_file), random non-zero up/down and alpha = rank/2. diffusers must load it
without complaints, fuse it to W + m * (alpha/r) * up @ down on every targeted weight and leave every
other weight bit-identical; unfused at weight m it must compute what our own network computes at m.
"""

import copy
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

from loracraft.config.schema import TrainConfig
from loracraft.networks.lora_file import read_lora_file, save_lora_file
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from loracraft.networks.metadata import RunSummary, kohya_metadata
from loracraft.networks.targets import text_encoder_targets, unet_targets
from model_helpers import tiny_text_encoder, tiny_unet

RANK = 4
ALPHA = RANK / 2
SCALE = 0.7
KEY = re.compile(r"^(lora_unet|lora_te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
BAD_LOAD_MESSAGES = ("unexpected keys", "not compatible", "not loaded", "not correctly renamed")


def tiny_pipeline() -> StableDiffusionPipeline:
    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=None,
        unet=unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_metadata() -> dict[str, str]:
    config = TrainConfig(output_name="tiny", network_dim=RANK, network_alpha=ALPHA, resolution=(64, 64))
    return kohya_metadata(config, run_summary())


def run_summary() -> RunSummary:
    return RunSummary(
        session_id=1,
        training_started_at=1_700_000_000.0,
        num_train_images=4,
        num_reg_images=0,
        num_batches_per_epoch=4,
        num_epochs=1,
        max_train_steps=4,
        seed=0,
        total_batch_size=1,
        optimizer="torch.optim.adamw.AdamW",
        tag_frequency={"1_tiny": {"tiny": 4}},
        training_finished_at=1_700_000_100.0,
        steps=4,
        epoch=1,
    )


def random_network(
    unet, text_encoder, train_unet: bool = True, train_text_encoder: bool = True
) -> LoRANetwork:
    network = build_lora_network(
        unet,
        [text_encoder] if train_text_encoder else [],
        "sd1",
        RANK,
        ALPHA,
        train_unet=train_unet,
        train_text_encoder=train_text_encoder,
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return network


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


def snapshot(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    unet = {f"unet.{k}": v.clone() for k, v in pipe.unet.state_dict().items()}
    return unet | {f"text_encoder.{k}": v.clone() for k, v in pipe.text_encoder.state_dict().items()}


@pytest.mark.parametrize(
    ("train_unet", "train_text_encoder", "dtype", "atol"),
    [
        (True, True, torch.float32, 1e-5),
        (True, True, torch.float16, 3e-3),
        (True, True, torch.bfloat16, 3e-3),
        (True, False, torch.float32, 1e-5),
        (False, True, torch.float32, 1e-5),
    ],
    ids=["fp32", "fp16", "bf16", "unet-only", "te-only"],
)
def test_fused_weights_are_exactly_the_lora(
    tmp_path: Path, train_unet, train_text_encoder, dtype, atol
) -> None:
    pipe = tiny_pipeline()
    network = random_network(pipe.unet, pipe.text_encoder, train_unet, train_text_encoder)
    state = network.kohya_state_dict()
    save_lora_file(state, tmp_path / "tiny.safetensors", tiny_metadata(), dtype)

    targets = {}
    if train_unet:
        targets |= {f"unet.{t.path}.weight": t.name for t in unet_targets(pipe.unet, "sd1")}
    if train_text_encoder:
        targets |= {f"text_encoder.{t.path}.weight": t.name for t in text_encoder_targets(pipe.text_encoder)}
    before = snapshot(pipe)
    with load_messages() as messages:
        pipe.load_lora_weights(tmp_path, weight_name="tiny.safetensors", adapter_name="t")
    assert bad_messages(messages) == []
    components = ["unet"] * train_unet + ["text_encoder"] * train_text_encoder
    for component in components:
        no_keys = f"No LoRA keys associated to {type(getattr(pipe, component)).__name__}"
        assert not [m for m in messages if m.startswith(no_keys)], f"diffusers found no {component} keys"
    pipe.fuse_lora(components=components, lora_scale=SCALE)
    pipe.unload_lora_weights()
    after = snapshot(pipe)

    assert after.keys() == before.keys()
    assert len(targets) == 192 * train_unet + 12 * train_text_encoder
    for key, weight in before.items():
        if key not in targets:
            assert torch.equal(after[key], weight), f"{key} changed but is not a LoRA target"
            continue
        name = targets[key]
        up, down = state[f"{name}.lora_up.weight"], state[f"{name}.lora_down.weight"]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * SCALE * ALPHA / RANK
        torch.testing.assert_close(after[key], weight + delta, rtol=0, atol=atol, msg=key)


def test_forward_matches_diffusers_at_any_multiplier(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    unet, text_encoder = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    network = random_network(unet, text_encoder)
    save_lora_file(network.kohya_state_dict(), tmp_path / "tiny.safetensors", None, torch.float32)
    pipe.load_lora_weights(tmp_path, weight_name="tiny.safetensors", adapter_name="t")
    generator = torch.Generator().manual_seed(3)
    sample, context = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 7, 32, generator=generator)
    timesteps = torch.tensor([10, 500])
    input_ids = torch.randint(3, 1000, (2, 9), generator=generator)

    def outputs(unet_model, text_model) -> tuple[torch.Tensor, torch.Tensor]:
        return unet_model(sample, timesteps, context).sample, text_model(input_ids).last_hidden_state

    with torch.no_grad():
        base = outputs(unet, text_encoder)
        network.apply()
        for multiplier in (SCALE, 1.0, -0.5):
            network.set_multiplier(multiplier)
            pipe.set_adapters(["t"], adapter_weights=[multiplier])
            ours, theirs = outputs(unet, text_encoder), outputs(pipe.unet, pipe.text_encoder)
            for our, their, reference in zip(ours, theirs, base, strict=True):
                torch.testing.assert_close(our, their, rtol=0, atol=2e-5)
                assert (our - reference).abs().max() > 1e-3, "the LoRA must change the output"


def test_file_keys_follow_kohya_grammar(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    network = random_network(pipe.unet, pipe.text_encoder)
    save_lora_file(network.kohya_state_dict(), tmp_path / "tiny.safetensors", tiny_metadata())
    state, metadata = read_lora_file(tmp_path / "tiny.safetensors")
    assert all(KEY.match(key) for key in state)
    names = {key.split(".", 1)[0] for key in state}
    assert len(state) == 3 * len(names) == 3 * (192 + 12), "every module has down, up and alpha; no orphans"
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["sshs_model_hash"] and metadata["modelspec.title"] == "tiny"


def test_load_message_capture_sees_a_bad_file(tmp_path: Path) -> None:
    """Control: a module diffusers cannot place is reported, so the clean loads above mean something."""
    pipe = tiny_pipeline()
    state = random_network(pipe.unet, None, train_text_encoder=False).kohya_state_dict()
    stray = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_7_attn1_to_q"
    first = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    state[f"{stray}.lora_down.weight"] = torch.randn(RANK, first.in_features)
    state[f"{stray}.lora_up.weight"] = torch.randn(first.out_features, RANK)
    state[f"{stray}.alpha"] = torch.tensor(ALPHA)
    save_lora_file(state, tmp_path / "stray.safetensors")
    with load_messages() as messages:
        pipe.load_lora_weights(tmp_path, weight_name="stray.safetensors", adapter_name="t")
    assert bad_messages(messages)
