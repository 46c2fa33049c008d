"""Networks of every type on copies of the tiny SD1 model, for unit tests of the network layer."""

import copy
import importlib.metadata

import pytest
import torch

from loracraft.networks.algorithms import MINIMUM_LYCORIS, AdapterKind
from loracraft.networks.lora_network import LoRANetwork, build_lora_network


def needs_lycoris(kind: AdapterKind) -> None:
    """Skip where the installed LyCORIS is too old for the type (the trainer refuses it: tested too)."""
    needed = MINIMUM_LYCORIS.get(kind.algo)
    installed = importlib.metadata.version("lycoris-lora")
    if needed and tuple(map(int, installed.split(".")[:2])) < tuple(map(int, needed.split("."))):
        pytest.skip(
            f"{kind.algo} needs lycoris-lora {needed}; {installed} is installed (the type is refused)"
        )


def tiny_network(
    bundle, kind: AdapterKind, noise: float | None, seed: int = 0
) -> tuple[LoRANetwork, torch.nn.Module]:
    """The type's network (not applied) on copies of the tiny model's U-Net and text encoder (the shared
    bundle is never patched), with LoCon's conv targets; with `noise`, every adapter parameter moved by
    seeded noise of that size (as training would move it), else as built."""
    needs_lycoris(kind)
    unet, text_encoder = copy.deepcopy(bundle.unet), copy.deepcopy(bundle.text_encoders[0])
    # BOFT cannot factorise the tiny text encoder's MLP width (37); real models' widths are fine.
    text_encoders = [] if kind.algo == "boft" else [text_encoder]
    network = build_lora_network(
        unet, text_encoders, "sd1", 4, 2.0, train_text_encoder=bool(text_encoders), kind=kind,
        conv_dim=4, conv_alpha=2.0,
    )  # fmt: skip
    if noise is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * noise)
    return network, unet
