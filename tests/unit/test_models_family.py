"""Family detection from single-file keys, and the one-line errors for files that are no SD model."""

import pytest
import torch

from loracraft.errors import UserError
from loracraft.models.family import detect_family, detect_folder_family


def fake(*keys: str, context_dim: int = 768) -> dict[str, torch.Tensor]:
    tensors = {key: torch.zeros(1) for key in keys}
    tensors["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(
        320, context_dim
    )
    return tensors


SD1 = ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",)
SD2 = (
    "cond_stage_model.model.token_embedding.weight",
    "cond_stage_model.model.transformer.resblocks.0.ln_1.weight",
)
SDXL = (
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.token_embedding.weight",
    "model.diffusion_model.label_emb.0.0.weight",
)


@pytest.mark.parametrize(
    ("tensors", "family"),
    [
        (fake(*SD1), "sd1"),
        (fake(*SD2, context_dim=1024), "sd2"),
        (fake(*SD1, context_dim=1024), "sd2"),
        (fake(*SDXL, context_dim=2048), "sdxl"),
        ({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(1)}, "sdxl"),
    ],
)
def test_detect_family(tensors, family):
    assert detect_family(tensors, "model.safetensors") == family


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "LoRA/LyCORIS file"),
        (["encoder.down.0.block.0.conv1.weight", "decoder.conv_out.weight"], "VAE alone; pass it as --vae"),
        (["down_blocks.0.resnets.0.conv1.weight", "conv_in.weight"], "diffusers-format UNet"),
        (["weight", "bias"], "none of its 2 tensors is named model.diffusion_model"),
        ([], "holds no tensors"),
    ],
)
def test_files_that_are_no_sd_checkpoint(keys, reason):
    with pytest.raises(
        UserError, match=r"^x\.safetensors is not a Stable Diffusion checkpoint \(.*"
    ) as error:
        detect_family({key: torch.zeros(1) for key in keys}, "x.safetensors")
    assert reason in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("model_index", "unet_config", "family"),
    [
        ({"text_encoder": [], "unet": []}, {"cross_attention_dim": 768}, "sd1"),
        ({"text_encoder": [], "unet": []}, {"cross_attention_dim": 1024}, "sd2"),
        (
            {"text_encoder_2": [], "unet": []},
            {"cross_attention_dim": 2048, "addition_embed_type": "text_time"},
            "sdxl",
        ),
    ],
)
def test_detect_folder_family(model_index, unet_config, family):
    assert detect_folder_family(model_index, unet_config) == family
