"""Files of every network type, as loracraft writes them, on SD1, SD2 and SDXL with LoCon's conv
targets: every key resolves to a module of the base model and takes effect as trained in every consumer
that has the type (A1111, ComfyUI, Forge; the oracles in tests/consumer_oracles), and a consumer without
the type is the one the oracle says refuses it."""

import pytest
import torch

from consumer_oracles import CONSUMERS, NETWORK_ALGORITHM, SUPPORTED, base_model, resolve
from loracraft.networks.algorithms import AdapterKind
from loracraft.networks.lora_network import build_lora_network
from model_helpers import tiny_family_modules

KINDS = {
    "locon": AdapterKind("locon"),
    "locon-tucker": AdapterKind("locon", options={"use_tucker": True}),
    "dora": AdapterKind("locon", options={"weight_decompose": True, "wd_on_out": False}),
    "loha": AdapterKind("loha"),
    "lokr": AdapterKind("lokr", options={"factor": 4}),
    "lokr-decompose-both": AdapterKind("lokr", options={"factor": 4, "decompose_both": True}),
    "ia3": AdapterKind("ia3"),
    "dylora": AdapterKind("dylora", options={"block_size": 1}),
    "glora": AdapterKind("glora"),
    "diag-oft": AdapterKind("diag-oft", options={"constraint": 1e-4}),
    "full": AdapterKind("full"),
}
FAMILIES = ("sd1", "sd2", "sdxl")


def saved_file(family: str, kind: AdapterKind):
    unet, text_encoders = tiny_family_modules(family)
    network = build_lora_network(unet, text_encoders, family, 4, 2.0, kind=kind, conv_dim=4, conv_alpha=2.0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.01)
    return network.kohya_state_dict(), base_model(family, unet, text_encoders)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("label", list(KINDS))
def test_every_key_lands_in_every_consumer_that_has_the_type(family, label):
    kind = KINDS[label]
    state, base = saved_file(family, kind)
    algorithm = NETWORK_ALGORITHM[kind.algo]
    for consumer in CONSUMERS:
        result = resolve(consumer, state, base)
        if algorithm in SUPPORTED[consumer]:
            assert result.fully_applied, (
                f"{consumer}: loads={result.loads} refusal={result.refusal} "
                f"unresolved={sorted(result.unresolved)[:3]} ignored={list(result.ignored.items())[:3]} "
                f"misapplied={list(result.misapplied.items())[:3]}"
            )
        else:
            assert not result.fully_applied
