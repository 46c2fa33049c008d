"""`loracraft train --scale_weight_norms` on the tiny SD1 model: every module of the saved file is within the
limit, the trackers get kohya's max-norm numbers at every step and the bar kohya's words; a run without
the option logs none of them."""

import json

import pytest
from safetensors.torch import load_file, safe_open

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from run_helpers import train_argv

MAX_NORM = 0.01
KEYS = {"max_norm/keys_scaled", "norm/avg_key_norm", "max_norm/max_key_norm"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_kohya_dataset(tmp_path_factory.mktemp("data"), reg_count=0)


def train(tiny_sd1, tree, output_dir, *extra: str) -> list[dict]:
    """Three steps at a learning rate that moves every module past MAX_NORM; the tracker scalars logged."""
    progress = output_dir / "progress.jsonl"
    argv = train_argv(tiny_sd1.single_file, tree.train_dir, output_dir, *extra)
    argv += ["--resolution", "64,64", "--network_dim", "4", "--network_alpha", "4", "--learning_rate", "1e-2"]
    argv += ["--network_args", "conv_dim=4", "conv_alpha=4", "--max_train_steps", "3"]
    argv += ["--mixed_precision", "no", "--seed", "0", "--max_data_loader_n_workers", "0"]
    assert main(argv + ["--progress_file", str(progress)]) == 0
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    return [event for event in events if event["event"] == "scalars" and "loss/current" in event["values"]]


def module_norms(path) -> dict[str, float]:
    """Each module's |up @ down| x alpha / rank, from the file."""
    state = load_file(str(path))
    norms = {}
    for key in state:
        if key.endswith(".lora_down.weight"):
            name = key.removesuffix(".lora_down.weight")
            down = state[key].flatten(1).double()
            up = state[f"{name}.lora_up.weight"].flatten(1).double()
            norms[name] = ((up @ down).norm() * state[f"{name}.alpha"].double() / down.shape[0]).item()
    return norms


def test_the_file_is_within_the_limit_and_the_trackers_get_kohyas_numbers(
    tiny_sd1, tree, tmp_path, capsys, monkeypatch
):
    # tqdm cuts the bar to the terminal's width, which it reads from COLUMNS when stderr is captured.
    monkeypatch.setenv("COLUMNS", "400")
    steps = train(tiny_sd1, tree, tmp_path, "--scale_weight_norms", str(MAX_NORM))
    file = tmp_path / "toy.safetensors"
    norms = module_norms(file)
    assert len(norms) > 20 and any("resnets" in name for name in norms)
    assert max(norms.values()) <= MAX_NORM * (1 + 1e-5)
    with safe_open(str(file), "pt") as opened:
        assert opened.metadata()["ss_scale_weight_norms"] == str(MAX_NORM)

    assert [event["step"] for event in steps] == [1, 2, 3]
    for event in steps:
        assert KEYS <= set(event["values"])
    last = steps[-1]["values"]
    # The numbers logged at the last step are those of the file it saved.
    scaled = sum(norm >= MAX_NORM * (1 - 1e-5) for norm in norms.values())
    assert scaled > len(norms) // 2
    assert last["max_norm/keys_scaled"] == scaled
    assert last["max_norm/max_key_norm"] == pytest.approx(max(norms.values()), rel=1e-4)
    assert last["norm/avg_key_norm"] == pytest.approx(sum(norms.values()) / len(norms), rel=1e-4)
    assert "Keys Scaled=" in capsys.readouterr().err


def test_a_run_without_the_option_logs_no_max_norm(tiny_sd1, tree, tmp_path, capsys):
    steps = train(tiny_sd1, tree, tmp_path)
    assert len(steps) == 3
    assert all(not KEYS & set(event["values"]) for event in steps)
    assert "Keys Scaled" not in capsys.readouterr().err
    # The same learning rate without the limit leaves modules above it.
    assert max(module_norms(tmp_path / "toy.safetensors").values()) > 2 * MAX_NORM


def test_a_type_without_a_max_norm_trains_without_one_and_says_so(tiny_sd1, tree, tmp_path, capsys):
    argv = train_argv(tiny_sd1.single_file, tree.train_dir, tmp_path / "out", "--scale_weight_norms", "1")
    argv += ["--network_module", "lycoris.kohya", "--network_args", "algo=ia3", "--max_train_steps", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert (
        captured.out.count(
            "note: --scale_weight_norms 1: algo=ia3 has no max-norm (LyCORIS leaves its modules as they are), so it "
            "trains without one, as in kohya"
        )
        == 1
    )
    assert "Keys Scaled" not in captured.err
    assert (tmp_path / "out" / "toy.safetensors").is_file()
