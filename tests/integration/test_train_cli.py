"""`loracraft train` end to end on the tiny SD1 model and a small generated kohya dataset."""

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors import safe_open

from data_helpers import make_kohya_dataset
from loracraft.cli import main
from loracraft.config.load import read_config_file
from loracraft.networks import metadata

pytestmark = pytest.mark.slow


def train_flags(tiny_sd1, tree, output_dir: Path, *extra: str, reg: bool = True) -> list[str]:
    """The shared command line; `reg=False` leaves out --reg_data_dir (for a tree made with reg_count=0)."""
    return [
        "train",
        "--pretrained_model_name_or_path",
        str(tiny_sd1.single_file),
        "--train_data_dir",
        str(tree.train_dir),
        *(["--reg_data_dir", str(tree.reg_dir)] if reg else []),
        "--output_dir",
        str(output_dir),
        "--output_name",
        "toy",
        "--caption_extension",
        ".txt",
        "--resolution",
        "64,64",
        "--enable_bucket",
        "--min_bucket_reso",
        "64",
        "--max_bucket_reso",
        "128",
        "--bucket_no_upscale",
        "false",
        "--network_dim",
        "4",
        "--network_alpha",
        "2",
        "--train_batch_size",
        "2",
        "--max_train_epochs",
        "2",
        "--save_every_n_epochs",
        "1",
        "--learning_rate",
        "1e-3",
        "--lr_scheduler",
        "constant_with_warmup",
        "--lr_warmup_steps",
        "0.2",
        "--mixed_precision",
        "no",
        "--save_precision",
        "fp16",
        "--seed",
        "7",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tiny_sd1, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tree = make_kohya_dataset(root / "data")
    output_dir = root / "out"
    assert main(train_flags(tiny_sd1, tree, output_dir, "--logging_dir", str(root / "logs"))) == 0
    return tree, output_dir, root


def test_writes_epoch_files_final_file_and_effective_config(trained):
    _, output_dir, _ = trained
    names = sorted(p.name for p in output_dir.iterdir())
    assert names == ["toy-000001.safetensors", "toy.log", "toy.safetensors", "toy.toml"]
    config = read_config_file(output_dir / "toy.toml")
    assert config["network_dim"] == 4 and config["resolution"] == "64,64" and config["seed"] == 7


def test_the_run_is_told_in_name_log(trained):
    """NAME.log holds the plan, the settings, each epoch's loss and the end, in plain text."""
    _, output_dir, _ = trained
    lines = (output_dir / "toy.log").read_text().splitlines()
    assert "training toy" in lines[0] and lines[1] == "plan:"
    assert "  Steps" in lines and "  network_dim = 4" in lines
    epochs = [line for line in lines if " epoch " in f" {line.split('  ', 1)[-1]}"]
    assert [line.split("  ", 1)[1].split(":")[0] for line in epochs] == ["epoch 1", "epoch 2"]
    assert lines[-1].endswith("finished: toy.safetensors after 16 steps")


def test_final_file_has_kohya_keys_precision_and_metadata(trained):
    tree, output_dir, _ = trained
    with safe_open(output_dir / "toy.safetensors", "pt") as f:
        keys = set(f.keys())
        metadata = f.metadata()
        up = f.get_tensor("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight")
        alpha = f.get_tensor("lora_unet_down_blocks_0_attentions_0_proj_in.alpha")
    modules = {k.split(".")[0] for k in keys}
    assert len([m for m in modules if m.startswith("lora_unet_")]) == 192
    assert len([m for m in modules if m.startswith("lora_te_text_model_encoder_layers_")]) == 2 * 6
    assert all(
        f"{m}.{part}" in keys for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")
    )
    assert up.dtype == torch.float16 and up.dim() == 4  # proj_in is a 1x1 conv in SD1
    assert alpha.dtype == torch.float32 and alpha.item() == 2.0
    assert up.abs().sum() > 0  # trained: the zero-initialised up weights moved
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_output_name"] == "toy"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    # 4 images x 2 repeats = 8 train samples; 2 reg images balanced up to 8 samples.
    assert metadata["ss_num_train_images"] == "8"
    assert json.loads(metadata["ss_dataset_dirs"]) == {"2_sks toy": {"n_repeats": 2, "img_count": 4}}
    assert json.loads(metadata["ss_tag_frequency"])["2_sks toy"]["sks toy"] == 4
    assert metadata["ss_epoch"] == "2" and int(metadata["ss_steps"]) == int(metadata["ss_max_train_steps"])
    assert len(metadata["sshs_model_hash"]) == 64


def test_tensorboard_logs_written(trained):
    _, _, root = trained
    runs = list((root / "logs").iterdir())
    assert len(runs) == 1 and any(p.name.startswith("events.out.tfevents") for p in runs[0].iterdir())


def test_same_seed_gives_bit_identical_file(tiny_sd1, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        flags = train_flags(tiny_sd1, tree, out, "--max_train_epochs", "1")
        flags.remove("--reg_data_dir")
        flags.remove(str(tree.reg_dir))
        assert main(flags) == 0
        outputs.append((out / "toy.safetensors").read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--train_data_dir": "missing"}, "--train_data_dir"),
        ({"--pretrained_model_name_or_path": "notes.txt"}, "notes.txt: unknown checkpoint type '.txt'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_sd1, tmp_path, capsys, change, message):
    tree = make_kohya_dataset(tmp_path / "data")
    (tmp_path / "notes.txt").write_text("not a model")
    out = tmp_path / "out"
    flags = train_flags(tiny_sd1, tree, out)
    for flag, value in change.items():
        flags[flags.index(flag) + 1] = str(tmp_path / value)
    assert main(flags) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("extra", "expect_te", "suffix"),
    [
        (["--mixed_precision", "bf16", "--gradient_checkpointing"], True, "safetensors"),
        (
            [
                "--network_train_unet_only",
                "--gradient_accumulation_steps",
                "2",
                "--save_model_as",
                "ckpt",
                "--cache_latents_to_disk",
                "--max_data_loader_n_workers",
                "1",
                "--persistent_data_loader_workers",
            ],
            False,
            "ckpt",
        ),
        (
            [
                "--cache_latents",
                "false",
                "--text_encoder_lr",
                "0",
                "--clip_skip",
                "2",
                "--max_token_length",
                "150",
            ],
            False,
            "safetensors",
        ),
    ],
    ids=["bf16-checkpointing", "unet-only-accum-ckpt-disk-cache-workers", "uncached-te-lr0-clipskip-long"],
)
def test_training_options_run_and_shape_the_file(tiny_sd1, tmp_path, extra, expect_te, suffix):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    out = tmp_path / "out"
    flags = train_flags(tiny_sd1, tree, out, "--max_train_epochs", "1", *extra, reg=False)
    assert main(flags) == 0
    tensors = torch.load(out / "toy.ckpt", weights_only=True) if suffix == "ckpt" else None
    if tensors is None:
        with safe_open(out / "toy.safetensors", "pt") as f:
            keys = set(f.keys())
    else:
        keys = set(tensors)
    assert any(k.startswith("lora_unet_") for k in keys)
    assert any(k.startswith("lora_te_") for k in keys) == expect_te
    if "--cache_latents_to_disk" in extra:
        assert len(list(tree.concept_dir.glob("*_sd.npz"))) == len(tree.images)


def test_text_encoder_cache_on_disk_then_reused(tiny_sd1, tmp_path, capsys):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    flags = train_flags(
        tiny_sd1,
        tree,
        tmp_path / "out",
        "--max_train_epochs",
        "1",
        "--network_train_unet_only",
        "--cache_text_encoder_outputs_to_disk",
        reg=False,
    )
    assert main(flags) == 0
    assert "text-encoder cache: 4 encoded, 0 reused" in capsys.readouterr().out
    assert len(list(tree.concept_dir.glob("*_te_sd.npz"))) == 4
    assert main(flags) == 0
    assert "text-encoder cache: 0 encoded, 4 reused" in capsys.readouterr().out


def test_cache_only_fills_disk_caches_and_trains_nothing(tiny_sd1, tmp_path, capsys):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    out = tmp_path / "out"
    flags = train_flags(
        tiny_sd1,
        tree,
        out,
        "--cache_only",
        "--network_train_unet_only",
        "--cache_text_encoder_outputs",
        reg=False,
    )
    assert main(flags) == 0
    assert "no training was run" in capsys.readouterr().out
    assert len(list(tree.concept_dir.glob("*_sd.npz"))) == 8  # 4 latent + 4 text caches
    assert not out.exists() or not any(out.glob("*.safetensors"))


def test_cache_only_fills_the_validation_images_caches_too(tiny_sd1, tmp_path, capsys):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    flags = train_flags(
        tiny_sd1, tree, tmp_path / "out", "--cache_only", "--network_train_unet_only",
        "--cache_text_encoder_outputs", "--validation_split", "0.25", reg=False,
    )  # fmt: skip
    assert main(flags) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith("cache_only: 3 images: latent caches 3 written")
    assert printed[-1].startswith("validation set: 1 image: latent caches 1 written")
    assert len(list(tree.concept_dir.glob("*_sd.npz"))) == 8  # every image's latent and text cache


def test_dataset_config_run_records_ss_datasets(tiny_sd1, tmp_path):
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        f'[general]\ncaption_extension = ".txt"\nshuffle_caption = true\nkeep_tokens = 1\n'
        f"[[datasets]]\nresolution = 64\nbatch_size = 2\nenable_bucket = false\n"
        f'[[datasets.subsets]]\nimage_dir = "{tree.concept_dir}"\nnum_repeats = 3\n'
    )
    out = tmp_path / "out"
    argv = [
        "train",
        "--pretrained_model_name_or_path",
        str(tiny_sd1.single_file),
        "--dataset_config",
        str(toml),
        "--output_dir",
        str(out),
        "--output_name",
        "cfg",
        "--max_train_epochs",
        "1",
        "--mixed_precision",
        "no",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    with safe_open(out / "cfg.safetensors", "pt") as f:
        metadata = f.metadata()
    datasets = json.loads(metadata["ss_datasets"])
    assert len(datasets) == 1 and datasets[0]["subsets"][0]["num_repeats"] == 3
    assert metadata["ss_num_train_images"] == "12"


def test_augmentation_masks_and_caption_transforms_train_end_to_end(tiny_sd1, tmp_path):
    from PIL import Image

    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    # One image with a transparent half, so --alpha_mask has something to mask.
    rgba = Image.open(tree.images[0]).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0).crop((0, 0, rgba.width // 2, rgba.height)).resize(rgba.size))
    rgba.save(tree.images[0].with_suffix(".png"))
    out = tmp_path / "out"
    flags = train_flags(
        tiny_sd1,
        tree,
        out,
        "--max_train_epochs",
        "1",
        "--cache_latents",
        "false",
        "--flip_aug",
        "--color_aug",
        "--random_crop",
        "--alpha_mask",
        "--shuffle_caption",
        "--keep_tokens",
        "1",
        "--caption_tag_dropout_rate",
        "0.3",
        "--caption_prefix",
        "(photo:1.2)",
        "--weighted_captions",
        reg=False,
    )
    assert main(flags) == 0
    with safe_open(out / "toy.safetensors", "pt") as f:
        assert f.metadata()["ss_flip_aug"] == "True"
        assert any(f.get_tensor(k).abs().sum() > 0 for k in f.keys() if k.endswith("lora_up.weight"))


def test_a_process_that_is_not_the_main_one_writes_no_file_and_no_log(tiny_sd1, tmp_path, monkeypatch):
    monkeypatch.setattr(Accelerator, "is_main_process", property(lambda self: False))
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    out, logs = tmp_path / "out", tmp_path / "logs"
    flags = train_flags(tiny_sd1, tree, out, "--max_train_epochs", "1", "--logging_dir", str(logs), reg=False)
    assert main(flags) == 0
    assert not out.exists() and not logs.exists()


def test_the_base_model_is_hashed_once_per_run(tiny_sd1, tmp_path, monkeypatch):
    calls = []

    def counting(hash_function):
        def counted(path):
            calls.append(hash_function.__name__)
            return hash_function(path)

        return counted

    monkeypatch.setattr(metadata, "file_sha256", counting(metadata.file_sha256))
    monkeypatch.setattr(metadata, "file_legacy_hash", counting(metadata.file_legacy_hash))
    tree = make_kohya_dataset(tmp_path / "data", reg_count=0)
    out = tmp_path / "out"
    flags = train_flags(tiny_sd1, tree, out, "--max_train_epochs", "3", "--train_batch_size", "4", reg=False)
    assert main(flags) == 0
    files = sorted(out.glob("*.safetensors"))
    assert [f.name for f in files] == ["toy-000001.safetensors", "toy-000002.safetensors", "toy.safetensors"]
    assert sorted(calls) == ["file_legacy_hash", "file_sha256"]
    hashes = set()
    for file in files:
        with safe_open(file, "pt") as f:
            hashes.add(f.metadata()["ss_new_sd_model_hash"])
    assert len(hashes) == 1 and len(hashes.pop()) == 64
