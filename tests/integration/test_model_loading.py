"""load_model_bundle on the tiny SD1 model: both routes agree, --vae replaces, bad input is one line."""

import shutil

import pytest
import torch
from diffusers import AutoencoderKL

from loracraft.errors import UserError
from loracraft.models import tokenizer_source
from loracraft.models.checkpoint_file import read_checkpoint, write_checkpoint
from loracraft.models.config_inference import base_config, model_kwargs
from loracraft.models.config_metadata import config_metadata
from loracraft.models.ldm_convert import vae_state_dict_to_ldm
from loracraft.models.loading import load_model_bundle
from loracraft.models.tokenizer_build import build_clip_tokenizer


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def unet_output(bundle) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    ids = bundle.tokenizer(
        ["a red circle", "sks on a blue background"], padding="max_length", max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        context = bundle.text_encoder(ids.input_ids).last_hidden_state
        return bundle.unet(latents, torch.tensor([10, 500]), context).sample


@pytest.fixture(scope="module")
def file_bundle(tiny_sd1):
    return load_model_bundle(tiny_sd1.single_file)


def test_single_file_and_diffusers_folder_give_the_same_model(tiny_sd1_bundle, file_bundle):
    folder = tiny_sd1_bundle
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(folder, name), getattr(file_bundle, name))
    # Weights are bit-identical (above); with one CPU thread the kernels may still round the last bit
    # differently depending on where the tensors sit in memory, so outputs are compared to 1e-6.
    torch.testing.assert_close(unet_output(folder), unet_output(file_bundle), atol=1e-6, rtol=0)
    assert folder.vae.config.scaling_factor == file_bundle.vae.config.scaling_factor == 0.5
    assert folder.vae.config.norm_num_groups == file_bundle.vae.config.norm_num_groups == 8
    assert folder.tokenizer.get_vocab() == file_bundle.tokenizer.get_vocab()
    for bundle in (folder, file_bundle):
        assert bundle.family == "sd1"
        assert bundle.scheduler_config["beta_schedule"] == "scaled_linear"
        assert bundle.scheduler_config["prediction_type"] == "epsilon"
        for model in (bundle.unet, bundle.vae, bundle.text_encoder):
            assert not model.training
            assert all(
                p.dtype == torch.float32 and not p.requires_grad and p.device.type == "cpu"
                for p in model.parameters()
            )


def test_ckpt_file_loads_with_weights_only(tiny_sd1, tiny_sd1_bundle, tmp_path):
    tensors = read_checkpoint(tiny_sd1.single_file).tensors
    torch.save(
        {"state_dict": {key: value.half() for key, value in tensors.items()}, "global_step": 1},
        tmp_path / "m.ckpt",
    )

    bundle = load_model_bundle(tmp_path / "m.ckpt", tokenizer_path=tiny_sd1.tokenizer_dir)

    assert bundle.source == tmp_path / "m.ckpt"
    # A .ckpt carries no metadata: SD1.5's VAE scaling factor applies.
    assert bundle.vae.config.scaling_factor == 0.18215
    reference = tiny_sd1_bundle.unet.state_dict()
    for key, value in bundle.unet.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, reference[key].half().float()), key


@pytest.fixture(scope="module")
def other_vae():
    torch.manual_seed(1)
    config = {
        **base_config("sd1", "vae"),
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
    }
    return AutoencoderKL(
        **model_kwargs(
            {
                **config,
                "down_block_types": ["DownEncoderBlock2D"] * 2,
                "up_block_types": ["UpDecoderBlock2D"] * 2,
            }
        )
    )


def save_vae_variant(vae: AutoencoderKL, kind: str, folder):
    metadata = config_metadata({"vae": dict(vae.config)})
    if kind == "diffusers folder":
        vae.save_pretrained(folder / "vae")
        return folder / "vae"
    ldm = vae_state_dict_to_ldm(vae.state_dict())
    tensors = {
        "ldm with prefix": {f"first_stage_model.{key}": value for key, value in ldm.items()},
        "ldm": ldm,
        "diffusers keys": vae.state_dict(),
    }[kind]
    write_checkpoint(folder / "vae.safetensors", tensors, metadata)
    return folder / "vae.safetensors"


@pytest.mark.parametrize("kind", ["ldm with prefix", "ldm", "diffusers keys", "diffusers folder"])
def test_vae_replacement(tiny_sd1, other_vae, tmp_path, kind):
    vae_path = save_vae_variant(other_vae, kind, tmp_path)

    bundle = load_model_bundle(tiny_sd1.single_file, vae=vae_path)

    assert bundle.vae_source == vae_path
    assert_same_weights(bundle.vae, other_vae)
    assert not bundle.vae.training and not any(p.requires_grad for p in bundle.vae.parameters())


def test_vae_replacement_from_a_pipeline_folder(tiny_sd1, tiny_sd1_bundle):
    bundle = load_model_bundle(tiny_sd1.single_file, vae=tiny_sd1.diffusers_dir)
    assert_same_weights(bundle.vae, tiny_sd1_bundle.vae)


def test_tokenizer_path_wins_and_tokenizer_beside_the_file_is_found(tiny_sd1, tmp_path):
    model = tmp_path / "model.safetensors"
    shutil.copy(tiny_sd1.single_file, model)
    shutil.copytree(tiny_sd1.tokenizer_dir, tmp_path / "tokenizer")
    assert load_model_bundle(model).tokenizer.name_or_path == str(tmp_path / "tokenizer")

    bundle = load_model_bundle(model, tokenizer_path=tiny_sd1.tokenizer_dir)
    assert bundle.tokenizer.name_or_path == str(tiny_sd1.tokenizer_dir)


def error_of(*args, **kwargs) -> str:
    with pytest.raises(UserError) as error:
        load_model_bundle(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def write_fake(path, keys):
    write_checkpoint(path, {key: torch.zeros(2, 2) for key in keys}, {})
    return path


def test_missing_model(tmp_path):
    assert error_of(tmp_path / "nope.safetensors") == (
        f"--pretrained_model_name_or_path {tmp_path / 'nope.safetensors'}: no such file or folder"
    )


def test_missing_vae(tiny_sd1, tmp_path):
    assert error_of(tiny_sd1.single_file, vae=tmp_path / "v.safetensors") == (
        f"--vae {tmp_path / 'v.safetensors'}: no such file or folder"
    )


def test_truncated_safetensors(tiny_sd1, tmp_path):
    data = tiny_sd1.single_file.read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 3])
    assert "m.safetensors is not a valid .safetensors file" in error_of(tmp_path / "m.safetensors")


def test_text_file_renamed_ckpt(tmp_path):
    (tmp_path / "m.ckpt").write_text("hello\n")
    assert "m.ckpt cannot be read as a PyTorch checkpoint" in error_of(tmp_path / "m.ckpt")


def test_lora_file_as_base_model(tmp_path):
    path = write_fake(
        tmp_path / "lora.safetensors", ["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"]
    )
    assert error_of(path) == (
        f"{path} is not a Stable Diffusion checkpoint (it is a LoRA/LyCORIS file; give a base model such as "
        "SD1.5 as --pretrained_model_name_or_path)"
    )


def test_offline_without_tokenizer(tiny_sd1, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # A repo id no cache can hold, so a populated ~/.cache cannot make this pass by accident.
    hub = {"sd1": ("loracraft-tests/no-such-tokenizer", "")}
    monkeypatch.setattr(tokenizer_source, "HUB_TOKENIZERS", hub)
    model = tmp_path / "model.safetensors"
    shutil.copy(tiny_sd1.single_file, model)
    message = error_of(model)
    assert message.startswith(f"no tokenizer for {model}: offline (HF_HUB_OFFLINE is set)")
    assert "pass --tokenizer_path DIR (a folder with vocab.json and merges.txt)" in message


def test_bad_tokenizer_path(tiny_sd1, tmp_path):
    assert error_of(tiny_sd1.single_file, tokenizer_path=tmp_path) == (
        f"--tokenizer_path {tmp_path}: not a folder with vocab.json and merges.txt"
    )


def test_tokenizer_larger_than_the_text_encoder(tiny_sd1, tmp_path):
    build_clip_tokenizer(
        [a + b + c + d for a in "qwxz" for b in "aeiou" for c in "kmnp" for d in "aeiou"], tmp_path
    )
    assert "tokens but the text encoder of" in error_of(tiny_sd1.single_file, tokenizer_path=tmp_path)


def test_single_file_without_vae_needs_vae_flag(tiny_sd1, tmp_path):
    tensors = read_checkpoint(tiny_sd1.single_file).tensors
    path = tmp_path / "novae.safetensors"
    write_checkpoint(path, {k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")}, {})
    message = error_of(path, tokenizer_path=tiny_sd1.tokenizer_dir)
    assert message == f"{path} has no VAE (no first_stage_model.* tensors); pass one with --vae"


def test_folder_that_is_no_diffusers_model(tmp_path):
    assert (
        error_of(tmp_path)
        == f"{tmp_path} is a folder but not a diffusers model (no model_index.json in {tmp_path})"
    )


def test_vae_with_other_latent_channels(tiny_sd1, tmp_path):
    config = {
        **base_config("sd1", "vae"),
        "block_out_channels": [8],
        "latent_channels": 8,
        "norm_num_groups": 8,
    }
    AutoencoderKL(
        **model_kwargs(
            {**config, "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"]}
        )
    ).save_pretrained(tmp_path)
    assert "makes 8-channel latents but the UNet" in error_of(tiny_sd1.single_file, vae=tmp_path)
