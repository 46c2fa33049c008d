"""Runs that start from existing LoRA files on the tiny SD1 model: --network_weights (the LoRA starts as
the file, with a fresh optimizer and schedule; files of other network types too), --dim_from_weights,
--base_weights merged into the base model, and every bad input stopping in one line with the output folder
untouched."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.networks.algorithms import AdapterKind
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.lora_network import build_lora_network
from model_helpers import tiny_family_modules
from run_helpers import set_up, tiny_run_config, train_argv, train_steps

FILE_RANK, FILE_ALPHA = 8, 2.0
FLAGS = (
    "--resolution", "64", "--train_batch_size", "2", "--max_train_steps", "2", "--learning_rate", "1e-3",
    "--mixed_precision", "no", "--seed", "0", "--max_data_loader_n_workers", "0",
)  # fmt: skip
Q_PROJ = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_kohya_dataset(tmp_path_factory.mktemp("data"), reg_count=0)


def random_lora(path: Path, unet, text_encoders, family: str, seed: int = 1) -> Path:
    network = build_lora_network(unet, text_encoders, family, rank=FILE_RANK, alpha=FILE_ALPHA)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    save_lora_file(network.kohya_state_dict(), path, dtype=torch.float16)
    return path


@pytest.fixture(scope="module")
def start_file(tiny_sd1_bundle, tmp_path_factory) -> Path:
    """A rank-8, alpha-2 LoRA on the tiny SD1 model's own modules."""
    bundle = tiny_sd1_bundle
    path = tmp_path_factory.mktemp("start") / "start.safetensors"
    return random_lora(path, bundle.unet, bundle.text_encoders, "sd1")


def run_config(tiny_sd1, tree, output_dir: Path, **flags):
    return tiny_run_config(
        tiny_sd1.single_file, tree.train_dir, output_dir,
        train_batch_size=2, max_train_steps=2, learning_rate=1e-3, **flags,
    )  # fmt: skip


def test_a_run_starts_as_the_file_with_a_fresh_optimizer_and_schedule(tiny_sd1, tree, tmp_path, start_file):
    config = run_config(
        tiny_sd1,
        tree,
        tmp_path,
        network_weights=str(start_file),
        dim_from_weights=True,
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=2,
    )
    start, setup, _ = set_up(config)
    network = setup.parts.model.network
    state, file = network.kohya_state_dict(), load_file(str(start_file))
    assert state.keys() == file.keys()
    assert all(torch.equal(state[key], tensor.float()) for key, tensor in file.items())
    assert (
        network.adapter(Q_PROJ).lora_dim == FILE_RANK
        and network.adapter(Q_PROJ).scale == FILE_ALPHA / FILE_RANK
    )
    # Not a resume: no optimizer moments, and the schedule at its first step (warmup from 0)
    assert len(setup.parts.optimizer.state) == 0
    assert [group["lr"] for group in setup.parts.optimizer.param_groups] == [0.0, 0.0]

    train_steps(start, setup, config)
    assert setup.parts.lr_scheduler.get_last_lr() == [1e-3, 1e-3]
    trained = network.kohya_state_dict()
    assert not torch.equal(trained[f"{Q_PROJ}.lora_up.weight"], file[f"{Q_PROJ}.lora_up.weight"].float())


def test_the_saved_file_computes_what_training_applied(tiny_sd1, tree, tmp_path, start_file):
    """--network_alpha 1 meets a file of alpha 2: training applies alpha 2, and the file says 2."""
    argv = train_argv(
        tiny_sd1.single_file, tree.train_dir, tmp_path, *FLAGS, "--network_weights", str(start_file),
        "--dim_from_weights", "--network_alpha", "1",
    )  # fmt: skip
    assert main(argv) == 0
    saved = load_file(str(tmp_path / "toy.safetensors"))
    assert {key for key in saved if key.endswith(".alpha")} == {
        key for key in load_file(str(start_file)) if key.endswith(".alpha")
    }
    assert {saved[key].item() for key in saved if key.endswith(".alpha")} == {FILE_ALPHA}
    assert saved[f"{Q_PROJ}.lora_down.weight"].shape[0] == FILE_RANK


def test_the_saved_metadata_records_the_rank_and_alpha_training_applied(tiny_sd1, tree, tmp_path, start_file):
    argv = train_argv(
        tiny_sd1.single_file, tree.train_dir, tmp_path, *FLAGS, "--network_weights", str(start_file),
        "--dim_from_weights", "--network_alpha", "1",
    )  # fmt: skip
    assert main(argv) == 0
    with safe_open(str(tmp_path / "toy.safetensors"), "pt") as file:
        metadata = file.metadata()
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("8", "2.0")


def test_base_weights_are_merged_into_the_model_that_trains(tiny_sd1, tree, tmp_path, start_file):
    config = run_config(
        tiny_sd1, tree, tmp_path, base_weights=[str(start_file)], base_weights_multiplier=[0.5], network_dim=2
    )
    original = load_file(str(tiny_sd1.diffusers_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    start, setup, _ = set_up(config)
    lora = load_file(str(start_file))
    delta = lora[f"{Q_PROJ}.lora_up.weight"].float() @ lora[f"{Q_PROJ}.lora_down.weight"].float()
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    merged = start.bundle.unet.get_parameter(key)
    torch.testing.assert_close(
        merged, original[key] + 0.5 * FILE_ALPHA / FILE_RANK * delta, rtol=0, atol=1e-6
    )
    # the new LoRA is built on the merged model and starts from zero
    assert setup.parts.model.network.adapter(Q_PROJ).lora_dim == 2


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    unknown = folder / "unknown.safetensors"
    save_lora_file(
        {
            "lora_unet_mid_block_attentions_0_proj_inn.lora_down.weight": torch.ones(4, 64),
            "lora_unet_mid_block_attentions_0_proj_inn.lora_up.weight": torch.ones(64, 4),
        },
        unknown,
    )
    loha = build_lora_network(*tiny_family_modules("sd1"), "sd1", rank=4, alpha=1.0, kind=AdapterKind("loha"))
    save_lora_file(loha.kohya_state_dict(), folder / "loha.safetensors")
    return {
        "loha": folder / "loha.safetensors",
        "sdxl": random_lora(folder / "xl.safetensors", *tiny_family_modules("sdxl"), "sdxl"),
        "unknown": unknown,
        "missing": folder / "missing.safetensors",
    }


XL_NAME = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
BAD_RUNS = {
    "network_weights for sdxl": (
        ["--network_weights", "{sdxl}"],
        f"--network_weights {{sdxl}} is a LoRA for SDXL models (its names are like {XL_NAME}), but the base "
        "model is SD1.x: use a LoRA made for an SD1.x model",
    ),
    "network_weights of another rank": (
        ["--network_weights", "{start}", "--network_dim", "4"],
        "--network_weights {start} has rank 8, but --network_dim is 4: set --network_dim 8, or add "
        "--dim_from_weights",
    ),
    "network_weights of another type": (
        ["--network_weights", "{loha}"],
        "--network_weights {loha} is a LoHa file, but this run trains LoRA/LoCon (--network_module "
        "networks.lora): set --network_module lycoris.kohya --network_args algo=loha",
    ),
    "network_weights missing": (
        ["--network_weights", "{missing}"],
        "--network_weights {missing}: LoRA file not found",
    ),
    "base_weights for sdxl": (
        ["--base_weights", "{start}", "{sdxl}"],
        f"--base_weights {{sdxl}} is a LoRA for SDXL models (its names are like {XL_NAME}), but the base "
        "model is SD1.x: use a LoRA made for an SD1.x model",
    ),
    "base_weights missing": (
        ["--base_weights", "{missing}"],
        "--base_weights {missing}: LoRA file not found",
    ),
    "base_weights unknown module": (
        ["--base_weights", "{unknown}"],
        "--base_weights {unknown}: lora_unet_mid_block_attentions_0_proj_inn matches no module of this SD1.x "
        "model; use a kohya LoRA made for this base model",
    ),
    "base_weights_multiplier count": (
        ["--base_weights", "{start}", "{start}", "--base_weights_multiplier", "0.5"],
        "--base_weights_multiplier has 1 value(s) for 2 --base_weights file(s): give one multiplier per file, "
        "in the same order (or none for 1.0 each)",
    ),
}


@pytest.mark.parametrize(("flags", "message"), BAD_RUNS.values(), ids=BAD_RUNS)
def test_a_bad_file_stops_the_run_in_one_line_and_the_output_folder_is_untouched(
    tiny_sd1, tree, tmp_path, capsys, start_file, bad_files, flags, message
):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "toy.safetensors").write_bytes(b"an earlier run's LoRA")
    (output_dir / "toy.toml").write_text("network_dim = 4\n")
    before = {path.name: path.read_bytes() for path in output_dir.iterdir()}
    paths = {"start": start_file, **bad_files}
    argv = train_argv(tiny_sd1.single_file, tree.train_dir, output_dir, *FLAGS, "--network_dim", "8")
    assert main([*argv, *(flag.format(**paths) for flag in flags)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[-1] == "error: " + message.format(**paths)
    assert {path.name: path.read_bytes() for path in output_dir.iterdir()} == before


def test_base_weights_reach_the_cached_text_encoder_outputs(tiny_sd1, tree, tmp_path, start_file):
    # The merge happens when the model is loaded, so the text-encoder outputs are cached from the merged one.
    merged_config = run_config(
        tiny_sd1, tree, tmp_path / "merged", base_weights=[str(start_file)], cache_text_encoder_outputs=True,
        network_train_unet_only=True,
    )  # fmt: skip
    plain_config = run_config(
        tiny_sd1, tree, tmp_path / "plain", cache_text_encoder_outputs=True, network_train_unet_only=True
    )
    merged_states = next(iter(set_up(merged_config)[1].parts.loader))["text_states"]
    plain_states = next(iter(set_up(plain_config)[1].parts.loader))["text_states"]
    assert merged_states.shape == plain_states.shape
    assert not torch.allclose(merged_states, plain_states)


# Other network types: a first run trains 2 steps through the CLI; a second run starts from its file.
TYPE_RUNS = {
    # kohya's LoCon: rank 4 on the linear layers and 1x1 convolutions, 2 on the 3x3 ones (alpha 2 and 1)
    "kohya-locon": ["--network_args", "conv_dim=2", "conv_alpha=1"],
    # LyCORIS' LoKr: the narrow layers' Kronecker factors in full (scale 1), fc1's at rank 4
    "lokr": ["--network_module", "lycoris.kohya", "--network_args", "algo=lokr", "factor=4"],
    "kohya-oft": ["--network_module", "networks.oft", "--network_alpha", "0.5"],
}


@pytest.fixture(scope="module")
def trained(tiny_sd1, tree, tmp_path_factory):
    """label -> the file of a 2-step run of that type at --network_dim 4 (trained once, on first use)."""
    files: dict[str, Path] = {}

    def file(label: str) -> Path:
        if label not in files:
            output_dir = tmp_path_factory.mktemp(label)
            argv = train_argv(
                tiny_sd1.single_file, tree.train_dir, output_dir, *FLAGS, "--network_dim", "4", "--network_alpha",
                "2", *TYPE_RUNS[label],
            )  # fmt: skip
            assert main(argv) == 0
            files[label] = output_dir / "toy.safetensors"
        return files[label]

    return file


def type_config(tiny_sd1, tree, output_dir: Path, label: str, **flags):
    """The second run's config: the type's flags (network args as given to the first run) and `flags`."""
    argv = TYPE_RUNS[label]
    values = {"network_dim": 4, "network_alpha": 2.0}
    if "--network_module" in argv:
        values["network_module"] = argv[argv.index("--network_module") + 1]
    if "--network_alpha" in argv:
        values["network_alpha"] = float(argv[argv.index("--network_alpha") + 1])
    if "--network_args" in argv:
        values["network_args"] = argv[argv.index("--network_args") + 1 :]
    return run_config(tiny_sd1, tree, output_dir, **{**values, **flags})


def started_from(config, file: Path) -> tuple[bool, list[str]]:
    """Whether the run's network, as training starts, holds exactly the file's tensors; the run's lines."""
    _, setup, lines = set_up(config)
    state, tensors = setup.parts.model.network.kohya_state_dict(), load_file(str(file))
    same = state.keys() == tensors.keys() and all(
        torch.equal(state[key].float(), tensor.float()) for key, tensor in tensors.items()
    )
    return same, lines


@pytest.mark.parametrize("label", list(TYPE_RUNS))
def test_a_run_of_each_type_starts_from_a_file_of_its_type_at_the_files_ranks(
    tiny_sd1, tree, tmp_path, trained, label
):
    """--dim_from_weights with another --network_dim: the file's ranks and alphas, module by module."""
    file = trained(label)
    config = type_config(tiny_sd1, tree, tmp_path, label, network_weights=str(file), dim_from_weights=True,
                         network_dim=8)  # fmt: skip
    same, _ = started_from(config, file)
    assert same


def test_a_locon_run_starts_from_the_file_with_its_own_settings(tiny_sd1, tree, tmp_path, trained):
    file = trained("kohya-locon")
    same, lines = started_from(
        type_config(tiny_sd1, tree, tmp_path, "kohya-locon", network_weights=str(file)), file
    )
    assert same
    assert not any(line.startswith("note: --network_weights") for line in lines)


def test_dim_from_weights_trains_the_files_conv_ranks_without_conv_dim(tiny_sd1, tree, tmp_path, trained):
    """kohya's create_network_from_weights builds every module of the file at its rank, the 3x3
    convolutions included, whatever the run's network args say."""
    file = trained("kohya-locon")
    config = run_config(tiny_sd1, tree, tmp_path, network_weights=str(file), dim_from_weights=True)
    same, lines = started_from(config, file)
    assert same
    assert any(
        line.startswith(f"note: --dim_from_weights: {file} has a rank per module (4 on ") for line in lines
    )
