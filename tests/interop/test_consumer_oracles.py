"""The consumer oracles (tests/consumer_oracles) on hand-made files of every algorithm of lora-format.md §2
(tests/lycoris_files.py): on every linear, conv and norm target of SD1, SD2 and SDXL, each consumer that
applies an algorithm resolves every key to its own module and recognises the algorithm; ComfyUI and
Forge ignore or refuse the ones they lack. The naming tables are pinned by the spec's literal names.
Each consumer's other limits: test_consumer_limits.py; the real network's files: test_lora_key_oracles.py.
"""

import pytest
import torch
from torch import Tensor

from consumer_oracles import CONSUMERS, SUPPORTED, BaseModel, resolve
from lycoris_files import FAMILIES, VARIANTS, diagnosis, lora, lora_file, oft, state_dict_of, tiny


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_key_lands_on_its_module_where_the_algorithm_is_supported(family: str, variant: str) -> None:
    base, _, _ = tiny(family)
    state_dict, names = state_dict_of(family, variant)
    algorithm = VARIANTS[variant][0]
    consumers = [consumer for consumer in CONSUMERS if algorithm in SUPPORTED[consumer]]
    assert consumers
    for consumer in consumers:
        resolution = resolve(consumer, state_dict, base)
        assert resolution.fully_applied, diagnosis(resolution)
        assert {key: resolution.module_of(key) for key in state_dict} == {
            key: names[key.split(".")[0]] for key in state_dict
        }
        assert {resolution.algorithm_of(module) for module in names.values()} == {algorithm}


@pytest.mark.parametrize("family", FAMILIES)
def test_comfyui_reads_no_ia3_and_loads_the_rest(family: str) -> None:
    base, _, _ = tiny(family)
    state_dict, names = state_dict_of(family, "ia3")
    resolution = resolve("comfyui", state_dict, base)
    assert resolution.loads and resolution.unresolved == []
    assert resolution.ignored == dict.fromkeys(state_dict, "ComfyUI never reads it")
    assert {resolution.algorithm_of(module) for module in names.values()} == {None}


@pytest.mark.parametrize("variant", ["ia3", "oft", "boft"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forge_skips_ia3_and_oft_files(family: str, variant: str) -> None:
    """Forge has neither; their parts stay unmatched (an OFT's alpha is read, with no effect), and more
    than 12 unmatched keys make it skip the whole file."""
    base, _, _ = tiny(family)
    state_dict, _ = state_dict_of(family, variant)
    unread = [key for key in state_dict if not key.endswith(".alpha")]
    resolution = resolve("forge", state_dict, base)
    assert resolution.refusal == f"Forge skips the file: {len(unread)} keys unmatched (more than 12)"
    assert {key for key, why in resolution.ignored.items() if why == "Forge never reads it"} == set(unread)


def oft_file(base: BaseModel, modules: int) -> dict[str, Tensor]:
    """OFT on the first `modules` linear targets: two keys Forge never reads per module."""
    _, targets, _ = tiny(base.family)
    names = list(targets["linear"].items())[:modules]
    return {f"{name}.{part}": t for name, module in names for part, t in oft(base.modules[module]).items()}


def test_forge_loads_a_file_with_at_most_12_unmatched_keys() -> None:
    base, _, _ = tiny("sd1")
    assert resolve("forge", oft_file(base, 6), base).loads
    unknown_alpha = {"lora_unet_bogus.alpha": torch.tensor(1.0)}  # counted: no module of that name
    resolution = resolve("forge", oft_file(base, 6) | unknown_alpha, base)
    assert resolution.refusal == "Forge skips the file: 13 keys unmatched (more than 12)"


# ---------------------------------------------------------------- the naming tables, pinned

NAMES = [
    # (family, kohya module name, A1111 layer, ComfyUI weight key)
    (
        "sd1",
        "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k",
        "diffusion_model_input_blocks_5_1_transformer_blocks_0_attn2_to_k",
        "diffusion_model.input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
    ),
    (
        "sd1",
        "lora_unet_up_blocks_0_resnets_2_conv1",
        "diffusion_model_output_blocks_2_0_in_layers_2",
        "diffusion_model.output_blocks.2.0.in_layers.2.weight",
    ),
    (
        "sd1",
        "lora_unet_up_blocks_0_upsamplers_0_conv",
        "diffusion_model_output_blocks_2_1_conv",
        "diffusion_model.output_blocks.2.1.conv.weight",
    ),
    (
        "sd2",
        "lora_unet_down_blocks_0_downsamplers_0_conv",
        "diffusion_model_input_blocks_3_0_op",
        "diffusion_model.input_blocks.3.0.op.weight",
    ),
    (
        "sd2",
        "lora_unet_mid_block_resnets_1_time_emb_proj",
        "diffusion_model_middle_block_2_emb_layers_1",
        "diffusion_model.middle_block.2.emb_layers.1.weight",
    ),
    (
        "sd2",
        "lora_te_text_model_encoder_layers_1_self_attn_k_proj",
        "model_transformer_resblocks_1_attn",
        "clip_h.transformer.text_model.encoder.layers.1.self_attn.k_proj.weight",
    ),
    (
        "sdxl",
        "lora_unet_output_blocks_2_2_conv",
        "diffusion_model_output_blocks_2_2_conv",
        "diffusion_model.output_blocks.2.2.conv.weight",
    ),
    (
        "sdxl",
        "lora_unet_input_blocks_4_0_skip_connection",
        "diffusion_model_input_blocks_4_0_skip_connection",
        "diffusion_model.input_blocks.4.0.skip_connection.weight",
    ),
    (
        "sdxl",
        "lora_unet_input_blocks_1_0_out_layers_3",
        "diffusion_model_input_blocks_1_0_out_layers_3",
        "diffusion_model.input_blocks.1.0.out_layers.3.weight",
    ),
    (
        "sdxl",
        "lora_te1_text_model_encoder_layers_0_self_attn_out_proj",
        "0_transformer_text_model_encoder_layers_0_self_attn_out_proj",
        "clip_l.transformer.text_model.encoder.layers.0.self_attn.out_proj.weight",
    ),
    (
        "sdxl",
        "lora_te2_text_model_encoder_layers_1_mlp_fc1",
        "1_model_transformer_resblocks_1_mlp_c_fc",
        "clip_g.transformer.text_model.encoder.layers.1.mlp.fc1.weight",
    ),
]


@pytest.mark.parametrize(("family", "name", "a1111", "comfyui"), NAMES)
def test_consumer_names_of_kohya_names(family: str, name: str, a1111: str, comfyui: str) -> None:
    base, targets, _ = tiny(family)
    module = {**targets["linear"], **targets["conv"]}[name]
    state_dict = {f"{name}.{p}": t for p, t in lora(base.modules[module]).items()}
    if name.startswith("lora_te"):  # open_clip attention needs its layer's four projections in A1111
        state_dict = lora_file(family)
    for consumer, expected in (("a1111", a1111), ("comfyui", comfyui), ("forge", comfyui)):
        match = resolve(consumer, state_dict, base).by_module[module]
        assert match.consumer_name == expected
