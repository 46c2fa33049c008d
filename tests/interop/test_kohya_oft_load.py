"""Which consumers load a kohya OFT file (networks.oft: `oft_unet_` names, `oft_blocks` and `alpha`), by the
consumer oracles (tests/consumer_oracles, from each program's code):

- A1111 finds `oft_unet_` names only by replacing the prefix with `diffusion_model` and looking the rest
  up as an LDM path (networks.py, "kohya_ss OFT module"): SDXL's names are LDM paths, so every key lands
  on the layer it trained and A1111 builds its OFT module there; SD1/SD2's diffusers-path names match no
  layer, so nothing of the file applies.
- ComfyUI and Forge have no `oft_unet_` names in their key maps: nothing applies, and Forge, with more
  than 12 keys unmatched, skips the file.
"""

import pytest
import torch

from consumer_oracles import CONSUMERS, FORGE_MAX_UNMATCHED_KEYS, base_model, resolve
from loracraft.networks.kohya_oft import kohya_oft_adapters, oft_unet_targets
from loracraft.networks.lora_network import LoRANetwork
from model_helpers import tiny_family_modules

FAMILIES = ("sd1", "sd2", "sdxl")
LOADS = {("a1111", "sdxl")}
"""(consumer, family) pairs where the file applies; elsewhere no key of it resolves."""


def saved_file(family: str, enable_all_linear: bool, enable_conv: bool):
    """A kohya OFT file's tensors, the base model as consumers see it, and {key: base module trained}."""
    unet, text_encoders = tiny_family_modules(family)
    targets = oft_unet_targets(unet, family, enable_all_linear, enable_conv)
    network = LoRANetwork(kohya_oft_adapters(targets, 1.0, dim=4, alpha=1e-3))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.01)
    base = base_model(family, unet, text_encoders)
    trained = {
        f"{target.name}.{part}": base.name_of(target.module)
        for target in targets
        for part in ("oft_blocks", "alpha")
    }
    return network.kohya_state_dict(), base, trained


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("enable_all_linear", "enable_conv"), [(False, False), (True, True)])
def test_a_kohya_oft_file_applies_in_a1111_on_sdxl_only(family, enable_all_linear, enable_conv):
    state, base, trained = saved_file(family, enable_all_linear, enable_conv)
    assert set(state) == set(trained)
    for consumer in CONSUMERS:
        result = resolve(consumer, state, base)
        if (consumer, family) in LOADS:
            assert result.fully_applied, (result.refusal, result.unresolved[:3], list(result.ignored)[:3])
            assert {key: result.module_of(key) for key in state} == trained
            assert {result.algorithm_of(module) for module in trained.values()} == {"oft"}
            continue
        assert sorted(result.unresolved) == sorted(state), consumer
        assert not result.by_module
        if consumer == "forge":
            assert len(state) > FORGE_MAX_UNMATCHED_KEYS
            assert result.refusal == f"Forge skips the file: {len(state)} keys unmatched (more than 12)"
        else:
            assert result.loads  # read without an error, and nothing of it applied
