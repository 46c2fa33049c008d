"""`loracraft demo`, the README's main command, end to end at its full length: it must learn (the
learning test's thresholds, test_learning.py; this run is that test's AdamW variant, so the suite trains
it once)."""

import re

import pytest
from PIL import Image

from learning_thresholds import learnt
from loracraft.cli import main
from loracraft.config.load import read_config_file
from loracraft.models.tiny import shipped
from loracraft.networks.lora_file import read_lora_file
from loracraft.tools.concept_probe import CELL, HEADER_H, LABEL_W

pytestmark = pytest.mark.skipif(not shipped.CHECKPOINT.exists(), reason="loracraft-tiny is not built")


@pytest.mark.slow
def test_demo_learns_and_writes_dataset_lora_log_and_grid_and_prints_where(tmp_path, capsys):
    out = tmp_path / "demo"

    assert main(["demo", "--output_dir", str(out)]) == 0

    printed = capsys.readouterr().out
    assert f"LoRA: {out / 'zxq.safetensors'}" in printed
    assert f"grid: {out / 'zxq-grid.png'}" in printed
    result = re.search(
        r"result: 'zxq' prompts drawn in magenta (\d+)% -> (\d+)%; prompts without 'zxq' in magenta (\d+)% -> "
        r"(\d+)%.*\((\d+) steps",
        printed,
    )
    assert result and result[5] == "300"
    assert learnt(*(int(result[group]) / 100 for group in range(1, 5))), result[0]
    log_line = re.search(r"training log: (\S+)", printed)
    assert log_line and any(
        path.name.startswith("events.out.tfevents") for path in (tmp_path / log_line[1]).rglob("*")
    )

    captions = sorted((out / "dataset" / "img" / "10_zxq shape").glob("*.txt"))
    assert len(captions) == 12 and captions[0].read_text().startswith("a zxq circle on a ")
    # kohya's latents (a draw from the posterior): the mean measured no better on the tiny VAE.
    assert read_config_file(out / "zxq.toml")["latent_sampling"] == "sample"
    tensors, metadata = read_lora_file(out / "zxq.safetensors")
    assert metadata["ss_network_dim"] == "8" and metadata["ss_epoch"] == "10"
    assert any(key.startswith("lora_unet_") for key in tensors) and any(
        key.startswith("lora_te_") for key in tensors
    )
    epoch_files = sorted(path.name for path in out.glob("zxq-*.safetensors"))
    assert epoch_files == ["zxq-000003.safetensors", "zxq-000006.safetensors", "zxq-000009.safetensors"]
    # Columns: base, the three epoch files, the final LoRA at 0.5 and 1.0; rows: 3 trigger + 2 plain prompts.
    grid = Image.open(out / "zxq-grid.png")
    assert grid.size == (LABEL_W + 6 * CELL, HEADER_H + 5 * CELL)


def test_bad_flags_give_one_line_and_touch_nothing(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")

    assert main(["demo", "--output_dir", str(a_file)]) == 2
    assert main(["demo", "--output_dir", str(tmp_path / "out"), "--epochs", "0"]) == 2

    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        f"error: --output_dir {a_file} is a file, not a folder; name a folder (it is created)",
        "error: --epochs 0: the demo trains at least one epoch; use --epochs 1 or more",
    ]
    assert a_file.read_text() == "mine\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
