"""--scale_weight_norms (networks/max_norm.py): kohya's numbers on known tensors, LyCORIS' own max-norm as
the oracle of every LyCORIS type, the norms the saved file holds, and the types refused in one line."""

import copy

import pytest
import torch
from torch import nn

from loracraft.networks.algorithms import AdapterKind, adapter_state, make_adapter
from loracraft.networks.lora_network import LoRANetwork
from loracraft.networks.max_norm import apply_max_norm, effective_max_norm
from loracraft.networks.network_spec import ALGOS, NetworkSpec
from network_helpers import tiny_network

CPU = torch.device("cpu")


def known(shape: tuple[int, ...], start: float, stop: float) -> torch.Tensor:
    return torch.linspace(start, stop, torch.Size(shape).numel()).reshape(shape)


# name -> (base module, rank, alpha, lora_down, lora_up): linear and convolution modules over the limit,
# one under half the limit and one between half the limit and the limit (both left as they are).
KOHYA_MODULES = {
    "lora_unet_linear_over": (nn.Linear(6, 5), 2, 1.0, known((2, 6), -1.0, 0.8), known((5, 2), 0.5, -0.7)),
    "lora_unet_linear_under": (
        nn.Linear(6, 5), 2, 2.0, known((2, 6), -0.1, 0.08), known((5, 2), 0.05, -0.07),
    ),
    "lora_unet_conv3x3_over": (
        nn.Conv2d(3, 4, 3), 2, 1.0, known((2, 3, 3, 3), -0.9, 1.0), known((4, 2, 1, 1), 0.6, -0.4),
    ),
    "lora_unet_conv1x1_over": (
        nn.Conv2d(3, 5, 1), 4, 2.0, known((4, 3, 1, 1), 0.3, -1.2), known((5, 4, 1, 1), -0.8, 0.9),
    ),
    "lora_te_linear_between": (nn.Linear(6, 5), 2, 0.6, known((2, 6), -1.0, 0.8), known((5, 2), 0.5, -0.7)),
}  # fmt: skip
KOHYA_MAX_NORM = 0.5
# kohya's own apply_max_norm_regularization (sd-scripts networks/lora.py, run on these tensors as its
# state dict): (keys_scaled, mean norm, max norm), the factor of each module's up and down, and the
# scaled weights of the first module.
KOHYA_STATS = (3, 0.379863640666008, 0.5)
KOHYA_FACTORS = {
    "lora_unet_linear_over": 0.8810920119285583,
    "lora_unet_linear_under": 1.0,
    "lora_unet_conv3x3_over": 0.6959965229034424,
    "lora_unet_conv1x1_over": 0.513900101184845,
    "lora_te_linear_between": 1.0,
}
KOHYA_LINEAR_OVER_UP = [
    [0.4405460059642792, 0.3230670690536499],
    [0.20558811724185944, 0.08810918033123016],
    [-0.029369758442044258, -0.1468486338853836],
    [-0.2643275558948517, -0.38180652260780334],
    [-0.4992854595184326, -0.6167644262313843],
]
KOHYA_LINEAR_OVER_DOWN = [
    [-0.8810920119285583, -0.7369133234024048, -0.5927346348762512, -0.44855591654777527,
     -0.3043772578239441, -0.16019858419895172],
    [-0.01601981371641159, 0.12815886735916138, 0.27233755588531494, 0.4165162444114685,
     0.5606949329376221, 0.7048736214637756],
]  # fmt: skip


def kohya_network() -> LoRANetwork:
    adapters = []
    for name, (module, rank, alpha, down, up) in KOHYA_MODULES.items():
        adapter = make_adapter(AdapterKind("lora"), name, module, rank, alpha)
        with torch.no_grad():
            adapter.lora_down.weight.copy_(down)
            adapter.lora_up.weight.copy_(up)
        adapters.append(adapter)
    return LoRANetwork(adapters[:4], [adapters[4:]])


def test_lora_is_scaled_as_kohyas_own_code_scales_it():
    network = kohya_network()
    stats = apply_max_norm(network, KOHYA_MAX_NORM, CPU)
    assert int(stats.keys_scaled) == KOHYA_STATS[0]
    assert stats.average_key_norm.item() == pytest.approx(KOHYA_STATS[1], rel=1e-6)
    assert stats.max_key_norm.item() == pytest.approx(KOHYA_STATS[2], rel=1e-6)
    for name, (_, _, _, down, up) in KOHYA_MODULES.items():
        adapter = network.adapter(name)
        factor = KOHYA_FACTORS[name]
        torch.testing.assert_close(adapter.lora_down.weight, down * factor, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(adapter.lora_up.weight, up * factor, rtol=1e-6, atol=1e-7)
    linear = network.adapter("lora_unet_linear_over")
    torch.testing.assert_close(
        linear.lora_up.weight, torch.tensor(KOHYA_LINEAR_OVER_UP), rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(
        linear.lora_down.weight, torch.tensor(KOHYA_LINEAR_OVER_DOWN), rtol=1e-6, atol=1e-7
    )


def test_modules_under_the_limit_are_left_exactly_as_they_were():
    network = kohya_network()
    before = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    stats = apply_max_norm(network, 100.0, CPU)
    assert int(stats.keys_scaled) == 0
    assert all(torch.equal(tensor, before[name]) for name, tensor in network.state_dict().items())
    # kohya's mean and max are of the norms as they are (lycoris.kohya would report 0 and 0).
    norms = file_norms(network)
    assert stats.average_key_norm.item() == pytest.approx(sum(norms) / len(norms), rel=1e-6)
    assert stats.max_key_norm.item() == pytest.approx(max(norms), rel=1e-6)


def test_a_second_pass_scales_nothing_more():
    network = kohya_network()
    apply_max_norm(network, KOHYA_MAX_NORM, CPU)
    scaled_once = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    stats = apply_max_norm(network, KOHYA_MAX_NORM, CPU)
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(tensor, scaled_once[name], rtol=1e-6, atol=0)
    assert stats.max_key_norm.item() == pytest.approx(KOHYA_MAX_NORM, rel=1e-6)


# Each type the trainer builds, with its LoCon targets; options the max-norm treats differently.
KINDS = {
    "lora": AdapterKind("lora"),
    "locon-tucker": AdapterKind("locon", options={"use_tucker": True}),
    "locon-scalar": AdapterKind("locon", options={"use_scalar": True}),
    "dora": AdapterKind("locon", options={"weight_decompose": True, "wd_on_out": False}),
    "loha": AdapterKind("loha"),
    "lokr": AdapterKind("lokr", options={"factor": 4}),
    "dylora": AdapterKind("dylora", options={"block_size": 2}),
    "diag-oft": AdapterKind("diag-oft", options={"constraint": 1e-4}),
    "boft": AdapterKind("boft"),
}
MAX_NORM = 0.05


def trained_network(bundle, kind: AdapterKind) -> LoRANetwork:
    """The type's network on copies of the tiny model, every parameter moved well away from its start."""
    return tiny_network(bundle, kind, noise=0.3)[0]


def file_norms(network: LoRANetwork) -> list[float]:
    state = network.kohya_state_dict()
    return [delta_norm(state, name) for name in network.names]


def delta_norm(state: dict[str, torch.Tensor], name: str) -> float:
    """The norm of what module `name` of a saved file adds to its layer's weight, computed from the file's
    tensors as consumers read them (OFT: the norm of its blocks, LyCORIS' max-norm measure)."""
    part = {
        key.split(".", 1)[1]: tensor.double() for key, tensor in state.items() if key.startswith(name + ".")
    }
    if "oft_blocks" in part:
        return part["oft_blocks"].norm().item()
    if "lora_up.weight" in part:
        up, down = part["lora_up.weight"].flatten(1), part["lora_down.weight"].flatten(1)
        rank = down.shape[0]
        if "lora_mid.weight" in part:
            delta = torch.einsum("oa,abhw,bi->oihw", up, part["lora_mid.weight"], down)
        else:
            delta = up @ down
        return (delta.norm() * part["alpha"] / rank).item()
    if "hada_w1_a" in part:
        first = part["hada_w1_a"] @ part["hada_w1_b"].flatten(1)
        second = part["hada_w2_a"] @ part["hada_w2_b"].flatten(1)
        return ((first * second).norm() * part["alpha"] / part["hada_w1_b"].shape[0]).item()
    # LoKr: ||kron(A, B)|| = ||A|| ||B||; alpha / rank scales a low-rank w2, a full matrix has scale 1.
    if "lokr_w2" in part:
        return (part["lokr_w1"].norm() * part["lokr_w2"].norm()).item()
    second = part["lokr_w2_a"] @ part["lokr_w2_b"].flatten(1)
    return (part["lokr_w1"].norm() * second.norm() * part["alpha"] / part["lokr_w2_b"].shape[0]).item()


@pytest.mark.parametrize("label", list(KINDS))
def test_every_module_of_the_saved_file_is_within_the_limit(tiny_sd1_bundle, label):
    network = trained_network(tiny_sd1_bundle, KINDS[label])
    over = sum(norm > MAX_NORM for norm in file_norms(network))
    assert over > len(network.names) // 2, "the test needs modules over the limit"
    stats = apply_max_norm(network, MAX_NORM, CPU)
    assert int(stats.keys_scaled) == over
    norms = file_norms(network)
    assert max(norms) == pytest.approx(MAX_NORM, rel=1e-4)
    assert stats.max_key_norm.item() == pytest.approx(max(norms), rel=1e-4)
    assert stats.average_key_norm.item() == pytest.approx(sum(norms) / len(norms), rel=1e-4)


@pytest.mark.parametrize("label", list(KINDS))
def test_the_weight_differences_are_those_of_lycoris_own_max_norm(tiny_sd1_bundle, label):
    """LyCORIS' per-module apply_max_norm (what kohya runs with lycoris.kohya) gives the same saved ΔW:
    LoKr and OFT the same tensors, LoRA/LoCon and LoHa the same product (LyCORIS puts the whole ratio in a
    hidden multiplier, which the file folds in). LyCORIS has none for DyLoRA: kohya's formula is the
    oracle."""
    network = trained_network(tiny_sd1_bundle, KINDS[label])
    oracle = copy.deepcopy(network)
    oracle.eval()  # LyCORIS measures with rank dropout when training
    apply_max_norm(network, MAX_NORM, CPU)
    with torch.no_grad():
        for name in oracle.names:
            adapter = oracle.adapter(name)
            if label == "dylora":
                kohya_dylora_max_norm(adapter)
            else:
                adapter.apply_max_norm(MAX_NORM, CPU)
    ours, theirs = network.kohya_state_dict(), oracle.kohya_state_dict()
    assert file_norms(network) == pytest.approx(file_norms(oracle), rel=1e-4)
    if label in ("lokr", "diag-oft", "boft"):
        for key, tensor in ours.items():
            torch.testing.assert_close(tensor, theirs[key], rtol=1e-4, atol=1e-7)


def kohya_dylora_max_norm(adapter: nn.Module) -> None:
    """kohya's formula on DyLoRA's whole rank, from its file tensors (alpha / rank: what consumers apply),
    as sd-scripts writes it."""
    state = adapter_state(adapter)
    up, down = state["lora_up.weight"].flatten(1), state["lora_down.weight"]
    updown = (up @ down.flatten(1)) * (state["alpha"] / down.shape[0])
    norm = updown.norm().clamp(min=MAX_NORM / 2)
    ratio = torch.clamp(norm, max=MAX_NORM) / norm
    for block in (*adapter.up_list, *adapter.down_list):
        block *= ratio**0.5


def test_measuring_a_training_module_drops_no_rank_and_draws_no_random_number(tiny_sd1_bundle):
    kind = AdapterKind("loha", rank_dropout=0.5)
    training = trained_network(tiny_sd1_bundle, kind)
    evaluated = copy.deepcopy(training)
    training.train()
    evaluated.eval()
    generator_state = torch.random.get_rng_state()
    apply_max_norm(training, MAX_NORM, CPU)
    assert torch.equal(torch.random.get_rng_state(), generator_state)
    apply_max_norm(evaluated, MAX_NORM, CPU)
    assert all(adapter.training for adapter in training.children())
    expected = evaluated.state_dict()
    for key, tensor in training.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


def test_dylora_scales_every_block_of_its_rank_alike(tiny_sd1_bundle):
    network = trained_network(tiny_sd1_bundle, KINDS["dylora"])
    name = network.names[0]
    before = [block.clone() for block in network.adapter(name).up_list]
    norm = delta_norm(network.kohya_state_dict(), name)
    assert norm > MAX_NORM
    apply_max_norm(network, MAX_NORM, CPU)
    factor = (MAX_NORM / norm) ** 0.5
    for block, old in zip(network.adapter(name).up_list, before, strict=True):
        torch.testing.assert_close(block, old * factor, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("algo", ALGOS)
def test_every_lycoris_type_has_a_max_norm_or_trains_without_one_with_a_note(algo):
    spec = NetworkSpec(module="lycoris.kohya", algo=algo)
    if algo in ("ia3", "glora", "full"):
        assert effective_max_norm(spec, 1.0) == (
            0.0,
            f"--scale_weight_norms 1: algo={algo} has no max-norm (LyCORIS leaves its modules as they are), so "
            "it trains without one, as in kohya",
        )
    else:
        assert any(kind.algo == algo for kind in KINDS.values())
        assert effective_max_norm(spec, 1.0) == (1.0, None)
    assert effective_max_norm(spec, None) == effective_max_norm(spec, 0.0) == (0.0, None)


def test_kohyas_oft_trains_without_a_max_norm_with_a_note():
    spec = NetworkSpec(module="networks.oft", algo="diag-oft")
    max_norm, note = effective_max_norm(spec, 1.0)
    assert (
        max_norm == 0.0 and note.startswith("--scale_weight_norms 1: kohya's OFT") and "algo=diag-oft" in note
    )
    assert effective_max_norm(spec, 0.0) == (0.0, None)
    assert effective_max_norm(NetworkSpec(module="networks.dylora", algo="dylora"), 1.0) == (1.0, None)
