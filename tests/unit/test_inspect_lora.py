"""`loracraft inspect` on files built here with known ranks, alphas, metadata, zeros and NaNs: each
reported figure is compared with the value the file was built with (kohya's block numbering, the
LoRA formula and kohya's hash recipe restated here), the consumer verdicts with those a run prints for
the same network, and every bad input is one line that leaves the files as they were."""

import hashlib
import json
import math

import pytest
import safetensors.torch
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from loracraft.config.load import build_config
from loracraft.networks.algorithms import AdapterKind, adapter_kind
from loracraft.networks.consumers import consumer_verdicts
from loracraft.networks.kohya_oft import build_kohya_oft_network
from loracraft.networks.lora_file import save_lora_file
from loracraft.networks.lora_health import unused_layers
from loracraft.networks.lora_network import build_lora_network
from loracraft.networks.network_spec import network_spec
from loracraft.networks.target_selection import TargetChoice
from loracraft.networks.training_record import Bucket, Folder, training_record
from loracraft.tools.inspect_lora import (
    FLUSHED_ADVICE,
    NON_FINITE_ADVICE,
    UNDERFLOW_ADVICE,
    ZERO_ALPHA_ADVICE,
    main,
)
from model_helpers import tiny_family_modules

RANK, ALPHA, CONV_RANK, CONV_ALPHA = 8, 4.0, 4, 1.0
TE_LAST = "lora_te_text_model_encoder_layers_1_"  # the tiny text encoder has 2 layers
METADATA = {
    "ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "4.0",
    "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "1"}), "ss_learning_rate": "0.0001",
    "ss_unet_lr": "0.0001", "ss_text_encoder_lr": "5e-05", "ss_lr_scheduler": "cosine",
    "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1)", "ss_lr_warmup_steps": "0",
    "ss_max_train_steps": "1600", "ss_steps": "1600", "ss_epoch": "10", "ss_num_epochs": "10",
    "ss_num_train_images": "300", "ss_num_reg_images": "100", "ss_total_batch_size": "2",
    "ss_resolution": "(512, 512)", "ss_clip_skip": "None", "ss_mixed_precision": "fp16", "ss_seed": "42",
    "ss_sd_model_name": "v1-5-pruned.safetensors", "ss_sd_model_hash": "00112233",
    "ss_base_model_version": "sd_v1", "ss_training_started_at": "1700000000.0",
    "ss_dataset_dirs": json.dumps({"10_mychar": {"n_repeats": 10, "img_count": 25},
                                   "5_style": {"n_repeats": 5, "img_count": 10}}),
    "ss_reg_dataset_dirs": json.dumps({"1_person": {"n_repeats": 1, "img_count": 100}}),
    "ss_tag_frequency": json.dumps({"10_mychar": {"mychar": 25, "1girl": 20, "smile": 7},
                                    "5_style": {"1girl": 4, "outdoors": 10}}),
    "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 512], "count": 200},
                                              "1": {"resolution": [448, 576], "count": 100}},
                                  "mean_img_ar_error": 0.01}),
}  # fmt: skip


def moved(network, seed: int = 0):
    """The network's file after every parameter moved by seeded noise, as training moves it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return network.kohya_state_dict()


@pytest.fixture(scope="module")
def locon():
    """A kohya LoCon on the tiny SD1 model: rank 8 alpha 4, its 3x3 convolutions rank 4 alpha 1."""
    unet, text_encoders = tiny_family_modules("sd1")
    return moved(
        build_lora_network(unet, text_encoders, "sd1", RANK, ALPHA, conv_dim=CONV_RANK, conv_alpha=CONV_ALPHA)
    )


def inspect_json(*paths, options=()) -> tuple[int, list[dict]]:
    lines = []
    code = main([*map(str, paths), "--json", *options], echo=lines.append)
    return code, json.loads("\n".join(lines), parse_constant=pytest.fail)["files"]


def inspect_text(*paths, options=()) -> tuple[int, list[str]]:
    lines = []
    return main([*map(str, paths), *options], echo=lines.append), lines


def save(path, state, metadata=METADATA):
    save_lora_file(state, path, metadata)
    return path


def delta_norm(state, name) -> float:
    """Frobenius norm of (alpha / rank) up @ down, kohya's formula restated."""
    up, down = state[f"{name}.lora_up.weight"], state[f"{name}.lora_down.weight"]
    return float((up.flatten(1) @ down.flatten(1)).norm() * float(state[f"{name}.alpha"]) / down.shape[0])


def names(state):
    return sorted({key.split(".")[0] for key in state})


def test_a_kohya_files_figures_are_those_it_was_built_with(locon, tmp_path):
    code, (report,) = inspect_json(save(tmp_path / "locon.safetensors", locon))
    assert code == 0 and report["error"] is None
    modules = names(locon)
    assert (report["key_style"], report["types"], report["family"]) == (
        "kohya",
        {"lora": len(modules)},
        "sd1",
    )
    assert report["family_evidence"] == ["names", "shapes", "metadata"]
    # kohya's SD1 block IN01 is down_blocks.0's first ResNet and first attention
    in01 = [
        name
        for name in modules
        if name.startswith(("lora_unet_down_blocks_0_resnets_0_", "lora_unet_down_blocks_0_attentions_0_"))
    ]
    convs = [name for name in in01 if locon[f"{name}.lora_down.weight"].shape[2:] == (3, 3)]
    block = next(row for row in report["blocks"] if row["block"] == "IN01")
    assert block["modules"] == len(in01) and len(convs) == 2
    assert block["ranks"] == {"4": 2, "8": len(in01) - 2} and block["alphas"] == {"1": 2, "4": len(in01) - 2}
    assert block["norm"] == pytest.approx(
        math.sqrt(sum(delta_norm(locon, name) ** 2 for name in in01)), rel=1e-5
    )
    rows = {row["name"]: row for row in report["modules"]}
    assert (rows[convs[0]]["rank"], rows[convs[0]]["alpha"]) == (CONV_RANK, CONV_ALPHA)
    assert rows[in01[-1]]["norm"] == pytest.approx(delta_norm(locon, in01[-1]), rel=1e-5)
    te = next(row for row in report["blocks"] if row["block"] == "TE")
    assert te["modules"] == 12 and te["ranks"] == {"8": 12}
    training = report["training"]
    assert (
        training["steps"],
        training["num_epochs"],
        training["learning_rate"],
        training["text_encoder_lr"],
    ) == (1600, 10, 1e-4, 5e-5)
    assert training["optimizer"] == METADATA["ss_optimizer"] and training["resolution"] == [512, 512]
    assert training["network_args"] == {"conv_dim": "4", "conv_alpha": "1"} and training["clip_skip"] is None
    assert training["base_model_hash"] == "00112233"
    assert report["dataset"]["tags"] == [
        {"tag": "mychar", "count": 25}, {"tag": "1girl", "count": 24}, {"tag": "outdoors", "count": 10},
        {"tag": "smile", "count": 7},
    ]  # fmt: skip
    assert [(f["name"], f["repeats"], f["images"], f["regularization"]) for f in report["dataset"]["folders"]] == [
        ("10_mychar", 10, 25, False), ("5_style", 5, 10, False), ("1_person", 1, 100, True)
    ]  # fmt: skip
    assert [(b["width"], b["height"], b["count"]) for b in report["dataset"]["buckets"]] == [
        (512, 512, 200), (448, 576, 100)
    ]  # fmt: skip
    assert report["health"] == {"unchanged": [], "zero_alpha": [], "zero_values": [], "non_finite": []}
    assert {key: check["status"] for key, check in report["hashes"].items()} == {
        "sshs_model_hash": "match", "sshs_legacy_hash": "match"
    }  # fmt: skip
    assert report["consumers"] == {"AUTOMATIC1111": None, "ComfyUI": None, "Forge": None, "diffusers": None}


def test_the_words_say_the_same_figures(locon, tmp_path):
    path = save(tmp_path / "locon.safetensors", locon)
    code, lines = inspect_text(path, options=["--top_tags", "2"])
    text = "\n".join(lines)
    linear = sum(1 for name in names(locon) if locon[f"{name}.lora_down.weight"].shape[2:] != (3, 3))
    convs = len(names(locon)) - linear
    assert code == 0 and lines[0] == str(path)
    assert (
        f"  rank and alpha: ranks 8 ({linear} modules), 4 ({convs} modules); alphas 4 ({linear} modules), 1 "
        in text
    )
    assert "  tags (2 of 4, with counts): mychar 25, 1girl 24" in lines
    assert "  dataset folders: 10_mychar (10 repeats x 25 images); 5_style (5 repeats x 10 images); " in text
    assert "  buckets (samples per resolution): 512x512: 200, 448x576: 100" in lines
    assert "  hashes: sshs_model_hash match; sshs_legacy_hash match" in lines
    assert "  consumers: loads as trained in: AUTOMATIC1111, ComfyUI, Forge, diffusers" in lines
    assert "  health: every module changes its layer; no NaN or Inf" in lines


def test_zeroed_layers_after_fp16_training_are_named_with_what_it_means(locon, tmp_path):
    state = {key: tensor.clone() for key, tensor in locon.items()}
    zeroed = [name for name in names(state) if name.startswith("lora_unet_up_blocks_3_attentions_")][:3]
    for name in zeroed:
        state[f"{name}.lora_up.weight"].zero_()
    flushed = "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"
    values = state[flushed].flatten()
    values[: values.numel() // 5] = 0.0  # a fifth of the values below fp16's smallest
    state = {key: tensor.half() if "alpha" not in key else tensor for key, tensor in state.items()}
    path = save(tmp_path / "fp16.safetensors", state)
    _, (report,) = inspect_json(path)
    assert report["health"]["unchanged"] == [
        {"module": name, "why": "lora_up all zero", "by_design": None} for name in zeroed
    ]
    (zeros,) = report["health"]["zero_values"]
    assert (zeros["key"], zeros["zeros"], zeros["size"]) == (flushed, values.numel() // 5, values.numel())
    assert sum(row["unchanged"] for row in report["blocks"]) == 3
    _, lines = inspect_text(path)
    health = [line for line in lines if line.startswith("  health: ")]
    assert (
        health[0]
        == f"  health: 3 modules change nothing (lora_up all zero): {', '.join(zeroed)}; {UNDERFLOW_ADVICE}"
    )
    fraction = (values.numel() // 5) / values.numel()
    assert (
        health[1]
        == f"  health: 1 tensors have values exactly 0.0: {flushed} {fraction:.1%}; {FLUSHED_ADVICE}"
    )


def test_nan_and_inf_say_the_file_is_not_to_be_used(locon, tmp_path):
    state = {key: tensor.clone() for key, tensor in locon.items()}
    bad, worse = "lora_unet_mid_block_attentions_0_proj_out", "lora_te_text_model_encoder_layers_0_mlp_fc1"
    state[f"{bad}.lora_up.weight"][0, 0] = float("nan")
    state[f"{worse}.lora_down.weight"][:2, 0] = float("inf")
    path = save(tmp_path / "nan.safetensors", state)
    _, (report,) = inspect_json(path)  # strict JSON: parse_constant fails on NaN
    assert report["health"]["non_finite"] == [  # by key
        {"key": f"{worse}.lora_down.weight", "nan": 0, "inf": 2},
        {"key": f"{bad}.lora_up.weight", "nan": 1, "inf": 0},
    ]
    assert next(row for row in report["modules"] if row["name"] == bad)["norm"] is None
    _, lines = inspect_text(path)
    listed = f"{worse}.lora_down.weight (0 NaN, 2 Inf), {bad}.lora_up.weight (1 NaN, 0 Inf)"
    assert f"  health: 2 tensors hold NaN or Inf: {listed}; {NON_FINITE_ADVICE}" in lines


@pytest.mark.parametrize(("clip_skip", "by_design"), [("2", True), ("None", False)])
def test_with_clip_skip_2_the_last_text_encoder_layer_is_zero_by_design(
    locon, tmp_path, clip_skip, by_design
):
    state = {key: tensor.clone() for key, tensor in locon.items()}
    last = [name for name in names(state) if name.startswith(TE_LAST)]
    for name in last:
        state[f"{name}.lora_up.weight"].zero_()
    path = save(tmp_path / "skip.safetensors", state, {**METADATA, "ss_clip_skip": clip_skip})
    _, (report,) = inspect_json(path)
    why = "clip_skip 2: the U-Net never sees the text encoder's last layer" if by_design else None
    assert report["health"]["unchanged"] == [
        {"module": name, "why": "lora_up all zero", "by_design": why} for name in last
    ]
    _, lines = inspect_text(path)
    if by_design:
        assert (
            f"  health: 6 modules change nothing by design ({why}, so they got no gradient): "
            in "\n".join(lines)
        )
        assert not any(UNDERFLOW_ADVICE in line for line in lines)
    else:
        assert any(
            line.startswith("  health: 6 modules change nothing (lora_up all zero)")
            and UNDERFLOW_ADVICE in line
            for line in lines
        )


def test_sdxl_never_trains_its_first_text_encoders_last_layer():
    layers = [f"lora_te{te}_text_model_encoder_layers_{i}_mlp_fc1" for te in (1, 2) for i in (0, 1)]
    unused = unused_layers(layers, "sdxl", clip_skip=None)
    assert list(unused) == ["lora_te1_text_model_encoder_layers_1_mlp_fc1"]


def test_a_peft_file_is_read_and_a1111_is_said_not_to_read_it(tmp_path):
    unet, _ = tiny_family_modules("sd1")
    torch.manual_seed(0)
    inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False), unet
    )
    path = tmp_path / "peft.safetensors"
    safetensors.torch.save_file(
        {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}, str(path)
    )
    _, (report,) = inspect_json(path)
    assert (report["key_style"], report["types"], report["family"]) == ("peft", {"lora": 64}, "sd1/sd2")
    assert {(row["rank"], row["alpha"]) for row in report["modules"]} == {(4, 4.0)}
    assert report["consumers"]["AUTOMATIC1111"] == "does not read this file's key names"
    assert report["consumers"]["ComfyUI"] is None and report["consumers"]["diffusers"] is None
    assert {check["status"] for check in report["hashes"].values()} == {"absent"}


def test_a_lycoris_loha_file(tmp_path):
    unet, text_encoders = tiny_family_modules("sd1")
    state = moved(build_lora_network(unet, text_encoders, "sd1", 4, 2.0, kind=AdapterKind("loha")))
    _, (report,) = inspect_json(save(tmp_path / "loha.safetensors", state, {}))
    assert report["types"] == {"loha": len(names(state))}
    assert {(row["rank"], row["alpha"], row["norm_of"]) for row in report["modules"]} == {(4, 2.0, "delta")}
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k"
    w1 = state[f"{name}.hada_w1_a"] @ state[f"{name}.hada_w1_b"]
    w2 = state[f"{name}.hada_w2_a"] @ state[f"{name}.hada_w2_b"]
    row = next(row for row in report["modules"] if row["name"] == name)
    assert row["norm"] == pytest.approx(float((w1 * w2).norm()) * 2.0 / 4, rel=1e-5)
    assert report["consumers"]["diffusers"] == "has no loha" and report["consumers"]["AUTOMATIC1111"] is None
    # LoHa's factors are flattened: only the names tell the family, not which of SD1 and SD2
    assert report["training"] == {} and (report["family"], report["family_evidence"]) == (
        "sd1/sd2",
        ["names"],
    )


def test_a_dataset_config_runs_buckets_and_regularization_folders_per_dataset():
    datasets = [  # kohya's ss_datasets of a run with a dataset config (train_network.py)
        {"is_dreambooth": True, "batch_size_per_device": 2, "num_train_images": 60, "resolution": [512, 512],
         "bucket_info": {"buckets": {"0": {"resolution": [512, 512], "count": 40},
                                     "1": {"resolution": [576, 448], "count": 20}}, "mean_img_ar_error": 0.0},
         "subsets": [{"img_count": 6, "num_repeats": 10, "image_dir": "mychar", "is_reg": False},
                     {"img_count": 30, "num_repeats": 1, "image_dir": "person", "is_reg": True}]},
        {"is_dreambooth": True, "num_train_images": 12, "resolution": [768, 768],
         "bucket_info": {"buckets": {"0": {"resolution": [768, 768], "count": 12}}, "mean_img_ar_error": 0.0},
         "subsets": [{"img_count": 12, "num_repeats": 1, "image_dir": "style", "is_reg": False}]},
    ]  # fmt: skip
    dirs = {"mychar": {"n_repeats": 10, "img_count": 6}, "style": {"n_repeats": 1, "img_count": 12}}
    record = training_record({"ss_datasets": json.dumps(datasets), "ss_dataset_dirs": json.dumps(dirs)})
    assert record.folders == (
        Folder("mychar", 10, 6),
        Folder("style", 1, 12),
        Folder("person", 1, 30, regularization=True),
    )
    assert record.buckets == (Bucket(512, 512, 40, 0), Bucket(576, 448, 20, 0), Bucket(768, 768, 12, 1))


def test_alpha_0_parts_of_no_type_and_a_metadata_family_the_tensors_refute(locon, tmp_path):
    state = {key: tensor.clone() for key, tensor in locon.items()}
    state["lora_unet_mid_block_attentions_0_proj_in.alpha"] = torch.tensor(0.0)
    odd = "lora_unet_mid_block_attentions_0_proj_out"
    state[f"{odd}.lora_A.weight"] = state.pop(f"{odd}.lora_down.weight")
    state[f"{odd}.lora_B.weight"] = state.pop(f"{odd}.lora_up.weight")
    path = save(tmp_path / "odd.safetensors", state, {**METADATA, "ss_base_model_version": "sdxl_base_v1-0"})
    _, (report,) = inspect_json(path)
    assert report["types"] == {"lora": len(names(state)) - 1, "unknown": 1}
    assert report["health"]["zero_alpha"] == ["lora_unet_mid_block_attentions_0_proj_in"]
    unknown = f"knows no type for {odd} (alpha, lora_A.weight, lora_B.weight)"
    assert report["consumers"] == dict.fromkeys(["AUTOMATIC1111", "ComfyUI", "Forge", "diffusers"], unknown)
    _, lines = inspect_text(path)
    assert "  note: the metadata says SDXL, but the tensors are for SD1.x" in lines
    assert (
        f"  health: 1 modules have alpha 0: lora_unet_mid_block_attentions_0_proj_in; {ZERO_ALPHA_ADVICE}"
        in lines
    )


def kohya_legacy_hash(tensors, metadata) -> str:
    """kohya's train_util.precalculate_safetensors_hashes: the window at 1 MiB of the file with only ss_*."""
    data = safetensors.torch.save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    return hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]


def test_hashes_match_and_tell_an_edit_after_saving(tmp_path):
    name = "lora_unet_mid_block_attentions_0_proj_in"  # big enough to pass 1 MiB, where the legacy hash looks
    state = {f"{name}.lora_down.weight": torch.randn(8, 40000), f"{name}.lora_up.weight": torch.randn(32, 8),
             f"{name}.alpha": torch.tensor(4.0)}  # fmt: skip
    saved = save(tmp_path / "saved.safetensors", state, {"ss_output_name": "saved"})
    stored = safetensors.safe_open(saved, "pt").metadata()
    edited = tmp_path / "edited.safetensors"
    safetensors.torch.save_file(
        state, str(edited), {**stored, "ss_output_name": "renamed by a metadata editor"}
    )
    changed = tmp_path / "changed.safetensors"
    safetensors.torch.save_file({**state, f"{name}.alpha": torch.tensor(8.0)}, str(changed), stored)
    kohya = tmp_path / "kohya.safetensors"
    kohya_metadata = {"ss_output_name": "kohya", "modelspec.title": "kohya"}
    legacy = kohya_legacy_hash(state, kohya_metadata)
    safetensors.torch.save_file(state, str(kohya), {**kohya_metadata, "sshs_legacy_hash": legacy})
    ckpt = tmp_path / "old.ckpt"
    torch.save(state, ckpt)
    _, reports = inspect_json(saved, edited, changed, kohya, ckpt)
    statuses = [
        {key: (check["status"], check["note"]) for key, check in report["hashes"].items()}
        for report in reports
    ]
    absent = ("absent", "a .ckpt/.pt file has no metadata to store hashes in")
    assert statuses == [
        {"sshs_model_hash": ("match", None), "sshs_legacy_hash": ("match", None)},
        {"sshs_model_hash": ("match", None), "sshs_legacy_hash": ("differ", "the file was edited after saving")},
        {"sshs_model_hash": ("differ", "the tensors were changed after saving"), "sshs_legacy_hash": ("match", None)},
        {"sshs_model_hash": ("absent", None),
         "sshs_legacy_hash": ("match", "as kohya computes it, on the file with only its ss_* metadata")},
        {"sshs_model_hash": absent, "sshs_legacy_hash": absent},
    ]  # fmt: skip
    assert (
        reports[0]["hashes"]["sshs_model_hash"]["computed"]
        == hashlib.sha256(
            saved.read_bytes()[8 + int.from_bytes(saved.read_bytes()[:8], "little") :]
        ).hexdigest()
    )


def test_show_all_keys_lists_each_tensor_as_check_lora_weights_does(tmp_path):
    state = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.tensor([[-1.0, 3.0]]),
             "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.tensor([[0.5], [-0.25]]),
             "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(1.0)}  # fmt: skip
    _, lines = inspect_text(save(tmp_path / "one.safetensors", state, {}), options=["-s"])
    listed = lines[
        lines.index("  keys (3): key,shape,mean(|w|),min(|w|) as check_lora_weights.py prints them") + 1 :
    ]
    assert listed == [
        "    lora_unet_mid_block_attentions_0_proj_in.alpha,(),1.0,1.0",
        "    lora_unet_mid_block_attentions_0_proj_in.lora_down.weight,(1-2),2.0,1.0",
        "    lora_unet_mid_block_attentions_0_proj_in.lora_up.weight,(2-1),0.375,0.25",
    ]


SPECS = {
    "lora": ("networks.lora", []), "kohya-locon": ("networks.lora", ["conv_dim=4"]),
    "locon": ("lycoris.kohya", ["algo=locon"]), "dora": ("lycoris.kohya", ["algo=locon", "dora_wd=True"]),
    "loha": ("lycoris.kohya", ["algo=loha"]), "ia3": ("lycoris.kohya", ["algo=ia3", "preset=attn-mlp"]),
    "diag-oft": ("lycoris.kohya", ["algo=diag-oft", "constraint=1e-4"]), "full": ("lycoris.kohya", ["algo=full"]),
    "kohya-oft": ("networks.oft", []),
}  # fmt: skip


@pytest.mark.parametrize("label", list(SPECS))
def test_the_consumers_of_a_trained_file_are_those_its_run_named(label, tmp_path):
    module, args = SPECS[label]
    flags = {"network_module": module, "network_args": args, "network_dim": 4}
    spec = network_spec(
        build_config({}, {**flags, "network_alpha": 1e-3} if module == "networks.oft" else flags)
    )
    unet, text_encoders = tiny_family_modules("sd1")
    if module == "networks.oft":
        network = build_kohya_oft_network(unet, "sd1", spec, 2)
    else:
        network = build_lora_network(
            unet, text_encoders, "sd1", 4, 2.0, kind=adapter_kind(spec), conv_dim=spec.conv_dim,
            conv_alpha=spec.conv_alpha, choice=TargetChoice.of(spec),
        )  # fmt: skip
    _, (report,) = inspect_json(
        save(tmp_path / "run.safetensors", moved(network), {"ss_base_model_version": "sd_v1"})
    )
    assert report["consumers"] == consumer_verdicts(spec, "sd1")


def truncated(path, source):
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return path


BAD_INPUTS = {
    "not a LoRA": (
        lambda tmp, good, tiny: (
            safetensors.torch.save_file({"embeddings": torch.zeros(2)}, str(tmp / "x.safetensors"))
            or tmp / "x.safetensors"
        ),
        "{path} is not a LoRA: none of its 1 tensors has a LoRA key (e.g. embeddings); give a kohya, LyCORIS or "
        "diffusers/PEFT LoRA file",
    ),
    "a checkpoint": (
        lambda tmp, good, tiny: tiny.single_file,
        "{path} is a Stable Diffusion checkpoint (a model, not a LoRA: it has model.diffusion_model.* or text "
        "encoder keys); give a LoRA file here and the checkpoint as the base model",
    ),
    "a truncated file": (
        lambda tmp, good, tiny: truncated(tmp / "cut.safetensors", good),
        "{path}: not a readable .safetensors file (",
    ),
    "a missing file": (lambda tmp, good, tiny: tmp / "missing.safetensors", "{path}: LoRA file not found"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_file_is_one_line_and_the_others_are_still_inspected(case, locon, tmp_path, tiny_sd1):
    good = save(tmp_path / "good.safetensors", locon)
    make, message = BAD_INPUTS[case]
    bad = make(tmp_path, good, tiny_sd1)
    before = {path: path.read_bytes() for path in tmp_path.iterdir()}
    code, lines = inspect_text(bad, good)
    assert code == 2
    assert lines[0].startswith("error: " + message.format(path=bad))
    assert str(good) in lines and "  hashes: sshs_model_hash match; sshs_legacy_hash match" in lines
    code, reports = inspect_json(good, bad)
    assert code == 2 and reports[0]["error"] is None and reports[1]["path"] == str(bad)
    assert reports[1]["error"].startswith(message.format(path=bad))
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == before
