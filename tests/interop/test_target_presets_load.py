"""Files of LyCORIS' preset full with train_norm (conv_in, conv_out, the time embedding, every ResNet and
sampler, every LayerNorm/GroupNorm in them), as loracraft builds them on SD1, SD2 and SDXL: every key lands
on the module it was trained for and takes effect as trained in A1111, ComfyUI and Forge (the oracles in
tests/consumer_oracles), for LoCon and LoHa."""

import pytest
import torch

from consumer_oracles import CONSUMERS, NETWORK_ALGORITHM, base_model, resolve
from loracraft.networks.algorithms import AdapterKind, adapter_state, make_adapter
from loracraft.networks.kohya_names import text_encoder_prefixes
from loracraft.networks.network_spec import NetworkSpec
from loracraft.networks.target_selection import (
    TargetChoice,
    is_norm,
    norm_adapter,
    text_encoder_targets_for,
    unet_targets_for,
)
from model_helpers import tiny_family_modules

FAMILIES = ("sd1", "sd2", "sdxl")
FULL_WITH_NORMS = TargetChoice.of(NetworkSpec(module="lycoris.kohya", algo="locon", train_norm=True))


def full_preset_file(family: str, kind: AdapterKind):
    """The file's tensors (every part nudged off its initial value), the targets and the base model."""
    unet, text_encoders = tiny_family_modules(family)
    targets = unet_targets_for(unet, family, FULL_WITH_NORMS, trains_convolutions=True)
    for model, prefix in zip(text_encoders, text_encoder_prefixes(family), strict=True):
        targets += text_encoder_targets_for(model, prefix, FULL_WITH_NORMS)
    state = {}
    for target in targets:
        if is_norm(target.module):
            adapter = norm_adapter(kind, target.name, target.module)
        else:
            adapter = make_adapter(kind, target.name, target.module, 4, 2.0)
        with torch.no_grad():
            for parameter in adapter.parameters():
                parameter.add_(0.01)
        state |= {f"{target.name}.{part}": tensor for part, tensor in adapter_state(adapter).items()}
    return state, targets, base_model(family, unet, text_encoders)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_preset_full_with_norms_loads_in_every_consumer(family, algo):
    state, targets, base = full_preset_file(family, AdapterKind(algo))
    names = {target.name for target in targets}
    conv_in = "lora_unet_input_blocks_0_0" if family == "sdxl" else "lora_unet_conv_in"
    assert conv_in in names and any(is_norm(target.module) for target in targets)
    for consumer in CONSUMERS:
        result = resolve(consumer, state, base)
        assert result.fully_applied, (
            f"{consumer}: refusal={result.refusal} unresolved={sorted(result.unresolved)[:3]} "
            f"ignored={list(result.ignored.items())[:3]} misapplied={list(result.misapplied.items())[:3]}"
        )
        for target in targets:
            expected = "norm" if is_norm(target.module) else NETWORK_ALGORITHM[algo]
            assert result.algorithm_of(base.name_of(target.module)) == expected, (consumer, target.name)
