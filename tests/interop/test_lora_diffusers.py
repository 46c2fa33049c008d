"""Our LoRA files load in diffusers with exactly the intended effect (reference/lora-format.md §7 T3).

Tiny pipelines with SD1's, SD2's and SDXL's block topologies get a LoRA from the real export path
(build_lora_network -> kohya_state_dict -> save_lora_file), random non-zero up/down and alpha = rank/2.
diffusers must load it without complaints (StableDiffusionPipeline for SD1/SD2, StableDiffusionXLPipeline
for SDXL's LDM-style U-Net names and lora_te1/lora_te2), fuse it to W + m * (alpha/r) * up @ down on
every targeted weight and leave every other weight bit-identical; unfused at weight m it must compute
what our own network computes at m.
"""

import copy
import re
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
)

from diffusers_checks import bad_messages, fuse_and_check, load_messages, pipeline_of, text_encoder_components
from loracraft.config.schema import TrainConfig
from loracraft.networks.kohya_names import text_encoder_prefixes
from loracraft.networks.lora_file import read_lora_file, save_lora_file
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from loracraft.networks.metadata import RunSummary, kohya_metadata
from model_helpers import SDXL_TIME_EMBED_DIM, tiny_family_modules, tiny_sdxl_unet

RANK = 4
ALPHA = RANK / 2
SCALE = 0.7
KEY = re.compile(r"^(lora_unet|lora_te[12]?)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
# Targets of the tiny models: U-Net modules, modules per text encoder.
UNET_TARGETS = {"sd1": 192, "sd2": 192, "sdxl": 242}
TEXT_ENCODER_TARGETS = 12


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=32,
    )


def tiny_pipeline(family: str) -> DiffusionPipeline:
    """A pipeline of the family's tiny modules."""
    unet, text_encoders = tiny_family_modules(family)
    return pipeline_of(family, unet, tiny_vae(), text_encoders)


def tiny_metadata(family: str) -> dict[str, str]:
    config = TrainConfig(output_name="tiny", network_dim=RANK, network_alpha=ALPHA, resolution=(64, 64))
    return kohya_metadata(config, run_summary(family))


def run_summary(family: str) -> RunSummary:
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
        family=family,
        tag_frequency={"1_tiny": {"tiny": 4}},
        training_finished_at=1_700_000_100.0,
        steps=4,
        epoch=1,
    )


def random_network(
    family: str, unet, text_encoders: list, train_unet: bool = True, train_text_encoder: bool = True
) -> LoRANetwork:
    network = build_lora_network(
        unet,
        text_encoders if train_text_encoder else [],
        family,
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


def pipeline_network(family: str, pipe: DiffusionPipeline, **parts: bool) -> LoRANetwork:
    text_encoders = [getattr(pipe, name) for name in text_encoder_components(pipe)]
    return random_network(family, pipe.unet, text_encoders, **parts)


@pytest.mark.parametrize(
    ("family", "train_unet", "train_text_encoder", "dtype", "atol"),
    [
        ("sd1", True, True, torch.float32, 1e-5),
        ("sd1", True, True, torch.float16, 3e-3),
        ("sd1", True, True, torch.bfloat16, 3e-3),
        ("sd1", True, False, torch.float32, 1e-5),
        ("sd1", False, True, torch.float32, 1e-5),
        ("sd2", True, True, torch.float32, 1e-5),
        ("sd2", True, True, torch.float16, 3e-3),
        ("sdxl", True, True, torch.float32, 1e-5),
        ("sdxl", True, True, torch.bfloat16, 3e-3),
        ("sdxl", True, False, torch.float32, 1e-5),
        ("sdxl", False, True, torch.float32, 1e-5),
    ],
    ids=[
        "sd1-fp32", "sd1-fp16", "sd1-bf16", "sd1-unet-only", "sd1-te-only", "sd2-fp32", "sd2-fp16",
        "sdxl-fp32", "sdxl-bf16", "sdxl-unet-only", "sdxl-te-only",
    ],
)  # fmt: skip
def test_fused_weights_are_exactly_the_lora(
    tmp_path: Path, family: str, train_unet: bool, train_text_encoder: bool, dtype: torch.dtype, atol: float
) -> None:
    pipe = tiny_pipeline(family)
    network = pipeline_network(family, pipe, train_unet=train_unet, train_text_encoder=train_text_encoder)
    save_lora_file(network.kohya_state_dict(), tmp_path / "tiny.safetensors", tiny_metadata(family), dtype)
    targets = fuse_and_check(
        pipe,
        family,
        tmp_path / "tiny.safetensors",
        SCALE,
        atol,
        train_unet=train_unet,
        train_text_encoder=train_text_encoder,
    )
    num_text_encoders = len(text_encoder_components(pipe))
    assert len(targets) == UNET_TARGETS[family] * train_unet + (
        TEXT_ENCODER_TARGETS * num_text_encoders * train_text_encoder
    )


def unet_inputs(family: str, generator: torch.Generator) -> tuple[tuple, dict]:
    """(sample, timesteps, context) and, for SDXL, its pooled-text and size conditioning."""
    context_width = 64 if family == "sdxl" else 32
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 7, context_width, generator=generator)
    args = (sample, torch.tensor([10, 500]), context)
    if family != "sdxl":
        return args, {}
    conditioning = {
        "text_embeds": torch.randn(2, 32, generator=generator),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
    }
    assert SDXL_TIME_EMBED_DIM * 6 + 32 == tiny_sdxl_unet().config.projection_class_embeddings_input_dim
    return args, {"added_cond_kwargs": conditioning}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_forward_matches_diffusers_at_any_multiplier(tmp_path: Path, family: str) -> None:
    pipe = tiny_pipeline(family)
    unet = copy.deepcopy(pipe.unet)
    components = text_encoder_components(pipe)
    text_encoders = [copy.deepcopy(getattr(pipe, name)) for name in components]
    network = random_network(family, unet, text_encoders)
    save_lora_file(network.kohya_state_dict(), tmp_path / "tiny.safetensors", None, torch.float32)
    pipe.load_lora_weights(tmp_path, weight_name="tiny.safetensors", adapter_name="t")
    generator = torch.Generator().manual_seed(3)
    unet_args, unet_kwargs = unet_inputs(family, generator)
    input_ids = torch.randint(3, 1000, (2, 9), generator=generator)

    def outputs(unet_model, text_models) -> list[torch.Tensor]:
        texts = [model(input_ids).last_hidden_state for model in text_models]
        return [unet_model(*unet_args, **unet_kwargs).sample, *texts]

    with torch.no_grad():
        base = outputs(unet, text_encoders)
        network.apply()
        for multiplier in (SCALE, 1.0, -0.5):
            network.set_multiplier(multiplier)
            pipe.set_adapters(["t"], adapter_weights=[multiplier])
            ours = outputs(unet, text_encoders)
            theirs = outputs(pipe.unet, [getattr(pipe, name) for name in components])
            for our, their, reference in zip(ours, theirs, base, strict=True):
                torch.testing.assert_close(our, their, rtol=0, atol=2e-5)
                assert (our - reference).abs().max() > 1e-3, "the LoRA must change the output"


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_file_keys_follow_kohya_grammar(tmp_path: Path, family: str) -> None:
    pipe = tiny_pipeline(family)
    network = pipeline_network(family, pipe)
    save_lora_file(network.kohya_state_dict(), tmp_path / "tiny.safetensors", tiny_metadata(family))
    state, metadata = read_lora_file(tmp_path / "tiny.safetensors")
    assert all(KEY.match(key) for key in state)
    names = {key.split(".", 1)[0] for key in state}
    modules = UNET_TARGETS[family] + TEXT_ENCODER_TARGETS * len(text_encoder_components(pipe))
    assert len(state) == 3 * len(names) == 3 * modules, "every module has down, up and alpha; no orphans"
    prefixes = {name.split("_text_model_")[0] for name in names if "_text_model_" in name}
    assert prefixes == set(text_encoder_prefixes(family))
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["sshs_model_hash"] and metadata["modelspec.title"] == "tiny"


def test_load_message_capture_sees_a_bad_file(tmp_path: Path) -> None:
    """Control: a module diffusers cannot place is reported, so the clean loads above mean something."""
    pipe = tiny_pipeline("sd1")
    state = pipeline_network("sd1", pipe, train_text_encoder=False).kohya_state_dict()
    stray = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_7_attn1_to_q"
    first = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    state[f"{stray}.lora_down.weight"] = torch.randn(RANK, first.in_features)
    state[f"{stray}.lora_up.weight"] = torch.randn(first.out_features, RANK)
    state[f"{stray}.alpha"] = torch.tensor(ALPHA)
    save_lora_file(state, tmp_path / "stray.safetensors")
    with load_messages() as messages:
        pipe.load_lora_weights(tmp_path, weight_name="stray.safetensors", adapter_name="t")
    assert bad_messages(messages)
