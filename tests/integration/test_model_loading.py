"""load_model_bundle on the tiny SD1, SD2 and SDXL models: both routes agree, --vae replaces, the
prediction type is read, bad input is one line."""

import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModelWithProjection

from loracraft.errors import UserError
from loracraft.models import tokenizer_source
from loracraft.models.bundle import Prediction
from loracraft.models.checkpoint_file import read_checkpoint, write_checkpoint
from loracraft.models.config_inference import base_config, model_kwargs
from loracraft.models.config_metadata import config_metadata
from loracraft.models.ldm_convert import vae_state_dict_to_ldm
from loracraft.models.loading import load_model_bundle
from loracraft.models.tokenizer_build import build_clip_tokenizer
from model_helpers import tiny_sd2_text_encoder, tiny_sd2_unet, tiny_sdxl_text_encoders, tiny_sdxl_unet


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


# SD2 and SDXL: the same guarantees, and what only they have.


def assert_same_config(a: dict, b: dict) -> None:
    """Every field but bookkeeping (`_name_or_path`, the dtype a folder was saved in)."""
    skip = {"dtype", "torch_dtype", "transformers_version"}
    a, b = ({k: v for k, v in c.items() if not k.startswith("_") and k not in skip} for c in (a, b))
    assert a == b


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_single_file_and_folder_give_the_same_model(family, request):
    tiny = request.getfixturevalue(f"tiny_{family}")
    folder = request.getfixturevalue(f"tiny_{family}_bundle")
    single = load_model_bundle(tiny.single_file)

    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(folder, name) is not None:
            assert_same_weights(getattr(folder, name), getattr(single, name))
    assert_same_config(dict(folder.unet.config), dict(single.unet.config))
    assert_same_config(dict(folder.vae.config), dict(single.vae.config))
    for a, b in zip(folder.text_encoders, single.text_encoders, strict=True):
        assert_same_config(a.config.to_dict(), b.config.to_dict())
    for bundle in (folder, single):
        assert bundle.family == family
        assert bundle.scheduler_config["prediction_type"] == "epsilon"
        assert [t.get_vocab() for t in bundle.tokenizers] == [t.get_vocab() for t in folder.tokenizers]
        for model in (bundle.unet, bundle.vae, *bundle.text_encoders):
            assert not model.training
            assert all(not p.requires_grad and p.dtype == torch.float32 for p in model.parameters())


def test_sd2_bundle(tiny_sd2_bundle):
    bundle = tiny_sd2_bundle
    assert bundle.text_encoder_2 is None and bundle.tokenizer_2 is None
    assert bundle.unet.config.use_linear_projection
    assert bundle.text_encoder.config.hidden_act == "gelu"
    # OpenCLIP pads with id 0, "!" in CLIP's vocabulary.
    assert bundle.tokenizer.pad_token == "!"


def test_sdxl_bundle(tiny_sdxl, tiny_sdxl_bundle):
    single = load_model_bundle(tiny_sdxl.single_file)
    for bundle in (single, tiny_sdxl_bundle):
        assert isinstance(bundle.text_encoder_2, CLIPTextModelWithProjection)
        assert bundle.text_encoder_2.config.projection_dim == 32
        assert bundle.unet.config.addition_time_embed_dim == 8
        assert [t.pad_token for t in bundle.tokenizers] == ["<|endoftext|>", "!"]
        assert bundle.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    assert single.tokenizer_2.name_or_path == str(tiny_sdxl.tokenizer_2_dir)


@pytest.mark.parametrize(
    ("family", "unet", "text_encoder"),
    [
        ("sd2", tiny_sd2_unet, tiny_sd2_text_encoder),
        ("sdxl", tiny_sdxl_unet, lambda: tiny_sdxl_text_encoders()[1]),
    ],
)
def test_fixtures_have_the_shapes_of_the_in_memory_tiny_modules(family, unet, text_encoder, request):
    bundle = request.getfixturevalue(f"tiny_{family}_bundle")

    def shapes(module, skip=()):
        return {k: v.shape for k, v in module.state_dict().items() if not k.endswith(skip)}

    assert shapes(bundle.unet) == shapes(unet())
    saved = bundle.text_encoders[-1]
    # The vocabulary is the fixture tokenizer's.
    assert shapes(saved, "token_embedding.weight") == shapes(text_encoder(), "token_embedding.weight")


def copy_single_file(tiny, folder, tensors=None, metadata=None):
    """The tiny model's single file (with its tokenizers) copied to `folder`, tensors/metadata changed."""
    checkpoint = read_checkpoint(tiny.single_file)
    path = folder / tiny.single_file.name
    write_checkpoint(
        path,
        {**checkpoint.tensors, **(tensors or {})},
        metadata if metadata is not None else checkpoint.metadata,
    )
    for tokenizer_dir in (tiny.tokenizer_dir, tiny.tokenizer_2_dir):
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, folder / tokenizer_dir.name)
    return path


def test_noobai_v_pred_markers_are_read(tiny_sdxl, tmp_path):
    markers = {"v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}
    bundle = load_model_bundle(copy_single_file(tiny_sdxl, tmp_path, markers))

    assert bundle.prediction == Prediction(True, True, "its v_pred and ztsnr keys")
    assert bundle.scheduler_config["prediction_type"] == "v_prediction"
    assert bundle.scheduler_config["rescale_betas_zero_snr"] is True


def test_sd2_768_v_from_its_yaml(tiny_sd2, tmp_path):
    metadata = read_checkpoint(tiny_sd2.single_file).metadata
    del metadata["loracraft.unet_sample_size"]  # as a real SD2 file: the config decides
    path = copy_single_file(tiny_sd2, tmp_path, metadata=metadata)
    path.with_suffix(".yaml").write_text(
        'model:\n  params:\n    parameterization: "v"\n    unet_config: {}\n'
    )

    bundle = load_model_bundle(path)

    assert bundle.prediction == Prediction(True, None, "tiny-sd2.yaml beside it")
    assert bundle.scheduler_config["prediction_type"] == "v_prediction"
    assert bundle.unet.config.sample_size == 96


def test_v_scheduler_config_of_a_folder(tiny_sd2, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd2.diffusers_dir, folder)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler_file.read_text())
    scheduler_file.write_text(
        json.dumps({**config, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    )

    bundle = load_model_bundle(folder)

    assert bundle.prediction == Prediction(True, True, "scheduler/scheduler_config.json")
    assert bundle.scheduler_config["prediction_type"] == "v_prediction"


def test_errors_name_the_family(tiny_sd2, tiny_sdxl, tmp_path):
    tensors = read_checkpoint(tiny_sd2.single_file).tensors
    del tensors["model.diffusion_model.out.2.bias"]
    write_checkpoint(tmp_path / "sd2.safetensors", tensors, {})
    message = error_of(tmp_path / "sd2.safetensors", tokenizer_path=tiny_sd2.tokenizer_dir)
    assert "its UNet does not have SD2.x's layout (1 tensors missing" in message

    tensors = read_checkpoint(tiny_sdxl.single_file).tensors
    no_te2 = {k: v for k, v in tensors.items() if not k.startswith("conditioner.embedders.1.")}
    write_checkpoint(tmp_path / "xl.safetensors", no_te2, {})
    assert error_of(tmp_path / "xl.safetensors", tokenizer_path=tiny_sdxl.tokenizer_dir) == (
        f"{tmp_path / 'xl.safetensors'} has no second text encoder (no conditioner.embedders.1.model.* "
        "tensors); use a complete SDXL checkpoint"
    )


def test_refused_models_are_one_line(tmp_path):
    refiner = write_fake(
        tmp_path / "refiner.safetensors",
        ["conditioner.embedders.0.model.text_projection", "model.diffusion_model.out.2.weight"],
    )
    assert "is the SDXL refiner, which is not a LoRA base" in error_of(refiner)
    flux = write_fake(tmp_path / "flux.safetensors", ["double_blocks.0.img_attn.norm.key_norm.scale"])
    assert error_of(flux).startswith(f"{flux} is a Flux model")
