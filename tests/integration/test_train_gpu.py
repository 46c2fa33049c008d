"""Mixed precision on CUDA: fp16 with loss scaling and bf16 train and write a normal LoRA file."""

import pytest
import torch
from safetensors import safe_open

from data_helpers import make_kohya_dataset
from loracraft.cli import main

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda(tiny_sd1, tmp_path, precision):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    out = tmp_path / "out"
    argv = [
        "train",
        "--pretrained_model_name_or_path",
        str(tiny_sd1.single_file),
        "--train_data_dir",
        str(tree.train_dir),
        "--output_dir",
        str(out),
        "--output_name",
        "gpu",
        "--caption_extension",
        ".txt",
        "--resolution",
        "64",
        "--enable_bucket",
        "false",
        "--network_dim",
        "4",
        "--max_train_steps",
        "6",
        "--mixed_precision",
        precision,
        "--seed",
        "1",
    ]
    assert main(argv) == 0
    with safe_open(out / "gpu.safetensors", "pt") as f:
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
    assert all(torch.isfinite(up).all() for up in ups)
    assert any(up.abs().sum() > 0 for up in ups)
