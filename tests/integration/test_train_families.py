"""`loracraft train` with kohya flags on tiny SD2 and SDXL models, from both layouts users bring.

Each file must pass the diffusers numeric test (load without complaints, fuse to exactly
W + m*(alpha/r)*up@down on every targeted weight, all others bit-identical), name only modules kohya's own
network makes for that family (tests/data/kohya_names, generated from kohya's code), and carry the
family's metadata.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from data_helpers import make_kohya_dataset
from diffusers_checks import fuse_and_check, pipeline_of
from loracraft.cli import main
from loracraft.models.loading import load_model_bundle
from run_helpers import train_argv

pytestmark = pytest.mark.slow

KOHYA_NAMES = Path(__file__).parents[1] / "data" / "kohya_names"
FLAGS = (
    "--resolution", "64", "--network_dim", "4", "--network_alpha", "2", "--train_batch_size", "2",
    "--max_train_steps", "3", "--learning_rate", "1e-3", "--mixed_precision", "no", "--seed", "0",
    "--max_data_loader_n_workers", "0",
)  # fmt: skip
EXPECTED = {
    # family: (ss_base_model_version, modelspec.architecture, modelspec.implementation, ss_v2)
    "sd2": ("sd_v2", "stable-diffusion-v2-512/lora", "diffusers", "True"),
    "sdxl": (
        "sdxl_base_v1-0",
        "stable-diffusion-xl-v1-base/lora",
        "https://github.com/Stability-AI/generative-models",
        "False",
    ),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_kohya_dataset(tmp_path_factory.mktemp("data"), reg_count=0)


def kohya_module_names(family: str) -> set[str]:
    data = json.loads((KOHYA_NAMES / f"{family}.json").read_text())
    return {*data["unet"], *(name for names in data["text_encoders"] for name in names)}


def model_pipeline(model: Path):
    """A diffusers pipeline of the model's own (freshly loaded) modules."""
    bundle = load_model_bundle(model)
    return pipeline_of(bundle.family, bundle.unet, bundle.vae, bundle.text_encoders, bundle.tokenizers)


@pytest.mark.parametrize(
    ("family", "layout"), [("sd2", "single_file"), ("sdxl", "single_file"), ("sdxl", "diffusers_dir")]
)
def test_trained_file_loads_in_diffusers_with_kohyas_names_and_the_familys_metadata(
    request, tree, tmp_path, family, layout
):
    model = getattr(request.getfixturevalue(f"tiny_{family}"), layout)
    assert main(train_argv(model, tree.train_dir, tmp_path, *FLAGS)) == 0
    lora = tmp_path / "toy.safetensors"

    fuse_and_check(model_pipeline(model), family, lora, scale=0.7, atol=1e-5)
    with safe_open(str(lora), "pt") as file:
        names = {key.split(".", 1)[0] for key in file.keys()}
        metadata = file.metadata()
    assert names <= kohya_module_names(family)
    assert {name.split("_")[1] for name in names} == (
        {"unet", "te1", "te2"} if family == "sdxl" else {"unet", "te"}
    )
    version, architecture, implementation, v2 = EXPECTED[family]
    assert metadata["ss_base_model_version"] == version
    assert metadata["modelspec.architecture"] == architecture
    assert metadata["modelspec.implementation"] == implementation
    assert metadata["ss_v2"] == v2
    assert metadata["modelspec.prediction_type"] == "epsilon"
    assert metadata["ss_sd_model_name"] == model.name


def test_sdxl_with_cached_text_outputs_trains_the_unet_with_pooled_caches(tiny_sdxl, tree, tmp_path, capsys):
    flags = ("--cache_text_encoder_outputs_to_disk", "--network_train_unet_only", "--cache_latents")
    assert main(train_argv(tiny_sdxl.single_file, tree.train_dir, tmp_path, *FLAGS, *flags)) == 0
    names = {key.split(".", 1)[0] for key in load_file(str(tmp_path / "toy.safetensors"))}
    assert names and all(name.startswith("lora_unet_") for name in names)
    caches = sorted(Path(tree.train_dir).rglob("*_te_sdxl.npz"))
    assert len(caches) == 4
    with np.load(caches[0]) as cache:
        assert cache["hidden_states"].shape == (77, 64) and cache["pooled"].shape == (32,)
    out = capsys.readouterr().out
    assert "base model: SDXL (tiny-sdxl.safetensors)" in out


def test_a_checkpoint_that_declares_v_prediction_trains_as_v_prediction(tiny_sdxl, tree, tmp_path, capsys):
    tensors = load_file(str(tiny_sdxl.single_file))
    with safe_open(str(tiny_sdxl.single_file), "pt") as file:
        metadata = file.metadata()
    vpred = tmp_path / "model" / "noob-vpred.safetensors"
    vpred.parent.mkdir()
    # NoobAI-XL v-pred marks itself with empty `v_pred` and `ztsnr` tensors.
    save_file({**tensors, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(vpred), metadata)
    for name in ("tokenizer", "tokenizer_2"):
        source = tiny_sdxl.single_file.with_name(f"tiny-sdxl-{name}")
        (vpred.parent / f"noob-vpred-{name}").symlink_to(source, target_is_directory=True)
    assert main(train_argv(vpred, tree.train_dir, tmp_path / "out", *FLAGS)) == 0
    out = capsys.readouterr().out
    assert "note: v_parameterization on: " in out and "note: zero_terminal_snr on: " in out
    with safe_open(str(tmp_path / "out" / "toy.safetensors"), "pt") as file:
        metadata = file.metadata()
    assert metadata["modelspec.prediction_type"] == "v"
    assert metadata["ss_zero_terminal_snr"] == "True"
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"


def test_v2_with_an_sdxl_model_is_one_line_and_writes_nothing(tiny_sdxl, tree, tmp_path, capsys):
    assert main(train_argv(tiny_sdxl.single_file, tree.train_dir, tmp_path / "out", *FLAGS, "--v2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: --v2 is for SD2.x models, but {tiny_sdxl.single_file} is SDXL: drop --v2"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# SD1's feature set on the other families: buckets, augmentation, caption options, long and weighted
# captions, alpha masks, checkpointing, noise and loss options, a dataset TOML and disk caches.
FEATURE_FLAGS = (
    "--enable_bucket", "--min_bucket_reso", "64", "--max_bucket_reso", "128", "--bucket_no_upscale", "false",
    "--flip_aug", "--shuffle_caption", "--keep_tokens", "1", "--caption_dropout_rate", "0.2",
    "--max_token_length", "150", "--alpha_mask", "--gradient_checkpointing", "--noise_offset", "0.05",
    "--min_snr_gamma", "5", "--text_encoder_lr", "5e-4", "2e-4",
)  # fmt: skip


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd1s_features_train_on_the_family(request, tree, tmp_path, family):
    model = request.getfixturevalue(f"tiny_{family}").single_file
    assert main(train_argv(model, tree.train_dir, tmp_path, *FLAGS, *FEATURE_FLAGS)) == 0
    fuse_and_check(model_pipeline(model), family, tmp_path / "toy.safetensors", scale=1.0, atol=1e-5)


def test_sdxl_from_a_dataset_toml_with_weighted_captions_and_disk_caches(tiny_sdxl, tree, tmp_path):
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(
        "[general]\ncaption_extension = '.txt'\n[[datasets]]\nresolution = 64\nbatch_size = 2\n"
        f"[[datasets.subsets]]\nimage_dir = '{Path(tree.train_dir) / '2_sks toy'}'\nnum_repeats = 2\n"
    )
    argv = [
        "train", "--pretrained_model_name_or_path", str(tiny_sdxl.diffusers_dir), "--dataset_config",
        str(dataset), "--output_dir", str(tmp_path / "out"), "--output_name", "toy", *FLAGS[2:],
        "--weighted_captions", "--cache_latents_to_disk",
    ]  # fmt: skip
    assert main(argv) == 0
    assert len(list(Path(tree.train_dir).rglob("*_sdxl.npz"))) >= 4
    fuse_and_check(
        model_pipeline(tiny_sdxl.diffusers_dir), "sdxl", tmp_path / "out" / "toy.safetensors", 1.0, 1e-5
    )
