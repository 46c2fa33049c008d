"""The shipped presets: SD1.5 and SDXL, character and style, 8, 12 and 24 GB; each says what it is for,
validates, and `loracraft plan` runs it (on the tiny model of its family, with the test's paths)."""

import pytest
import torch

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.config.load import build_config
from loracraft.config.presets import load_preset, preset_names, preset_text
from loracraft.errors import UserError

EXPECTED = sorted(
    f"{family}-{purpose}-{memory}gb" for family in ("sd15", "sdxl") for purpose in ("character", "style")
    for memory in (8, 12, 24)
)  # fmt: skip


def test_the_twelve_presets_ship():
    assert preset_names() == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_a_preset_says_what_it_is_for_and_validates(name):
    first_lines = preset_text(name).splitlines()[:2]
    assert first_lines[0].startswith(f"# {name}: a LoRA of ")
    assert first_lines[1].startswith(
        "# For SDXL 1.0" if name.startswith("sdxl") else "# For Stable Diffusion 1.5"
    )
    config = build_config(load_preset(name), {})
    assert config.resolution == ((1024, 1024) if name.startswith("sdxl") else (512, 512))
    assert config.save_every_n_epochs == 1 and config.max_train_epochs in (10, 15)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_kohya_dataset(
        tmp_path_factory.mktemp("preset-data"),
        sizes=((64, 64),) * 2,
        formats=("png", "png"),
        uncaptioned=(),
        reg_count=0,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_loracraft_plan_runs_every_preset(name, tiny_sd1, tiny_sdxl, dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LORACRAFT_CACHE", str(tmp_path / "cache"))
    model = tiny_sdxl if name.startswith("sdxl") else tiny_sd1
    preset = tmp_path / f"{name}.toml"
    assert main(["config", "import", "--preset", name, "-o", str(preset)]) == 0
    argv = [
        "plan", "--config_file", str(preset), "--pretrained_model_name_or_path", str(model.single_file),
        "--train_data_dir", str(dataset.train_dir), "--output_dir", str(tmp_path / "out"), "--output_name", "p",
        "--resolution", "64,64", "--min_bucket_reso", "64", "--max_bucket_reso", "128",
        *([] if torch.cuda.is_available() else ["--mixed_precision", "no"]),  # fp16 and bf16 need a GPU here
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "p-lr.png").is_file()


def test_an_unknown_preset_is_one_line():
    with pytest.raises(UserError) as refused:
        preset_text("sdxl-caracter-8gb")
    assert str(refused.value) == (
        "unknown preset 'sdxl-caracter-8gb' (did you mean sdxl-character-8gb?); `loracraft config presets` lists them"
    )
