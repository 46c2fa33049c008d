"""module_delta: the change a module's file parts make to its weight, for every type, against the
independent oracle of what A1111 and ComfyUI apply (tests/consumer_math.py).

Parts come from tests/lycoris_files.py (the shapes LyCORIS writes, on the tiny models' real targets:
attention and feed-forward Linear, 1x1 and 3x3 convolutions, text-encoder Linear), filled with seeded
random values; the weights are random too. Where the consumers differ from what LyCORIS trains (ComfyUI's
OFT cap, A1111's GLoRA layout and DoRA axis), the oracle is the consumer that agrees with training
(tests/interop/test_consumer_numeric.py shows which), or LyCORIS' own module, or the defining property.
"""

import pytest
import torch
from lycoris.modules import GLoRAModule, IA3Module
from torch import Tensor, nn

from consumer_math import delta, delta_weight
from loracraft.networks.module_delta import PartsDoNotFit, module_bias_delta, module_delta, weight_free
from lycoris_files import VARIANTS, first

# (group, name contains): the modules each variant is checked on; SDXL names are LDM paths.
SAMPLES = {
    "attention": ("linear", "attn2_to_k"),
    "feed-forward": ("linear", "ff_net_0"),
    "text encoder": ("linear", "mlp_fc1"),
    "conv 3x3": ("conv", "conv1"),
    "conv 1x1": ("conv", "conv_shortcut"),
    "downsampler": ("conv", "downsamplers"),
}
SDXL_SAMPLES = SAMPLES | {"conv 3x3": ("conv", "in_layers_2")}
WEIGHT_DEPENDENT = {"ia3", "oft", "boft", "glora", "dora"}
TOLERANCE = 1e-5


def randomised(parts: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Every floating part N(0, 0.5²) (a DoRA magnitude or rescale: 1 + N(0, 0.1²)); alpha and on_input kept."""
    generator = torch.Generator().manual_seed(seed)
    filled = {}
    for part, tensor in parts.items():
        if part in ("alpha", "on_input"):
            filled[part] = tensor
        else:
            noise = torch.randn(tensor.shape, generator=generator)
            filled[part] = 1.0 + 0.1 * noise if part in ("dora_scale", "rescale") else 0.5 * noise
    return filled


def case(variant: str, sample: str, family: str = "sd1", seed: int = 0) -> tuple[str, dict, Tensor]:
    group, contains = (SDXL_SAMPLES if family == "sdxl" else SAMPLES)[sample]
    name, module = first(family, group, contains)
    parts = randomised(VARIANTS[variant][1](module), seed)
    weight = torch.randn(module.weight_shape, generator=torch.Generator().manual_seed(seed + 1))
    return name, parts, weight


def assert_close_to(actual: Tensor, expected: Tensor, what: str) -> None:
    assert actual.shape == expected.shape, what
    scale = expected.abs().max().item()
    assert scale > 1e-6, f"{what}: the oracle's change is zero; the comparison would prove nothing"
    error = (actual.double() - expected.double()).abs().max().item() / scale
    assert error <= TOLERANCE, f"{what}: off by {error:.3g} of the change"


# A1111 computes what LyCORIS trains for these (its IA3 and GLoRA differ: tested below); BOFT cannot
# factor the tiny text encoder's width 37.
ORACLE_CASES = [
    (variant, sample)
    for variant in VARIANTS
    if variant not in ("ia3", "glora", "norm")
    for sample in SAMPLES
    if not (variant == "boft" and sample == "text encoder")
]


@pytest.mark.parametrize(("variant", "sample"), ORACLE_CASES)
def test_every_type_changes_the_weight_as_the_consumers_apply_it(variant: str, sample: str) -> None:
    name, parts, weight = case(variant, sample)
    expected = delta_weight(parts, weight, "a1111")
    assert_close_to(module_delta(parts, weight, name), expected.float(), f"{variant} on {name}")


SDXL_CASES = [
    (variant, sample)
    for variant in ("lora", "lora_tucker", "loha", "lokr_tucker", "dora", "boft")
    for sample in ("attention", "conv 3x3", "text encoder")
    if not (variant == "boft" and sample == "text encoder")
]


@pytest.mark.parametrize(("variant", "sample"), SDXL_CASES)
def test_sdxl_modules_too(variant: str, sample: str) -> None:
    name, parts, weight = case(variant, sample, family="sdxl", seed=3)
    expected = delta_weight(parts, weight, "a1111")
    assert_close_to(module_delta(parts, weight, name), expected.float(), f"{variant} on {name}")


@pytest.mark.parametrize(
    "layer", [nn.Linear(32, 48), nn.Conv2d(32, 48, 3, padding=1)], ids=["linear", "conv"]
)
def test_glora_is_lycoris_own_glora(layer: nn.Module) -> None:
    """LyCORIS' GLoRAModule's own diff weight, and ComfyUI's formula for its layout (A1111 reads only the
    layout of LyCORIS before 2.0)."""
    module = GLoRAModule("lora_unet_x", layer, 1.0, lora_dim=2, alpha=1.0)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    parts = {key: tensor.detach() for key, tensor in module.state_dict().items()}
    expected, _ = module.get_diff_weight()
    change = module_delta(parts, layer.weight, "lora_unet_x")
    assert_close_to(change, expected.detach(), "LyCORIS")
    assert_close_to(change, delta_weight(parts, layer.weight, "comfyui").float(), "ComfyUI")


@pytest.mark.parametrize("variant", ["oft", "boft"])
def test_oft_without_a_constraint_is_the_plain_rotation_every_consumer_applies(variant: str) -> None:
    name, parts, weight = case(variant, "attention")
    parts["alpha"] = torch.tensor(0.0)
    del parts["rescale"]  # ComfyUI's Diag-OFT ignores it
    for rule in ("a1111", "comfyui"):
        assert_close_to(module_delta(parts, weight, name), delta_weight(parts, weight, rule).float(), rule)


@pytest.mark.parametrize("variant", ["oft", "boft"])
def test_an_oft_cap_binds_at_alpha_times_the_output_width(variant: str) -> None:
    """The random blocks' norm is far above 1e-3 x out: the cap binds, and ComfyUI's cap at alpha alone
    (a smaller rotation) is not what the module computes."""
    name, parts, weight = case(variant, "feed-forward")
    change = module_delta(parts, weight, name)
    comfyui = delta_weight(parts, weight, "comfyui").float()
    assert (change - comfyui).abs().max() > 1e-3 * change.abs().max()


def test_kohya_oft_is_its_own_rotation() -> None:
    """kohya's OFT (oft_unet_ names) is turned as A1111 turns it: R^T W per block, Q capped at alpha x out."""
    lycoris_name, parts, weight = case("oft", "attention")
    parts = {"oft_blocks": parts["oft_blocks"], "alpha": torch.tensor(1e-2)}
    name = "oft_unet_" + lycoris_name.removeprefix("lora_unet_")
    expected = delta_weight(parts, weight, "a1111").float()
    assert_close_to(module_delta(parts, weight, name), expected, "kohya OFT")


@pytest.mark.parametrize("on_input", [False, True])
@pytest.mark.parametrize("sample", ["attention", "conv 3x3"])
def test_ia3_scales_the_weight_as_lycoris_merges_it(sample: str, on_input: bool) -> None:
    """LyCORIS' IA3Module's own diff weight (A1111 applies Linear output-axis files only)."""
    name, _, weight = case("ia3", sample)
    layer = (
        nn.Linear(*weight.shape[::-1])
        if weight.dim() == 2
        else nn.Conv2d(weight.shape[1], weight.shape[0], 3)
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
    module = IA3Module(name, layer, 1.0, train_on_input=on_input)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=torch.Generator().manual_seed(5)))
    parts = {"weight": module.weight.detach(), "on_input": torch.tensor(int(on_input))}
    expected, _ = module.get_diff_weight()
    assert_close_to(module_delta(parts, weight, name), expected.detach(), "IA3")
    if weight.dim() == 2 and not on_input:
        assert_close_to(
            module_delta(parts, weight, name), delta_weight(parts, weight, "a1111").float(), "A1111"
        )


@pytest.mark.parametrize("sample", ["attention", "conv 3x3"])
def test_dora_with_lycoris_default_magnitude_normalises_each_output_row(sample: str) -> None:
    """LyCORIS' [out, 1] dora_scale: the merged weight's rows have exactly the magnitudes trained."""
    name, parts, weight = case("lora", sample)
    parts["dora_scale"] = 1.0 + 0.1 * torch.randn(weight.shape[0], *[1] * (weight.dim() - 1))
    merged = weight + module_delta(parts, weight, name)
    torch.testing.assert_close(merged.flatten(1).norm(dim=1), parts["dora_scale"].flatten())


def test_dora_with_an_input_column_magnitude_normalises_each_column() -> None:
    name, parts, weight = case("dora", "conv 3x3")
    merged = weight + module_delta(parts, weight, name)
    torch.testing.assert_close(merged.transpose(0, 1).flatten(1).norm(dim=1), parts["dora_scale"].flatten())


@pytest.mark.parametrize("variant", ["full", "norm"])
def test_full_and_norm_change_the_bias_too(variant: str) -> None:
    group, contains = ("conv", "conv1") if variant == "full" else ("norm", "norm1")
    name, module = first("sd1", group, contains)
    parts = randomised(VARIANTS[variant][1](module), seed=7)
    weight = torch.randn(module.weight_shape)
    if variant == "full":
        expected = delta(parts, weight, "a1111")
        assert_close_to(module_delta(parts, weight, name), expected.weight.float(), "diff")
        assert_close_to(module_bias_delta(parts), expected.bias.float(), "diff_b")
    else:  # LyCORIS' NormModule adds w_norm and b_norm
        assert torch.equal(module_delta(parts, weight, name), parts["w_norm"])
        assert torch.equal(module_bias_delta(parts), parts["b_norm"])


def test_lora_types_have_no_bias_change() -> None:
    _, parts, _ = case("lora", "attention")
    assert module_bias_delta(parts) is None


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_weight_free_types_need_no_weight_and_give_the_same_change(variant: str) -> None:
    name, parts, weight = case(variant, "conv 3x3") if variant != "norm" else (None, None, None)
    if variant == "norm":
        name, module = first("sd1", "norm", "norm1")
        parts, weight = randomised(VARIANTS[variant][1](module), 0), torch.randn(module.weight_shape)
    base_type = variant.split("_")[0]
    assert weight_free(parts, name) == (base_type not in WEIGHT_DEPENDENT)
    if weight_free(parts, name):
        alone = module_delta(parts, None, name)
        assert torch.equal(alone.reshape(weight.shape), module_delta(parts, weight, name))
    else:
        with pytest.raises(ValueError, match="depends on the layer's weight"):
            module_delta(parts, None, name)


def test_lora_on_the_wrong_weight_does_not_fit() -> None:
    name, parts, _ = case("lora", "attention")
    with pytest.raises(PartsDoNotFit, match=rf"{name}: its parts make a change of shape"):
        module_delta(parts, torch.randn(7, 5), name)


def test_oft_on_the_wrong_weight_does_not_fit() -> None:
    name, parts, _ = case("oft", "attention")
    with pytest.raises(PartsDoNotFit, match=rf"{name}: its parts do not fit a weight of shape \(7, 5\)"):
        module_delta(parts, torch.randn(7, 5), name)


def test_parts_of_no_type_are_refused() -> None:
    with pytest.raises(ValueError, match="parts of no known network type"):
        module_delta({"something.weight": torch.zeros(2, 2)}, torch.zeros(2, 2), "lora_unet_x")
