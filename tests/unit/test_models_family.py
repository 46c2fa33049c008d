"""Family detection from single-file keys and folder configs, and the one-line refusals for the rest."""

import pytest
import torch

from loracraft.errors import UserError
from loracraft.models.family import detect_family, detect_folder_family, refuse_other_pipeline

UNET = "model.diffusion_model."


def fake(*keys: str, context_dim: int = 768, in_channels: int = 4, linear: bool = False) -> dict:
    """Marker keys (empty tensors) plus the UNet tensors whose shapes detection reads."""
    tensors = {key: torch.zeros(1) for key in keys}
    tensors[f"{UNET}input_blocks.0.0.weight"] = torch.zeros(320, in_channels, 3, 3)
    tensors[f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(320, context_dim)
    tensors[f"{UNET}middle_block.1.proj_in.weight"] = (
        torch.zeros(1280, 1280) if linear else torch.zeros(1280, 1280, 1, 1)
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
    f"{UNET}label_emb.0.0.weight",
)
REFINER = (
    "conditioner.embedders.0.model.token_embedding.weight",
    "conditioner.embedders.0.model.text_projection",
    f"{UNET}label_emb.0.0.weight",
)


@pytest.mark.parametrize(
    ("tensors", "family"),
    [
        (fake(*SD1), "sd1"),
        (fake(*SD2, context_dim=1024, linear=True), "sd2"),
        # SD2 with its text encoder in transformers' naming: told by the UNet's context width...
        (fake(*SD1, context_dim=1024), "sd2"),
        # ...or by its Linear projections (our tiny SD2's context is 32 wide).
        (fake(*SD1, context_dim=32, linear=True), "sd2"),
        (fake(*SDXL, context_dim=2048, linear=True), "sdxl"),
        ({f"{UNET}label_emb.0.0.weight": torch.zeros(1)}, "sdxl"),
    ],
)
def test_detect_family(tensors, family):
    assert detect_family(tensors, "model.safetensors") == family


def refusal(tensors: dict) -> str:
    with pytest.raises(UserError) as error:
        detect_family(tensors, "x.safetensors")
    message = str(error.value)
    assert message.startswith("x.safetensors ")
    assert "\n" not in message
    return message


def test_sdxl_refiner_is_no_lora_base():
    message = refusal(fake(*REFINER, context_dim=1280, linear=True))
    assert "is the SDXL refiner, which is not a LoRA base" in message


@pytest.mark.parametrize(
    ("keys", "context_dim", "name"),
    [(SD1, 768, "SD1.x"), (SDXL, 2048, "SDXL"), (SD2, 1024, "SD2.x")],
)
def test_inpainting_models_are_refused(keys, context_dim, name):
    message = refusal(fake(*keys, context_dim=context_dim, in_channels=9))
    assert f"is an {name} inpainting model (its UNet takes 9 channels)" in message
    assert "a LoRA trained on the base model applies to its inpainting variant too" in message


def test_other_unet_inputs_are_refused():
    assert "takes 8 input channels" in refusal(fake(*SD1, in_channels=8))


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias", "an SD3/SD3.5 model"),
        ("joint_blocks.0.context_block.adaLN_modulation.1.bias", "an SD3/SD3.5 model"),
        ("model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale", "a Flux model"),
        ("double_blocks.0.img_attn.norm.key_norm.scale", "a Flux model"),
        ("clip_txt_mapper.weight", "a Stable Cascade (stage C) model"),
        ("down_blocks.1.0.channelwise.0.weight", "a Stable Cascade (stage B) model"),
        ("blocks.0.cross_attn.q_linear.weight", "a PixArt model"),
        ("model.double_layers.0.attn.w1q.weight", "an AuraFlow model"),
        ("mlp_t5.0.weight", "a Hunyuan-DiT model"),
        ("model.diffusion_model.encoder_hid_proj.weight", "a Kolors model"),
        ("edm_mean", "Playground v2.5"),
    ],
)
def test_other_architectures_are_named(key, what):
    message = refusal({key: torch.zeros(1), f"{UNET}out.2.weight": torch.zeros(1)})
    assert message.startswith(f"x.safetensors is {what}")
    assert "(it has " in message
    assert message.endswith("loracraft trains LoRAs for SD1.x, SD2.x and SDXL")


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
    message = refusal({key: torch.zeros(1) for key in keys})
    assert message.startswith("x.safetensors is not a Stable Diffusion checkpoint (")
    assert reason in message


SD_INDEX = {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]}
SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
}
SDXL_UNET = {"cross_attention_dim": 2048, "addition_embed_type": "text_time"}


@pytest.mark.parametrize(
    ("model_index", "unet_config", "family"),
    [
        (SD_INDEX, {"cross_attention_dim": 768}, "sd1"),
        (SD_INDEX, {"cross_attention_dim": 1024, "use_linear_projection": True}, "sd2"),
        (SD_INDEX, {"cross_attention_dim": 32, "use_linear_projection": True}, "sd2"),
        (SDXL_INDEX, SDXL_UNET, "sdxl"),
    ],
)
def test_detect_folder_family(model_index, unet_config, family):
    assert detect_folder_family(model_index, unet_config, "m") == family


def folder_refusal(model_index: dict, unet_config: dict) -> str:
    with pytest.raises(UserError) as error:
        refuse_other_pipeline(model_index, "m")
        detect_folder_family(model_index, unet_config, "m")
    assert "\n" not in str(error.value)
    return str(error.value)


def test_folder_refusals():
    refiner_index = {
        "_class_name": "StableDiffusionXLImg2ImgPipeline",
        "text_encoder": [None, None],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    }
    refiner_unet = {"cross_attention_dim": 1280, "addition_embed_type": "text_time"}
    assert "is the SDXL refiner" in folder_refusal(refiner_index, refiner_unet)
    assert "is an SDXL inpainting model" in folder_refusal(SDXL_INDEX, {**SDXL_UNET, "in_channels": 9})
    assert "is an SD1.x inpainting model" in folder_refusal(SD_INDEX, {"in_channels": 9})


@pytest.mark.parametrize(
    ("pipeline", "what"),
    [
        ("StableDiffusion3Pipeline", "an SD3/SD3.5 model"),
        ("FluxPipeline", "a Flux model"),
        ("StableCascadeCombinedPipeline", "a Stable Cascade model"),
        ("PixArtSigmaPipeline", "a PixArt model"),
        ("AuraFlowPipeline", "an AuraFlow model"),
        ("HunyuanDiTPipeline", "a Hunyuan-DiT model"),
        ("KolorsPipeline", "a Kolors model"),
    ],
)
def test_other_pipelines_are_named(pipeline, what):
    assert folder_refusal({"_class_name": pipeline}, {}) == (
        f"m is {what} (its pipeline is {pipeline}); loracraft trains LoRAs for SD1.x, SD2.x and SDXL"
    )
