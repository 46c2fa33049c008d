"""Which modules get an adapter (networks/target_selection.py): kohya's own targets unchanged, LyCORIS'
presets selecting what LyCORIS' own network builder selects on the same tiny models, kohya's
exclude/include pattern rule, train_norm's norm layers, and the one-line refusals."""

import logging
from functools import cache

import pytest
import torch
from diffusers import Transformer2DModel
from lycoris.config import PRESET
from lycoris.kohya import LycorisNetworkKohya
from lycoris.utils.preset import read_preset
from torch import nn

from loracraft.errors import UserError
from loracraft.networks.algorithms import AdapterKind
from loracraft.networks.kohya_names import text_encoder_prefixes
from loracraft.networks.network_spec import PRESETS, NetworkSpec
from loracraft.networks.target_selection import (
    BUILTIN_PRESETS,
    TargetChoice,
    is_norm,
    norm_adapter,
    read_preset_file,
    text_encoder_targets_for,
    unet_targets_for,
)
from loracraft.networks.targets import CONV_BLOCKS, text_encoder_targets, unet_targets
from model_helpers import tiny_family_modules

FAMILIES = ("sd1", "sd2", "sdxl")
LORA = NetworkSpec(module="networks.lora", algo="lora")
# LyCORIS' class attributes that its presets set (LycorisNetworkKohya.apply_preset).
PRESET_ATTRIBUTES = {
    "enable_conv": "ENABLE_CONV",
    "unet_target_module": "UNET_TARGET_REPLACE_MODULE",
    "unet_target_name": "UNET_TARGET_REPLACE_NAME",
    "text_encoder_target_module": "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    "text_encoder_target_name": "TEXT_ENCODER_TARGET_REPLACE_NAME",
    "use_fnmatch": "USE_FNMATCH",
}


@cache
def modules(family: str):
    """The family's tiny U-Net and text encoders; nothing here changes them (adapters are not applied)."""
    return tiny_family_modules(family)


def lycoris_spec(preset: str = "full", train_norm: bool = False, algo: str = "locon") -> NetworkSpec:
    return NetworkSpec(module="lycoris.kohya", algo=algo, preset=preset, train_norm=train_norm)


def our_paths(family: str, choice: TargetChoice, trains_convolutions: bool = False) -> dict[str, list[str]]:
    unet, text_encoders = modules(family)
    paths = {"unet": [t.path for t in unet_targets_for(unet, family, choice, trains_convolutions)]}
    for index, (model, prefix) in enumerate(zip(text_encoders, text_encoder_prefixes(family), strict=True)):
        paths[f"te{index}"] = [t.path for t in text_encoder_targets_for(model, prefix, choice)]
    return paths


def lycoris_paths(family: str, preset: dict, train_norm: bool, monkeypatch) -> dict[str, list[str]]:
    """The module paths LyCORIS' own LycorisNetworkKohya gives adapters, in its order, with `preset`
    applied the way apply_preset does (class attributes, restored after the test)."""
    unet, text_encoders = modules(family)
    for key, attribute in PRESET_ATTRIBUTES.items():
        if key in preset:
            monkeypatch.setattr(LycorisNetworkKohya, attribute, preset[key])
    logging.disable(logging.WARNING)  # its "no modules matched" notes for other models' classes
    try:
        network = LycorisNetworkKohya(
            text_encoders if family == "sdxl" else text_encoders[0],
            unet,
            lora_dim=4,
            conv_lora_dim=4,
            alpha=1,
            conv_alpha=1,
            network_module="locon",
            train_norm=train_norm,
        )
    finally:
        logging.disable(logging.NOTSET)
    path_of = {id(module): ("unet", path) for path, module in unet.named_modules()}
    for index, model in enumerate(text_encoders):
        path_of |= {id(module): (f"te{index}", path) for path, module in model.named_modules()}
    paths: dict[str, list[str]] = {"unet": [], **{f"te{i}": [] for i in range(len(text_encoders))}}
    for adapter in network.text_encoder_loras + network.unet_loras:
        model, path = path_of[id(adapter.org_module[0])]
        paths[model].append(path)
    return paths


def lycoris_preset_on_diffusers(name: str) -> dict:
    """LyCORIS' installed preset with the two differences target_selection documents: LyCORIS 4's
    TimestepEmbedding container (Anima's; on SD it selects time_embedding twice and its create_network
    stops) is left out, and kohya's attention class CrossAttention is diffusers' Attention."""
    preset = {key: list(value) if isinstance(value, list) else value for key, value in PRESET[name].items()}
    classes = [c for c in preset["unet_target_module"] if c != "TimestepEmbedding"]
    preset["unet_target_module"] = classes + (["Attention"] if "CrossAttention" in classes else [])
    return preset


def test_kohya_lora_targets_are_todays(monkeypatch):
    for family in FAMILIES:
        unet, text_encoders = modules(family)
        choice = TargetChoice.of(LORA)
        assert unet_targets_for(unet, family, choice, False) == unet_targets(unet, family)
        with_conv = unet_targets(unet, family, (Transformer2DModel, *CONV_BLOCKS))
        assert unet_targets_for(unet, family, choice, True) == with_conv
        for model, prefix in zip(text_encoders, text_encoder_prefixes(family), strict=True):
            assert text_encoder_targets_for(model, prefix, choice) == text_encoder_targets(model, prefix)
    dylora = NetworkSpec(module="networks.dylora", algo="dylora")
    assert our_paths("sd1", TargetChoice.of(dylora)) == our_paths("sd1", TargetChoice.of(LORA))


def test_builtin_presets_are_lycoris_presets_restricted_to_sd_classes():
    assert tuple(BUILTIN_PRESETS) == PRESETS
    for name, ours in BUILTIN_PRESETS.items():
        theirs = PRESET[name]
        assert ours.enable_conv == theirs["enable_conv"]
        assert list(ours.unet_target_name) == theirs["unet_target_name"]
        assert list(ours.text_encoder_target_name) == theirs["text_encoder_target_name"]
        assert set(ours.unet_target_module) <= set(theirs["unet_target_module"])
        assert set(ours.text_encoder_target_module) <= set(theirs["text_encoder_target_module"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_selects_what_lycoris_selects(family, preset, monkeypatch):
    train_norm = preset in ("full", "unet-convblock-only", "attn-mlp")
    expected = lycoris_paths(family, lycoris_preset_on_diffusers(preset), train_norm, monkeypatch)
    assert our_paths(family, TargetChoice.of(lycoris_spec(preset, train_norm))) == expected


def test_preset_full_adds_the_named_modules_and_every_resnet():
    unet, _ = modules("sdxl")
    targets = unet_targets_for(unet, "sdxl", TargetChoice.of(lycoris_spec()), False)
    names = {t.name for t in targets}
    # conv_in, time_embed.0/.2, out.2 under kohya's SDXL (LDM) names; SDXL's add_embedding is not a target.
    assert {
        "lora_unet_input_blocks_0_0",
        "lora_unet_time_embed_0",
        "lora_unet_time_embed_2",
        "lora_unet_out_2",
    } <= names
    assert not any(name.startswith("lora_unet_label_emb") for name in names)
    assert "lora_unet_input_blocks_1_0_in_layers_2" in names  # a ResNet's 3x3 conv: enable_conv in full
    lin = unet_targets_for(unet, "sdxl", TargetChoice.of(lycoris_spec("full-lin")), True)
    assert not any(isinstance(t.module, nn.Conv2d) and t.module.kernel_size != (1, 1) for t in lin)


def test_glora_trains_the_transformer_blocks_only():
    glora = our_paths("sd1", TargetChoice.of(lycoris_spec("full", algo="glora")))
    assert glora == our_paths("sd1", TargetChoice.of(lycoris_spec("attn-mlp")))


def test_train_norm_picks_the_norms_inside_the_chosen_blocks():
    unet, _ = modules("sd1")
    targets = unet_targets_for(unet, "sd1", TargetChoice.of(lycoris_spec(train_norm=True)), False)
    norms = [t for t in targets if is_norm(t.module)]
    inside = {
        path
        for path, module in unet.named_modules()
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and path != "conv_norm_out"
    }
    assert {t.path for t in norms} == inside
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm1" in {t.name for t in norms}
    plain = unet_targets_for(unet, "sd1", TargetChoice.of(lycoris_spec()), False)
    assert [t for t in targets if not is_norm(t.module)] == plain
    sdxl_unet, _ = modules("sdxl")
    sdxl = unet_targets_for(sdxl_unet, "sdxl", TargetChoice.of(lycoris_spec(train_norm=True)), False)
    assert "lora_unet_input_blocks_4_0_in_layers_0" in {t.name for t in sdxl if is_norm(t.module)}


def test_norm_adapter_starts_at_the_layer_and_trains_weight_and_bias():
    layer = nn.LayerNorm(8)
    x = torch.randn(2, 3, 8)
    before = layer(x)
    adapter = norm_adapter(AdapterKind("loha", multiplier=0.5), "lora_unet_x_norm1", layer)
    assert {part: tuple(t.shape) for part, t in adapter.state_dict().items()} == {
        "w_norm": (8,),
        "b_norm": (8,),
    }
    adapter.apply_to()
    torch.testing.assert_close(layer(x), before)
    with torch.no_grad():
        adapter.w_norm.fill_(0.2)
    expected = nn.functional.layer_norm(x, (8,), layer.weight + 0.1, layer.bias)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError):
        norm_adapter(AdapterKind("locon"), "lora_unet_conv_in", nn.Conv2d(4, 4, 3))


def exclude(*patterns: str, include: tuple[str, ...] = ()) -> TargetChoice:
    return TargetChoice.of(
        NetworkSpec(module="networks.lora", algo="lora", exclude_patterns=patterns, include_patterns=include)
    )


def target_module(*names: str) -> TargetChoice:
    return TargetChoice.of(NetworkSpec(module="networks.lora", algo="lora", target_module=names))


def test_patterns_match_the_whole_dotted_path_in_kohyas_model():
    everything = our_paths("sd1", TargetChoice.of(LORA))
    no_attn2 = our_paths("sd1", exclude(".*attn2.*"))
    assert no_attn2["unet"] == [p for p in everything["unet"] if ".attn2." not in p]
    assert no_attn2["te0"] == everything["te0"]
    back = our_paths("sd1", exclude(".*attn2.*", include=(r".*attn2\.to_k",)))
    assert back["unet"] == [p for p in everything["unet"] if ".attn2." not in p or p.endswith("attn2.to_k")]
    # kohya matches the module path with dots, in full: a lora-name spelling or a bare word drops nothing.
    assert our_paths("sd1", exclude(".*attn2_to_k")) == everything
    assert our_paths("sd1", exclude("attn2")) == everything
    # kohya's own example (docs/anima_train_network.md): the text encoders' MLPs, by their kohya path.
    no_mlp = our_paths("sd1", exclude(".*mlp.*"))
    assert no_mlp["te0"] == [p for p in everything["te0"] if ".mlp." not in p] != everything["te0"]
    first_layer = our_paths("sd1", exclude(r"text_model\.encoder\.layers\.0\..*"))
    assert first_layer["te0"] == [p for p in everything["te0"] if ".layers.0." not in p]


def test_sdxl_patterns_match_kohyas_ldm_paths():
    everything = our_paths("sdxl", TargetChoice.of(LORA))
    assert our_paths("sdxl", exclude(r"down_blocks\.1\.attentions\.0\..*")) == everything
    excluded = our_paths("sdxl", exclude(r"input_blocks\.4\.1\..*"))["unet"]
    assert excluded == [p for p in everything["unet"] if not p.startswith("down_blocks.1.attentions.0.")]
    assert len(excluded) < len(everything["unet"])


def test_target_module_replaces_the_containers():
    choice = target_module("ResnetBlock2D", "CLIPAttention")
    unet, _ = modules("sd1")
    without_conv = unet_targets_for(unet, "sd1", choice, False)
    assert without_conv and all(".resnets." in t.path for t in without_conv)
    assert not any(isinstance(t.module, nn.Conv2d) and t.module.kernel_size != (1, 1) for t in without_conv)
    assert len(unet_targets_for(unet, "sd1", choice, True)) > len(without_conv)
    assert all(".self_attn." in path for path in our_paths("sd1", choice)["te0"])
    attention = target_module("CrossAttention")
    attention_paths = our_paths("sd1", attention)["unet"]
    assert attention_paths and all(".attn1." in p or ".attn2." in p for p in attention_paths)
    assert our_paths("sd1", attention)["te0"] == []


def write(tmp_path, text: str):
    path = tmp_path / "preset.toml"
    path.write_text(text)
    return path


def test_a_preset_file_selects_what_lycoris_reads_from_it(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        'enable_conv = true\nunet_target_module = ["Transformer2DModel"]\n'
        'unet_target_name = ["conv_in", "down_blocks.0.resnets.*"]\nuse_fnmatch = true\n'
        'text_encoder_target_module = ["CLIPMLP"]\nmodule_algo_map = {}\n',
    )
    expected = lycoris_paths("sd1", read_preset(str(path)), False, monkeypatch)
    spec = NetworkSpec(module="lycoris.kohya", algo="locon", preset=str(path))
    assert our_paths("sd1", TargetChoice.of(spec)) == expected
    assert "conv_in" in expected["unet"] and "down_blocks.0.resnets.0.time_emb_proj" in expected["unet"]


def test_a_preset_file_names_modules_by_kohyas_sdxl_path_too(tmp_path):
    path = write(tmp_path, 'unet_target_module = []\nunet_target_name = ["input_blocks.0.0", "out.2"]\n')
    choice = TargetChoice.of(NetworkSpec(module="lycoris.kohya", algo="locon", preset=str(path)))
    unet, _ = modules("sdxl")
    assert [t.path for t in unet_targets_for(unet, "sdxl", choice, False)] == ["conv_in", "conv_out"]


def test_exclude_name_in_a_preset_file(tmp_path):
    path = write(tmp_path, 'exclude_name = ["up_blocks", "time_embedding"]\n')
    choice = TargetChoice.of(NetworkSpec(module="lycoris.kohya", algo="locon", preset=str(path)))
    unet_paths = our_paths("sd1", choice)["unet"]
    full = our_paths("sd1", TargetChoice.of(lycoris_spec()))["unet"]
    assert unet_paths == [p for p in full if not p.startswith(("up_blocks", "time_embedding"))]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (NetworkSpec(module="networks.lora", algo="lora", exclude_patterns=("[attn",)), "exclude_patterns:"),
        (NetworkSpec(module="networks.lora", algo="lora", include_patterns=(".*",)), "include_patterns:"),
        (lycoris_spec("ful"), "did you mean full"),
        (lycoris_spec("missing.toml"), "missing.toml is not a file"),
    ],
)
def test_bad_choices_are_one_line(spec, message):
    with pytest.raises(UserError, match=message) as raised:
        TargetChoice.of(spec)
    assert "--network_args" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unet_target_module = [", "cannot be read as TOML"),
        ("unet_target_modul = []", "unknown key 'unet_target_modul' .did you mean unet_target_module"),
        ('target_module = ["Transformer2DModel"]', "create_lycoris, not by lycoris.kohya"),
        ('[module_algo_map.Attention]\nalgo = "lokr"', "module_algo_map"),
        ('unet_target_module = "Transformer2DModel"', "must be a list of strings"),
        ('enable_conv = "yes"', "must be true or false"),
        ('unet_target_name = ["conv_in("]', "is not a regular expression"),
    ],
)
def test_bad_preset_files_are_one_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as raised:
        read_preset_file(path)
    assert str(raised.value).startswith("--network_args preset:") and "\n" not in str(raised.value)


def test_an_unknown_target_module_class_is_one_line():
    unet, text_encoders = modules("sd1")
    with pytest.raises(UserError, match="class Transformer2D .*did you mean Transformer2DModel"):
        unet_targets_for(unet, "sd1", target_module("Transformer2D"), False)
    # Trained alone, the text encoders check the CLIP names and leave the U-Net's to the U-Net.
    with pytest.raises(UserError, match="CLIPEncoder .*did you mean CLIPEncoderLayer"):
        text_encoder_targets_for(text_encoders[0], "lora_te", target_module("CLIPEncoder"))
    assert text_encoder_targets_for(text_encoders[0], "lora_te", target_module("Transformer2D")) == []
