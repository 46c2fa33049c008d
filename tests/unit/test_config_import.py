"""The importers of kohya configs: the kohya_ss GUI's own presets and test configs (tests/data/kohya_ss),
kohya TOML and pasted command lines: every key mapped or ignored, values in the right fields, other kinds of
config refused in one line, and the files `config import` and `train --config_file GUI.json` lead to."""

import json
from pathlib import Path

import pytest

from loracraft.cli import config_from_flags, main
from loracraft.config.importers import import_config, report_lines
from loracraft.config.importers.apply import imported_config
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.networks.network_spec import network_spec

DATA = Path(__file__).parents[1] / "data" / "kohya_ss"
LORA_CONFIGS = [
    "SDXL - LoRA AI_characters standard v1.1.json", "SDXL - LoRA kudou-reira prodigy v4.0.json",
    "sd15 - EDG_LoraOptiSettings.json", "loha-sd15.json", "locon-dadaptation-sdxl.json", "iA3-Prodigy-sd15.json",
    "locon-AdamW8bit.json", "locon-AdamW8bit-toml.json", "SDXL-Standard-Adafactor.json",
    "SDXL-Standard-AdamW8bit.json", "t5clrs.json", "loha-Prodigy.json", "DyLoRA-Adafactor-toml.json",
]  # fmt: skip
REFUSAL = "not a LoRA for SD1.x/SD2.x/SDXL: loracraft trains only those (a kohya_ss GUI LoRA-tab config or train_network.py / sdxl_train_network.py flags)"


@pytest.mark.parametrize("name", LORA_CONFIGS)
def test_every_key_of_a_kohya_ss_config_is_mapped_or_ignored(name):
    data = json.loads((DATA / name).read_text())
    report = import_config(DATA / name)
    # additional_parameters' own flags are reported under it ("additional_parameters: --flag").
    top_level = [key for key in report.keys if ": " not in key]
    assert sorted(set(top_level)) == sorted(data)
    assert all(entry.reason for entry in report.ignored)
    assert report_lines(report)[-1] == f"{len(report.mapped)} keys mapped, {len(report.ignored)} ignored"


LOHA = ["use_tucker=False", "rank_dropout=0", "bypass_mode=False", "dora_wd=False", "module_dropout=0",
        "use_scalar=False", "rank_dropout_scale=False", "algo=loha", "train_norm=False"]  # fmt: skip
# The network each shipped config trains in the kohya_ss GUI: module, algorithm and network args (its order).
NETWORKS = {
    "locon-AdamW8bit.json": (
        "networks.lora", "locon", ["conv_dim=16", "conv_alpha=8", "rank_dropout=0.1", "module_dropout=0.1"]
    ),
    "locon-AdamW8bit-toml.json": ("networks.lora", "lora", []),  # saved with LoRA_type Standard
    "locon-dadaptation-sdxl.json": ("networks.lora", "lora", []),  # Standard too
    "loha-sd15.json": ("lycoris.kohya", "loha", ["preset=full", "conv_dim=8", "conv_alpha=4", *LOHA]),
    "loha-Prodigy.json": ("lycoris.kohya", "loha", ["preset=full", "conv_dim=4", "conv_alpha=4", *LOHA]),
    "iA3-Prodigy-sd15.json": ("lycoris.kohya", "ia3", ["preset=full", "train_on_input=True", "algo=ia3"]),
    "DyLoRA-Adafactor-toml.json": (
        "lycoris.kohya", "dylora",
        ["preset=full", "conv_dim=64", "conv_alpha=64", "block_size=1", "rank_dropout=0", "module_dropout=0",
         "algo=dylora", "train_norm=True"],
    ),
    "t5clrs.json": ("networks.lora", "lora", []),
    "SDXL - LoRA kudou-reira prodigy v4.0.json": ("networks.lora", "lora", []),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_a_kohya_ss_config_trains_the_network_its_lora_type_names(name):
    module, algo, args = NETWORKS[name]
    values = import_config(DATA / name).values
    assert (values["network_module"], values.get("network_args", [])) == (module, args)
    network_values = {key: value for key, value in values.items() if key.startswith("network_")}
    assert network_spec(TrainConfig.model_validate(network_values)).algo == algo


def test_an_sdxl_preset_lands_in_the_right_fields():
    report = import_config(DATA / "SDXL - LoRA AI_characters standard v1.1.json")
    assert report.source_kind.endswith("a kohya_ss GUI LoRA config (SDXL, LoRA_type Standard)")
    config = imported_config(report)
    assert (config.network_dim, config.network_alpha, config.train_batch_size) == (32, 32.0, 3)
    assert (config.learning_rate, config.unet_lr, config.text_encoder_lr) == (3e-5, 3e-5, [3e-5])
    assert config.resolution == (1024, 1024) and config.max_bucket_reso == 2048 and config.enable_bucket
    # "max_train_epochs": "50" and "gradient_accumulation_steps": "1": numbers written as strings.
    assert config.max_train_epochs == 50 and config.gradient_accumulation_steps == 1 and config.clip_skip == 1
    assert config.max_token_length == 75 and config.min_snr_gamma == 5 and config.max_timestep == 1000
    assert (
        config.no_half_vae
        and config.xformers
        and config.gradient_checkpointing
        and config.cache_latents_to_disk
    )
    assert (
        config.optimizer_type == "AdamW"
        and config.mixed_precision == "fp16"
        and config.save_precision == "fp16"
    )
    # "seed": "" and "max_train_steps": "" are unset; noise_offset 0 is off.
    assert config.seed is None and config.max_train_steps == 1600 and config.noise_offset is None
    assert config.training_comment == "3 repeats. More info: https://civitai.com/articles/1771"
    ignored = {entry.key: entry for entry in report.ignored}
    assert ignored["epoch"].reason.startswith("max_train_steps or max_train_epochs sets the length")
    assert ignored["sdxl"].reason == "loracraft tells SDXL from the model file: nothing to set"
    assert ignored["conv_dim"].reason == "LoRA_type Standard does not pass it (1)"
    assert not ignored["conv_dim"].lost
    assert config.network_module == "networks.lora" and config.network_args == []


def test_a_gui_test_config_with_noise_epochs_and_prompts():
    report = import_config(DATA / "locon-AdamW8bit.json")
    values = report.values
    # "epoch": 8 with max_train_steps and max_train_epochs at 0: the GUI trains 8 epochs.
    assert values["max_train_epochs"] == 8 and "max_train_steps" not in values
    # noise_offset_type "Original": noise_offset and adaptive_noise_scale apply, the multires settings do not.
    assert values["noise_offset"] == 0.05 and values["adaptive_noise_scale"] == 0.005
    assert "multires_noise_iterations" not in values
    assert values["optimizer_type"] == "AdamW8bit" and values["ip_noise_gamma"] == 0.1
    assert values["text_encoder_lr"] == [0.0001] and values["sample_every_n_steps"] == 25
    assert report.sample_prompt_text == "a painting of a gas mask , by darius kawasaki"
    # LoRA_type Kohya LoCon: kohya's networks.lora with conv_dim and conv_alpha, and the dropouts set.
    assert values["network_module"] == "networks.lora"
    assert values["network_args"] == ["conv_dim=16", "conv_alpha=8", "rank_dropout=0.1", "module_dropout=0.1"]
    assert values["network_dropout"] == 0.1 and values["scale_weight_norms"] == 1
    lost = {entry.key: entry.reason for entry in report.ignored if entry.lost}
    assert "multires_noise_iterations" not in lost and "num_processes" not in lost
    assert "LoRA_type" not in lost and "network_dropout" not in lost


def test_additional_parameters_are_read_as_flags_that_win():
    report = import_config(DATA / "SDXL - LoRA kudou-reira prodigy v4.0.json")
    mapped = {entry.key: entry for entry in report.mapped}
    assert mapped["additional_parameters: --lr_scheduler_type"].value == "CosineAnnealingLR"
    assert report.values["lr_scheduler_type"] == "CosineAnnealingLR"
    assert (
        report.values["lr_scheduler_args"] == ["T_max=30"]
        and report.values["network_train_unet_only"] is True
    )


def test_legacy_keys_strings_and_empty_values(tmp_path):
    legacy = {
        "LoRA_type": "LoCon", "use_8bit_adam": True, "xformers": True, "use_wandb": "True",
        "lora_network_weights": "old.safetensors", "stop_text_encoder_training_pct": 20,
        "caption_extention": ".txt", "network_dim": "8", "network_alpha": "4", "lr_warmup": "10", "epoch": "3",
        "max_train_steps": "", "max_train_epochs": "0", "text_encoder_lr": "0", "unet_lr": "1e-4", "seed": "",
        "lr_scheduler_num_cycles": "", "optimizer_args": 'weight_decay=0.1 betas="0.9,0.99"', "sdxl": False,
        "sdxl_no_half_vae": True, "noise_offset_type": "Multires", "noise_offset": 0.1,
        "multires_noise_iterations": "6", "multires_noise_discount": 0.3, "some_future_key": 7,
    }  # fmt: skip
    path = tmp_path / "old.json"
    path.write_text(json.dumps(legacy))
    report = import_config(path)
    # "LoCon" is older GUIs' LyCORIS/LoCon; the keys it lacks take the GUI form's defaults.
    assert report.values.pop("network_module") == "lycoris.kohya"
    assert report.values.pop("network_args") == [
        "preset=full", "conv_dim=1", "conv_alpha=1", "use_tucker=False", "rank_dropout=0", "bypass_mode=False",
        "dora_wd=False", "module_dropout=0.0", "use_scalar=False", "rank_dropout_scale=False", "algo=locon",
        "train_norm=False",
    ]  # fmt: skip
    assert report.values == {
        "optimizer_type": "AdamW8bit", "xformers": True, "log_with": "wandb", "network_weights": "old.safetensors",
        "stop_text_encoder_training": "20%", "caption_extension": ".txt", "network_dim": 8, "network_alpha": 4,
        "lr_warmup_steps": "10%", "max_train_epochs": 3, "network_train_unet_only": True, "unet_lr": 0.0001,
        "lr_scheduler_num_cycles": 3, "optimizer_args": ["weight_decay=0.1", "betas=0.9,0.99"],
        "multires_noise_iterations": 6, "multires_noise_discount": 0.3,
    }  # fmt: skip
    ignored = {entry.key: entry for entry in report.ignored}
    assert "LoRA_type" not in ignored
    assert ignored["noise_offset"].reason == "noise_offset_type is Multires: the GUI does not pass it (0.1)"
    assert (
        ignored["sdxl_no_half_vae"].reason
        == "an SDXL setting and sdxl is off: the GUI does not pass it (True)"
    )
    assert (
        ignored["some_future_key"].reason == "unknown to loracraft: 7 is not applied"
        and ignored["some_future_key"].lost
    )
    assert imported_config(report).lr_warmup_steps == 0.1


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("Standard-AdamW.json", "a kohya_ss GUI DreamBooth config (it has no LoRA_type or network_dim)"),
        ("TI-AdamW8bit.json", "a kohya_ss GUI Textual Inversion config"),
        ("finetune-AdamW.json", "a kohya_ss GUI fine-tuning config"),
        ("adafactor.json", "a kohya_ss GUI fine-tuning config"),
        ("flux1D - adamw8bit fp8.json", "a kohya_ss GUI Flux.1 config (flux1_checkbox is on)"),
        ("sd3_bdsqlsz_v1.json", "a kohya_ss GUI SD3 config (sd3_checkbox is on)"),
    ],
)
def test_other_kinds_of_config_are_one_line(name, what):
    with pytest.raises(UserError) as refused:
        import_config(DATA / name)
    assert str(refused.value) == f"{DATA / name} is {what}, {REFUSAL}"


def test_files_that_are_not_training_configs_say_what_they_are():
    with pytest.raises(
        UserError,
        match=r"meta-1_lat.json is a kohya fine-tuning metadata file \(captions per image\), not a training config$",
    ):
        import_config(DATA / "meta-1_lat.json")
    with pytest.raises(
        UserError,
        match=r"dataset.toml is a kohya dataset config: give it to training as --dataset_config .*dataset.toml$",
    ):
        import_config(DATA / "dataset.toml")


def test_a_value_the_run_refuses_is_one_line_naming_the_file():
    report = import_config(DATA / "SDXL-Standard-AdamW8bit.json")  # bucket_reso_steps 1 with buckets on
    with pytest.raises(UserError) as refused:
        imported_config(report)
    assert (
        str(refused.value)
        == f"{DATA / 'SDXL-Standard-AdamW8bit.json'}: --bucket_reso_steps: Input should be a multiple of 32 (got 1)"
    )


def test_a_pasted_multi_line_command():
    text = """accelerate launch --num_cpu_threads_per_process 2 "./sd-scripts/sdxl_train_network.py" \\
      --pretrained_model_name_or_path="/models/my model.safetensors" --network_module networks.lora \\
      --network_dim 32 --network_alpha=16 --text_encoder_lr 1e-5 5e-6 --cache_latents \\
      --network_args "conv_dim=4" --optimizer_args weight_decay=0.01 betas=0.9,0.99 --lr_warmup_steps 10%
    """
    report = import_config(text)
    assert report.source_kind == "the pasted command line: a kohya LoRA command (SDXL, sdxl_train_network.py)"
    config = imported_config(report)
    assert config.pretrained_model_name_or_path == "/models/my model.safetensors"
    assert (config.network_dim, config.network_alpha, config.text_encoder_lr) == (32, 16.0, [1e-5, 5e-6])
    assert config.cache_latents and config.optimizer_args == ["weight_decay=0.01", "betas=0.9,0.99"]
    assert config.lr_warmup_steps == 0.1
    assert (config.network_module, config.network_args) == ("networks.lora", ["conv_dim=4"])
    ignored = {entry.key: entry.reason for entry in report.ignored}
    assert ignored == {
        "--num_cpu_threads_per_process": "an `accelerate launch` option: give it to accelerate launch",
    }


def test_a_windows_command_and_other_scripts():
    text = 'python C:\\kohya\\sd-scripts\\train_network.py ^\n --train_data_dir "C:\\My Images\\img" ^\n --network_dim 8'
    report = import_config(text)
    assert report.values == {"train_data_dir": "C:\\My Images\\img", "network_dim": "8"}
    with pytest.raises(
        UserError, match=r"^the pasted command line is a Flux.1 LoRA config \(network_module "
    ):
        import_config("--network_module networks.lora_flux --network_dim 8")
    with pytest.raises(UserError) as refused:
        import_config("accelerate launch train_db.py --learning_rate 1e-6")
    assert (
        str(refused.value)
        == f"the pasted command line is a DreamBooth (full model) training (train_db.py), {REFUSAL}"
    )


def test_a_kohya_toml_reuses_the_flag_names(tmp_path):
    path = tmp_path / "config_lora.toml"
    path.write_text(
        'network_module = "lycoris.kohya"\nnetwork_dim = 8\nepoch = 3\n[extra]\nlearning_rate = 1e-4\n'
    )
    report = import_config(path)
    assert report.values == {"network_module": "lycoris.kohya", "network_dim": 8, "learning_rate": 1e-4}
    assert [(entry.key, entry.lost) for entry in report.ignored] == [("epoch", False)]
    path.write_text('network_module = "networks.lora_flux"\n')
    with pytest.raises(
        UserError, match=r"is a Flux.1 LoRA config \(network_module networks.lora_flux\), not a LoRA"
    ):
        import_config(path)


def test_config_import_writes_a_toml_train_loads(tmp_path, capsys):
    out = tmp_path / "run.toml"
    assert main(["config", "import", str(DATA / "locon-AdamW8bit.json"), "-o", str(out)]) == 0
    printed = capsys.readouterr().err.splitlines()
    assert (
        f"read {DATA / 'locon-AdamW8bit.json'}: a kohya_ss GUI LoRA config (SD1.x/SD2.x, LoRA_type Kohya LoCon)"
        in printed
    )
    assert sum(line.startswith(("mapped ", "ignored ")) for line in printed) == 158  # every key of the file
    assert (tmp_path / "run.prompts.txt").read_text() == "a painting of a gas mask , by darius kawasaki\n"
    report = import_config(DATA / "locon-AdamW8bit.json")
    report.values["sample_prompts"] = str(tmp_path / "run.prompts.txt")
    assert config_from_flags(["--config_file", str(out)]) == imported_config(report)
    assert main(["config", "import", str(DATA / "locon-AdamW8bit.json"), "-o", str(out)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: -o {out} exists: choose another file or add --force to replace it\n"
    )


def test_train_reads_a_kohya_ss_json_directly(tmp_path, capsys):
    path = tmp_path / "mine.json"
    path.write_text((DATA / "locon-AdamW8bit.json").read_text())
    config = config_from_flags(["--config_file", str(path), "--network_dim", "4"])
    assert (config.network_dim, config.max_train_epochs, config.noise_offset) == (
        4,
        8,
        0.05,
    )  # flags still win
    assert config.sample_prompts == str(tmp_path / "mine.prompts.txt")
    assert config.network_args == ["conv_dim=16", "conv_alpha=8", "rank_dropout=0.1", "module_dropout=0.1"]
    notes = capsys.readouterr().err.splitlines()
    assert not any("LoRA_type" in note for note in notes)
    assert (
        notes[-2]
        == f"note: {path}: 46 other keys ignored (off, or not used by LoRA training); `loracraft config import {path}` lists them"
    )
