"""--network_weights and --dim_from_weights (networks/initial_weights.py): the file read strictly, its
rank and alpha taken into the run's settings, and its weights loaded so the network computes exactly what
the file does."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loracraft.config.load import build_config
from loracraft.errors import UserError
from loracraft.networks.initial_weights import InitialWeights, initial_weights_settings
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from model_helpers import tiny_family_modules

RANK, ALPHA = 8, 4.0


def random_network(family: str, rank: int = RANK, alpha: float = ALPHA, **options) -> LoRANetwork:
    network = build_lora_network(*tiny_family_modules(family), family, rank=rank, alpha=alpha, **options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return network


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "start.safetensors"
    save_lora_file(random_network("sd1").kohya_state_dict(), path, dtype=torch.float16)
    return path


def config(**flags):
    return build_config({}, flags)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_loaded_network_is_the_files_lora_exactly(tmp_path, family):
    path = tmp_path / "start.safetensors"
    save_lora_file(random_network(family).kohya_state_dict(), path, dtype=torch.float16)
    weights = InitialWeights.read(str(path), family)
    assert (weights.rank, weights.alpha) == (RANK, ALPHA)

    # built with another alpha: the file's sets what the network applies
    network = build_lora_network(*tiny_family_modules(family), family, rank=RANK, alpha=1.0)
    weights.load_into(network)
    file = load_file(str(path))
    state = network.kohya_state_dict()
    assert state.keys() == file.keys()
    for key, tensor in file.items():
        assert torch.equal(state[key], tensor.float()), key
    for name in network.names:  # what the network applies is what every consumer reads from the file
        assert network.adapter(name).scale == file[f"{name}.alpha"].item() / RANK


def test_a_files_alpha_is_kept_over_network_alpha_with_a_note(sd1_file):
    weights = InitialWeights.read(str(sd1_file), "sd1")
    run, notes = weights.run_settings(
        config(network_weights=str(sd1_file), network_dim=RANK, network_alpha=1)
    )
    assert run.network_alpha == ALPHA and run.network_rank == RANK
    assert notes == (
        f"--network_weights {sd1_file} has alpha 4 (rank 8): training keeps it, not --network_alpha 1, so the "
        "LoRA starts out computing what the file does; the saved files record alpha 4",
    )
    network = build_lora_network(
        *tiny_family_modules("sd1"), "sd1", rank=run.network_rank, alpha=run.network_alpha
    )
    weights.load_into(network)
    assert network.adapter(network.names[0]).scale == ALPHA / RANK


@pytest.mark.parametrize("alpha", [ALPHA, 0.0])
def test_no_note_when_network_alpha_already_says_the_files_alpha(tmp_path, alpha):
    path = tmp_path / "start.safetensors"
    save_lora_file(random_network("sd1", alpha=alpha).kohya_state_dict(), path)
    given = config(network_weights=str(path), network_dim=RANK, network_alpha=alpha)
    assert InitialWeights.read(str(path), "sd1").run_settings(given) == (given, ())


def test_an_alpha_keeps_its_float32_value_in_the_shortest_spelling(tmp_path):
    path = tmp_path / "start.safetensors"
    save_lora_file(random_network("sd1", alpha=0.1).kohya_state_dict(), path)
    run, _ = initial_weights_settings(config(network_weights=str(path), network_dim=RANK), "sd1")
    assert run.network_alpha == 0.1
    assert (
        torch.tensor(run.network_alpha).item()
        == load_file(str(path))["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"].item()
    )


def test_dim_from_weights_builds_the_files_rank(sd1_file):
    run, notes = initial_weights_settings(config(network_weights=str(sd1_file), dim_from_weights=True), "sd1")
    assert (run.network_dim, run.network_alpha) == (RANK, ALPHA)
    assert notes == (
        f"--network_weights {sd1_file} has alpha 4 (rank 8): training keeps it, not --network_alpha 1, so the "
        "LoRA starts out computing what the file does; the saved files record alpha 4",
    )
    run, notes = initial_weights_settings(
        config(network_weights=str(sd1_file), dim_from_weights=True, network_dim=2, network_alpha=ALPHA),
        "sd1",
    )
    assert run.network_dim == RANK
    assert notes == (f"--dim_from_weights: rank 8 from {sd1_file}, not --network_dim 2",)


def test_without_settings_from_a_file_the_config_is_unchanged():
    plain = config(network_dim=4)
    assert initial_weights_settings(plain, "sd1") == (plain, ())


def test_dim_from_weights_needs_a_file():
    with pytest.raises(UserError) as caught:
        config(dim_from_weights=True)
    assert str(caught.value) == (
        "--dim_from_weights reads the rank from --network_weights: give --network_weights FILE, or drop "
        "--dim_from_weights"
    )


def bad_files(sd1_state: dict) -> dict:
    return {
        "other rank": (
            sd1_state,
            {"network_dim": 4},
            "{path} has rank 8, but --network_dim is 4: set --network_dim 8, or add --dim_from_weights",
        ),
    }


def test_a_file_for_another_family_is_one_line(tmp_path):
    path = tmp_path / "xl.safetensors"
    save_lora_file(random_network("sdxl").kohya_state_dict(), path)
    with pytest.raises(UserError) as caught:
        InitialWeights.read(str(path), "sd1")
    assert str(caught.value).startswith(
        f"--network_weights {path} is a LoRA for SDXL models (its names are like lora_"
    )
    assert str(caught.value).endswith("but the base model is SD1.x: use a LoRA made for an SD1.x model")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(UserError) as caught:
        InitialWeights.read(str(tmp_path / "nope.safetensors"), "sd1")
    assert str(caught.value) == f"--network_weights {tmp_path / 'nope.safetensors'}: LoRA file not found"


def test_a_file_without_tensors_is_one_line(tmp_path):
    path = tmp_path / "empty.safetensors"
    save_file({}, str(path))
    with pytest.raises(UserError) as caught:
        InitialWeights.read(str(path), "sd1")
    assert str(caught.value) == f"--network_weights {path}: the file holds no tensors; give a kohya LoRA file"


@pytest.mark.parametrize("case", ["other rank"])
def test_a_file_the_network_cannot_be_built_from_is_one_line(tmp_path, case):
    network = random_network("sd1")
    state, flags, message = bad_files(network.kohya_state_dict())[case]
    path = tmp_path / "bad.safetensors"
    save_lora_file(state, path)
    with pytest.raises(UserError) as caught:
        initial_weights_settings(config(network_weights=str(path), **flags), "sd1")
    assert str(caught.value) == "--network_weights " + message.format(path=path)


@pytest.mark.parametrize(
    ("built", "message"),
    [
        (
            {"train_text_encoder": False},
            "12 module(s) this network does not have (e.g. lora_te_text_model_encoder_layers_0_mlp_fc1); the LoRA "
            "was trained for another base model or with other parts trained (--network_train_unet_only / "
            "--network_train_text_encoder_only)",
        ),
    ],
)
def test_a_file_with_other_modules_than_the_network_is_one_line(sd1_file, built, message):
    network = build_lora_network(*tiny_family_modules("sd1"), "sd1", rank=RANK, alpha=ALPHA, **built)
    with pytest.raises(UserError) as caught:
        InitialWeights.read(str(sd1_file), "sd1").load_into(network)
    assert str(caught.value) == f"--network_weights {sd1_file}: {message}"


def test_a_file_for_sd2_shapes_on_sd1_names_the_first_mismatch_and_the_cause(tmp_path):
    """SD1 and SD2 share module names; the shapes tell them apart."""
    sd2 = random_network("sd2").kohya_state_dict()
    path = tmp_path / "sd2.safetensors"
    save_lora_file(sd2, path)
    network = build_lora_network(*tiny_family_modules("sd1"), "sd1", rank=RANK, alpha=ALPHA)
    with pytest.raises(UserError) as caught:
        InitialWeights.read(str(path), "sd1").load_into(network)
    assert "the LoRA was made for another base model (SD1.x and SD2.x share module names)" in str(
        caught.value
    )
