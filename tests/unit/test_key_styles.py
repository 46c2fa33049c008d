"""LoRA files in every key style read as kohya modules that make the same change.

The files are written by the libraries that write them for users: PEFT's own LoRA layers on the tiny
models (inject_adapter_in_model, get_peft_model_state_dict), diffusers' save_lora_weights with its
adapter metadata, diffusers' own conversion to its older layer names. Each converted module must make
the change the PEFT layer makes (its get_delta_weight, with PEFT's own scaling), under the name kohya
gives that layer (merge_into_base.base_modules, kohya_names).
"""

import inspect
import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils.state_dict_utils import UNET_TO_DIFFUSERS, StateDictType, convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from loracraft.errors import UserError
from loracraft.networks.initial_weights import InitialWeights
from loracraft.networks.key_styles import detect_style, to_kohya
from loracraft.networks.lora_family import SD, file_family
from loracraft.networks.lora_file import read_lora_file, save_lora_file
from loracraft.networks.lora_input import read_modules
from loracraft.networks.merge_into_base import base_modules, lora_delta
from loracraft.networks.module_delta import module_delta
from model_helpers import tiny_family_modules

RANK = 4
UNET_ALPHA = 8.0
TE_ALPHA = 2.0
UNET_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "conv1",
    "conv2",
    "conv",
    "ff.net.2",
]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


class PeftLoRA:
    """PEFT LoRA layers on a tiny model: each layer by its kohya name, and the state dict per component."""

    def __init__(
        self, family: str, unet_targets=UNET_TARGETS, te_targets=TE_TARGETS, unet_options=(), **options
    ):
        torch.manual_seed(0)
        unet, text_encoders = tiny_family_modules(family)
        kohya_names = {id(module): name for name, module in base_modules(unet, text_encoders, family).items()}
        self.family, self.models = family, dict(zip(COMPONENTS, (unet, *text_encoders), strict=False))
        self.configs = {}
        for component, model in self.models.items():
            unet_part = component == "unet"
            config = LoraConfig(
                r=RANK, lora_alpha=UNET_ALPHA if unet_part else TE_ALPHA, init_lora_weights=False,
                target_modules=unet_targets if unet_part else te_targets, **options,
                **(dict(unet_options) if unet_part else {}),
            )  # fmt: skip
            inject_adapter_in_model(config, model)
            self.configs[component] = config
        self.layers = {
            kohya_names[id(module.base_layer)]: module
            for model in self.models.values()
            for module in model.modules()
            if isinstance(module, LoraLayer)
        }
        self.states = {
            component: get_peft_model_state_dict(model) for component, model in self.models.items()
        }

    def prefixed(self) -> dict[str, torch.Tensor]:
        """The keys as diffusers writes them: `unet.`, `text_encoder.`, `text_encoder_2.` + PEFT's."""
        return {f"{c}.{key}": tensor for c, state in self.states.items() for key, tensor in state.items()}

    def delta(self, name: str) -> torch.Tensor:
        return self.layers[name].get_delta_weight("default").float()

    def scaling(self, name: str) -> float:
        return self.layers[name].scaling["default"]


@pytest.fixture(scope="module")
def sd1():
    return PeftLoRA("sd1")


@pytest.fixture(scope="module")
def sdxl():
    return PeftLoRA("sdxl")


def diffusers_saves_metadata() -> bool:
    return (
        "unet_lora_adapter_metadata"
        in inspect.signature(StableDiffusionPipeline.save_lora_weights).parameters
    )


def saved_by_diffusers(lora: PeftLoRA, folder) -> tuple[dict, dict]:
    """The file diffusers' save_lora_weights writes from the PEFT layers, with each component's config."""
    pipeline = StableDiffusionXLPipeline if lora.family == "sdxl" else StableDiffusionPipeline
    layers, metadata = {}, {}
    for component, argument in zip(COMPONENTS, ("unet", "text_encoder", "text_encoder_2"), strict=False):
        if component in lora.states:
            layers[f"{argument}_lora_layers"] = lora.states[component]
            metadata[f"{argument}_lora_adapter_metadata"] = lora.configs[component].to_dict()
    pipeline.save_lora_weights(folder, **layers, **metadata)
    return read_lora_file(folder / "pytorch_lora_weights.safetensors")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_diffusers_file_makes_each_peft_layers_change_under_kohyas_name(family, request, tmp_path):
    if not diffusers_saves_metadata():
        pytest.skip("this diffusers writes no lora_adapter_metadata (added in 0.34)")
    lora = request.getfixturevalue(family)
    tensors, metadata = saved_by_diffusers(lora, tmp_path)
    modules, style = to_kohya(tensors, metadata)
    assert style == "peft"
    assert set(modules) == set(lora.layers)
    if family == "sdxl":  # LDM names and TE1/TE2, as kohya's SDXL trainer writes them
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in modules
        assert {name[:9] for name in modules if name.startswith("lora_te")} == {"lora_te1_", "lora_te2_"}
    for name, parts in modules.items():
        torch.testing.assert_close(lora_delta(parts), lora.delta(name), rtol=1e-5, atol=1e-6)
    unet_alphas = {float(parts["alpha"]) for name, parts in modules.items() if name.startswith("lora_unet_")}
    assert unet_alphas == {UNET_ALPHA}


def test_without_an_alpha_the_scale_is_1_and_the_alpha_is_written_as_the_rank(sd1):
    modules, style = to_kohya(sd1.prefixed())
    assert style == "peft"
    assert {float(parts["alpha"]) for parts in modules.values()} == {float(RANK)}
    for name in ("lora_unet_mid_block_attentions_0_proj_in", "lora_te_text_model_encoder_layers_1_mlp_fc2"):
        expected = sd1.delta(name) / sd1.scaling(name)
        torch.testing.assert_close(lora_delta(modules[name]), expected, rtol=1e-5, atol=1e-6)


def test_alpha_keys_and_peft_adapter_paths_without_a_component(sd1):
    bare = {f"base_model.model.{key}": tensor for key, tensor in sd1.states["unet"].items()}
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    bare["base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.alpha"] = torch.tensor(
        3.0
    )
    modules, style = to_kohya(bare)
    assert style == "peft-bare"
    assert set(modules) == {n for n in sd1.layers if n.startswith("lora_unet_")}
    assert float(modules[name]["alpha"]) == 3.0
    assert to_kohya(sd1.states["unet"])[0].keys() == modules.keys()


def test_alpha_patterns_and_rank_stabilised_scales_are_peft_own():
    lora = PeftLoRA(
        "sd1", te_targets=["q_proj"], unet_options={"alpha_pattern": {"to_q": 16}}, use_rslora=True
    )
    metadata = {
        "lora_adapter_metadata": json.dumps(
            {f"{component}.{key}": value for component, config in lora.configs.items()
             for key, value in config.to_dict().items() if key in ("r", "lora_alpha", "alpha_pattern", "use_rslora")}
        )
    }  # fmt: skip
    modules, _ = to_kohya(lora.prefixed(), metadata)
    scales = {name: float(parts["alpha"]) / RANK for name, parts in modules.items()}
    assert scales == pytest.approx({name: lora.scaling(name) for name in lora.layers})
    assert len(set(scales.values())) == 3  # to_q, the other U-Net layers, the text encoder


def test_diffusers_older_layer_names_read_as_the_peft_ones(sd1):
    peft = {
        key: tensor
        for key, tensor in sd1.prefixed().items()
        if any(f".{t}.lora_" in key for t in ATTENTION + ["q_proj"])
    }
    expected, _ = to_kohya(peft)
    # diffusers' own conversion to its LoRACompatibleLinear names (to_q.lora.down, q_proj.lora_linear_layer.down)
    newer = convert_state_dict_to_diffusers(peft, original_type=StateDictType.PEFT)
    assert any(".lora.down.weight" in key for key in newer) and any(
        "lora_linear_layer" in key for key in newer
    )
    # the attention processors' names, by diffusers' table (to_q_lora.down <-> to_q.lora_A), under `processor`
    processors = {}
    for key, tensor in peft.items():
        for old, new in UNET_TO_DIFFUSERS.items():
            if key.startswith("unet.") and new + ".weight" in key and old.startswith(".to_"):
                key = key.replace(new, ".processor" + old)
        processors[key] = tensor
    assert any(".processor.to_out_lora.up.weight" in key for key in processors)
    for tensors in (newer, processors):
        modules, style = to_kohya(tensors)
        assert style == "diffusers-old"
        assert modules.keys() == expected.keys()
        for name, parts in modules.items():
            torch.testing.assert_close(lora_delta(parts), lora_delta(expected[name]))


def test_doras_magnitude_becomes_a_per_output_dora_scale_making_peft_merged_change():
    lora = PeftLoRA("sd1", unet_targets=["to_q", "proj_in"], te_targets=["fc1"], use_dora=True)
    with torch.no_grad():  # magnitudes away from the norms they start at, as training moves them
        for layer in lora.layers.values():
            for magnitude in layer.lora_magnitude_vector.parameters():
                magnitude.mul_(torch.rand(magnitude.shape) + 0.5)
    states = {component: get_peft_model_state_dict(model) for component, model in lora.models.items()}
    tensors = {f"{c}.{key}": tensor for c, state in states.items() for key, tensor in state.items()}
    assert any("lora_magnitude_vector" in key for key in tensors)
    modules, _ = to_kohya(tensors, {})
    for name in ("lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn1_to_q",
                 "lora_unet_down_blocks_0_attentions_1_proj_in"):  # fmt: skip
        layer = lora.layers[name]
        weight = layer.base_layer.weight.detach().clone()
        parts = {**modules[name], "alpha": torch.tensor(UNET_ALPHA)}  # the scale PEFT trained at
        assert parts["dora_scale"].shape == (weight.shape[0], *[1] * (weight.dim() - 1))
        layer.merge()
        merged = layer.base_layer.weight.detach() - weight
        torch.testing.assert_close(module_delta(parts, weight, name), merged, rtol=1e-4, atol=1e-5)


def test_a_converted_file_round_trips_through_the_kohya_writer_and_network_weights(sd1, tmp_path):
    modules, _ = to_kohya(sd1.prefixed())
    path = tmp_path / "kohya.safetensors"
    save_lora_file(
        {f"{name}.{part}": t for name, parts in modules.items() for part, t in parts.items()}, path
    )
    again = read_modules(str(path), "network_weights")
    assert detect_style(read_lora_file(path)[0]) == "kohya"
    assert again.keys() == modules.keys()
    for name, parts in modules.items():
        torch.testing.assert_close(again[name], parts)
    peft_file = tmp_path / "peft.safetensors"
    save_file(sd1.prefixed(), str(peft_file))
    weights = InitialWeights.read(str(peft_file), "sd1")  # --network_weights reads a PEFT file as it is
    assert weights.algo == "lora" and weights.rank == RANK and weights.alpha == RANK
    assert weights.modules.keys() == modules.keys()


def test_onetrainers_legacy_sdxl_names_become_kohyas(sdxl):
    kohya, _ = to_kohya(sdxl.prefixed())
    legacy, diffusers_named = {}, 0
    for key, tensor in sdxl.states["unet"].items():
        path, _, part = key.partition(".lora_")
        legacy[
            f"lora_unet_{path.replace('.', '_')}.lora_{part.replace('A.', 'down.').replace('B.', 'up.')}"
        ] = tensor
        diffusers_named += 1
    legacy |= {f"{name}.{part}": t for name, parts in kohya.items() if name.startswith("lora_te")
               for part, t in parts.items() if part != "alpha"}  # fmt: skip
    modules, style = to_kohya(legacy)
    assert diffusers_named and style == "kohya-diffusers-sdxl"
    assert modules.keys() == kohya.keys()
    # the first up block's up-sampler sits after its attention in LDM (index 2), unlike SD1's
    assert "lora_unet_output_blocks_2_2_conv" in modules and "lora_unet_input_blocks_3_0_op" in modules


def test_an_sd1_file_with_diffusers_te1_prefix_gets_kohyas_te_prefix(sd1):
    kohya, _ = to_kohya(sd1.prefixed())
    renamed = {
        f"{name.replace('lora_te_', 'lora_te1_', 1)}.{part}": t
        for name, parts in kohya.items()
        for part, t in parts.items()
    }
    modules, style = to_kohya(renamed)
    assert style == "kohya" and modules.keys() == kohya.keys()


@pytest.mark.parametrize(
    ("family", "expected", "evidence"),
    [("sd1", "sd1", ("names", "shapes")), ("sd2", "sd2", ("names", "shapes")), ("sdxl", "sdxl", ("names",))],
)
def test_the_family_shows_in_names_and_shapes(family, expected, evidence):
    unet, text_encoders = tiny_family_modules(family)
    names = base_modules(unet, text_encoders, family)
    modules = {
        name: {
            "lora_down.weight": torch.zeros(2, *module.weight.shape[1:]),
            "lora_up.weight": torch.zeros(module.weight.shape[0], 2, *[1] * (module.weight.dim() - 2)),
        }
        for name, module in names.items()
        if "attentions" in name or "attn" in name or "lora_te" in name
    }
    found = file_family(modules, {})
    assert (found.family, found.evidence) == (expected, evidence)


@pytest.mark.parametrize(
    ("width", "metadata", "expected", "conflict"),
    [
        (768, {}, "sd1", None),
        (1024, {}, "sd2", None),
        (32, {}, SD, None),
        (32, {"ss_v2": "True"}, "sd2", None),
        (32, {"ss_base_model_version": "sd_v1"}, "sd1", None),
        (32, {"modelspec.architecture": "stable-diffusion-v2-512/lora"}, "sd2", None),
        (
            768,
            {"ss_base_model_version": "sdxl_base_v1-0"},
            "sd1",
            "the metadata says SDXL, but the tensors are for SD1.x",
        ),
    ],
)
def test_sd1_and_sd2_by_the_real_widths_or_the_metadata(width, metadata, expected, conflict):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    modules = {name: {"lora_down.weight": torch.zeros(2, width), "lora_up.weight": torch.zeros(320, 2)}}
    found = file_family(modules, metadata)
    assert (found.family, found.conflict) == (expected, conflict)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            {"model.diffusion_model.out.2.weight": torch.zeros(1), "first_stage_model.x": torch.zeros(1)},
            "is a Stable Diffusion checkpoint (a model, not a LoRA: it has model.diffusion_model.* or text encoder "
            "keys); give a LoRA file here and the checkpoint as the base model",
        ),
        (
            {"foo.bar": torch.zeros(1), "embedding": torch.zeros(1)},
            "is not a LoRA: none of its 2 tensors has a LoRA key (e.g. embedding); give a kohya, LyCORIS or "
            "diffusers/PEFT LoRA file",
        ),
        (
            {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 32)},
            "has lora_unet_down_blocks_0_attentions_0_proj_in without both LoRA matrices (parts: lora_down.weight); "
            "the file is damaged",
        ),
        (
            {"unet.x.lora_A.weight": torch.zeros(2, 4), "unet.x.lora_A.default.weight": torch.zeros(2, 4)},
            "has two tensors for unet module x's lora_down.weight: unet.x.lora_A.default.weight and unet.x.lora_A.weight",
        ),
        (
            {
                "unet.down_blocks.0.lora_A.weight": torch.zeros(2, 4),
                "vae.decoder.lora_A.weight": torch.zeros(2, 4),
            },
            "has a key of no LoRA style loracraft reads: vae.decoder.lora_A.weight; give a kohya, LyCORIS or "
            "diffusers/PEFT file",
        ),
        (
            {"bundle_emb.sks.clip_l": torch.zeros(2, 768)},
            "holds only embeddings (OneTrainer's bundle_emb), no LoRA module",
        ),
    ],
    ids=["checkpoint", "not a LoRA", "half a module", "a part twice", "unknown component", "embeddings only"],
)
def test_what_is_no_lora_is_one_line_naming_the_file(tensors, message, tmp_path):
    with pytest.raises(UserError) as caught:
        to_kohya(tensors)
    assert str(caught.value) == message
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    before = path.read_bytes()
    with pytest.raises(UserError) as caught:
        read_modules(str(path), "network_weights")
    assert str(caught.value) == f"--network_weights {path} {message}"
    assert path.read_bytes() == before
