"""The delta a consumer computes from a saved file is the delta training applied (issue 14 §3,
reference/lora-format.md §7), for every network type loracraft builds.

Each network is built on the tiny model as training builds it (`build_lora_network`, then `apply()`),
with every trained tensor random and non-zero (seeded; lora_up starts at zero). "The delta training
applied" is, for a sample of modules of each kind (attention and feed-forward Linear, 1x1 conv, 3x3
conv, the stride-2 downsampler, text-encoder Linear), the patched module's output minus the original
output on a random input at multiplier 1, in float64 (OFT/BOFT: float32, the only dtype LyCORIS runs
them in). The file is `kohya_state_dict()` written with `save_lora_file` in float32 and read back.
Consumers, each compared in the same output space (op(x, ΔW) + Δbias):
- LyCORIS' own loader (`create_lycoris_from_weights`, in 3.1.1 and 4.x), run as LyCORIS runs a file;
- the formulas of lora-format.md §2 as A1111, ComfyUI and Forge apply them (tests/consumer_math.py);
- diffusers' `load_lora_weights` + `fuse_lora` for LoRA and LoCon.

Tolerance: |consumer - trained| ≤ 1e-5 · max|trained| per module: the file holds float32 (relative
rounding 6e-8 per part) and diffusers fuses in float32 (6e-8 of W, W ≈ 10 ΔW here), while a wrong
formula (alpha/rank twice or not at all, a transposed factor, the wrong DoRA axis or OFT constraint) is
off by 1e-2 or more. OFT and BOFT: 1e-4, as LyCORIS inverts (I - Q) and trains in float32.

Where a consumer computes something else, a test below pins what it does, so a change shows: A1111
applies (IA)³ to Linear layers only and no LyCORIS GLoRA; ComfyUI caps an OFT constraint at alpha
where LyCORIS trains alpha × out; LyCORIS' loader misreads Tucker LoKr, (IA)³ and the DoRA axis that
is not its default. A DyLoRA trained with block_size > 1 is saved with alpha x block_size (LyCORIS scales by
alpha / blocks, consumers by alpha / rank), so every consumer computes the delta that trained.
"""

import copy
import functools
import importlib.metadata
import inspect
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from lycoris.modules.locon import LoConModule
from lycoris.wrapper import LycorisNetwork, create_lycoris_from_weights
from test_lora_diffusers import tiny_pipeline
from torch import Tensor, nn

from consumer_math import Delta, NotApplied, delta
from consumer_oracles import CONSUMERS, NETWORK_ALGORITHM, SUPPORTED, base_model, resolve
from diffusers_checks import bad_messages, load_messages, text_encoder_components
from loracraft.errors import UserError
from loracraft.networks.algorithms import MINIMUM_LYCORIS, AdapterKind
from loracraft.networks.lora_file import read_lora_file, save_lora_file
from loracraft.networks.lora_network import LoRANetwork, build_lora_network
from model_helpers import tiny_family_modules

ALPHA_OVER_RANK = 0.5  # alpha = rank / 2: a formula that drops or doubles the scale shows
OFT_CONSTRAINT = 1e-2  # binds: the random blocks' norm is above constraint × out
MISAPPLIED = 1e-3  # a consumer off by more than this fraction of the delta computes another result
LYCORIS = importlib.metadata.version("lycoris-lora")


@dataclass(frozen=True)
class Case:
    kind: AdapterKind
    rank: int
    conv_dim: int | None
    """None: kohya's default targets only, no ResNet or sampler convolutions."""
    must_have: frozenset[str]
    """Parts the sampled modules must show, so the variant is really exercised."""
    text_encoder: bool
    tolerance: float
    dtype: torch.dtype


def _case(
    algo: str,
    rank: int = 4,
    must_have: tuple[str, ...] = (),
    conv: bool = True,
    text_encoder: bool = True,
    **options,
) -> Case:
    oft = algo in ("diag-oft", "boft")
    tolerance, dtype = (1e-4, torch.float32) if oft else (1e-5, torch.float64)
    kind = AdapterKind(algo, options=options)
    return Case(kind, rank, rank if conv else None, frozenset(must_have), text_encoder, tolerance, dtype)


CASES = {
    "lora": _case("lora", must_have=("lora_up.weight",), conv=False),
    "locon": _case("locon", must_have=("lora_up.weight",)),
    "locon-tucker": _case("locon", must_have=("lora_mid.weight",), use_tucker=True),
    "dora": _case("locon", must_have=("dora_scale",), weight_decompose=True, wd_on_out=False),
    "dora-output-axis": _case("locon", must_have=("dora_scale",), weight_decompose=True, wd_on_out=True),
    "loha": _case("loha", must_have=("hada_w1_a",)),
    "loha-tucker": _case("loha", must_have=("hada_t1",), use_tucker=True),
    # rank 4 at factor 4: both factors whole (scale 1, alpha ignored) on 32-wide modules, w2 low-rank on
    # wider ones; rank 2 makes the 3x3 convolutions' w2 Tucker; rank 1 lets w1 be low-rank too.
    "lokr": _case("lokr", must_have=("lokr_w2", "lokr_w2_a"), factor=4),
    "lokr-tucker": _case("lokr", 2, must_have=("lokr_t2",), factor=4, use_tucker=True),
    "lokr-decompose-both": _case("lokr", 1, must_have=("lokr_w1_a",), factor=4, decompose_both=True),
    "ia3": _case("ia3", must_have=("weight", "on_input")),
    "dylora": _case("dylora", must_have=("lora_up.weight",), block_size=1),
    "dylora-unit-2": _case("dylora", must_have=("lora_up.weight",), block_size=2),
    "glora": _case("glora", must_have=("a1.weight",)),
    "diag-oft": _case("diag-oft", must_have=("oft_blocks",)),
    "diag-oft-constraint": _case("diag-oft", must_have=("oft_blocks",), constraint=OFT_CONSTRAINT),
    # BOFT cannot factor the tiny text encoders' width 37: U-Net only.
    "boft": _case("boft", must_have=("oft_blocks",), text_encoder=False),
    "boft-constraint": _case(
        "boft", must_have=("oft_blocks",), text_encoder=False, constraint=OFT_CONSTRAINT
    ),
    "full": _case("full", must_have=("diff", "diff_b")),
}

# Which module of the network stands for each kind: the first whose kohya name and module match.
KINDS: dict[str, Callable[[str, nn.Module], bool]] = {
    "attention": lambda name, m: name.startswith("lora_unet") and "attn" in name and isinstance(m, nn.Linear),
    "feed-forward": lambda name, m: "ff_net_0" in name and isinstance(m, nn.Linear),
    "conv 1x1": lambda name, m: isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1),
    "conv 3x3": lambda name, m: isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1),
    "conv 3x3 stride 2": lambda name, m: isinstance(m, nn.Conv2d) and m.stride == (2, 2),
    "text encoder": lambda name, m: name.startswith(("lora_te_", "lora_te1_")) and "mlp_fc2" in name,
    "text encoder 2": lambda name, m: name.startswith("lora_te2_") and "self_attn_q_proj" in name,
}
CONV_KINDS = {"conv 3x3", "conv 3x3 stride 2"}
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass
class Sample:
    """One module of the trained network, with the delta training applied to its output."""

    name: str
    location: tuple[str, str]
    """(pipeline component, module path) of the original module."""
    module: nn.Module
    """An unpatched float64 copy of the original module."""
    inputs: Tensor
    trained: Tensor


@dataclass
class Trained:
    family: str
    case: Case
    samples: dict[str, Sample]
    state: dict[str, Tensor]
    """The file's tensors, read back."""
    models: tuple[nn.Module, ...] = field(repr=False)
    """The U-Net and text encoders trained on (patched)."""

    def parts(self, name: str) -> dict[str, Tensor]:
        return {key.split(".", 1)[1]: t for key, t in self.state.items() if key.split(".", 1)[0] == name}


@contextmanager
def dylora_at_full_rank() -> Iterator[None]:
    """LyCORIS' DyLoRA draws the rank of each forward with random.randint(0, blocks - 1); the file holds
    every block, so the trained delta to compare is the top draw's."""
    with mock.patch.object(random, "randint", lambda low, high: high):
        yield


def randomise(network: LoRANetwork, seed: int = 0) -> None:
    """Every trained tensor random and non-zero: N(0, 0.1²), DoRA's magnitude within ±10% of the weight
    norm it starts at."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64).to(parameter.dtype)
            if name.endswith("dora_scale"):
                parameter.mul_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)


def inputs_for(module: nn.Module, generator: torch.Generator) -> Tensor:
    if isinstance(module, nn.Linear):
        return torch.randn(2, 5, module.in_features, generator=generator, dtype=torch.float64)
    return torch.randn(2, module.in_channels, 8, 8, generator=generator, dtype=torch.float64)


def sample_names(network: LoRANetwork) -> dict[str, str]:
    samples = {}
    for kind, wanted in KINDS.items():
        name = next((n for n in network.names if wanted(n, network.adapter(n).org_module[0])), None)
        if name is not None:
            samples[kind] = name
    return samples


def run_of(family: str, label: str) -> Trained:
    """The trained network of `label` on `family`; BOFT is skipped where LyCORIS cannot build it."""
    algo = CASES[label].kind.algo
    needed = MINIMUM_LYCORIS.get(algo)
    if needed and tuple(map(int, LYCORIS.split(".")[:2])) < tuple(map(int, needed.split("."))):
        pytest.skip(f"{algo} needs lycoris-lora {needed}; installed {LYCORIS}")
    try:
        return trained(family, label)
    except UserError as err:
        if algo != "boft":
            raise
        pytest.skip(f"LyCORIS {LYCORIS} cannot factor the tiny model for BOFT: {err}")


@functools.cache
def trained(family: str, label: str) -> Trained:
    case = CASES[label]
    unet, text_encoders = tiny_family_modules(family)
    unet, text_encoders = unet.to(case.dtype), [model.to(case.dtype) for model in text_encoders]
    locations = {
        id(module): (component, path)
        for component, model in zip(COMPONENTS, (unet, *text_encoders), strict=False)
        for path, module in model.named_modules()
    }
    network = build_lora_network(
        unet,
        text_encoders if case.text_encoder else [],
        family,
        case.rank,
        case.rank * ALPHA_OVER_RANK,
        train_text_encoder=case.text_encoder,
        kind=case.kind,
        conv_dim=case.conv_dim,
        conv_alpha=None if case.conv_dim is None else case.conv_dim * ALPHA_OVER_RANK,
    )
    network.to(case.dtype)
    randomise(network)
    names = sample_names(network)
    modules = {kind: network.adapter(name).org_module[0] for kind, name in names.items()}
    generator = torch.Generator().manual_seed(1)
    inputs = {kind: inputs_for(module, generator) for kind, module in modules.items()}
    copies = {kind: copy.deepcopy(module).double() for kind, module in modules.items()}
    with torch.no_grad():
        before = {kind: modules[kind](inputs[kind].to(case.dtype)).double() for kind in names}
        network.apply()
        network.set_multiplier(1.0)
        with dylora_at_full_rank():
            after = {kind: modules[kind](inputs[kind].to(case.dtype)).double() for kind in names}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "network.safetensors"
        save_lora_file(network.kohya_state_dict(), path, None, torch.float32)
        state, _ = read_lora_file(path)
    samples = {
        kind: Sample(
            name,
            locations[id(modules[kind])],
            copies[kind],
            inputs[kind],
            after[kind] - before[kind],
        )
        for kind, name in names.items()
    }
    return Trained(family, case, samples, state, (unet, *text_encoders))


def output_change(module: nn.Module, inputs: Tensor, change: Delta) -> Tensor:
    """What adding `change` to the module's weight (and bias) adds to its output."""
    weight = change.weight.to(torch.float64)
    bias = None if change.bias is None else change.bias.to(torch.float64)
    if isinstance(module, nn.Linear):
        return F.linear(inputs, weight, bias)
    return F.conv2d(inputs, weight, bias, module.stride, module.padding, module.dilation, module.groups)


def relative_error(actual: Tensor, sample: Sample) -> float:
    scale = sample.trained.abs().max().item()
    assert scale > 1e-6, f"{sample.name}: training changed nothing; the comparison would prove nothing"
    return (actual - sample.trained).abs().max().item() / scale


def assert_same_delta(actual: Tensor, sample: Sample, tolerance: float, what: str) -> None:
    error = relative_error(actual, sample)
    assert error <= tolerance, f"{what} on {sample.name}: off by {error:.3g} of the trained delta"


def consumer_delta(run: Trained, sample: Sample, consumer: str) -> Tensor:
    change = delta(run.parts(sample.name), sample.module.weight, consumer)
    return output_change(sample.module, sample.inputs, change)


def lycoris_delta(run: Trained, sample: Sample) -> Tensor:
    """LyCORIS' create_lycoris_from_weights on the module's file tensors, applied as LyCORIS applies a
    file (patched forward), on a fresh copy of the original module in training's dtype."""
    dtype = run.case.dtype
    holder = nn.Module()
    holder.add_module("target", copy.deepcopy(sample.module).to(dtype))
    weights = {f"{LycorisNetwork.LORA_PREFIX}_target.{part}": t for part, t in run.parts(sample.name).items()}
    network, _ = create_lycoris_from_weights(1.0, "", holder, weights_sd=weights)
    assert len(network.loras) == 1, f"LyCORIS' loader built {len(network.loras)} modules for {sample.name}"
    inputs = sample.inputs.to(dtype)
    with torch.no_grad():
        original = holder.target(inputs)
        network.loras[0].to(dtype).apply_to()
        return (holder.target(inputs) - original).double()


# The main matrix: every type on SD1, the LoRA family's on SDXL too (LDM names, two text encoders).
SD1_LABELS = [label for label in CASES if label not in ("lora", "dora-output-axis", "dylora-unit-2")]
FAMILY_LABELS = [("sd1", label) for label in SD1_LABELS] + [("sdxl", "locon"), ("sdxl", "dora")]


def expected_kinds(family: str, case: Case) -> set[str]:
    kinds = {"attention", "feed-forward", "conv 1x1"} | (CONV_KINDS if case.conv_dim else set())
    if family == "sdxl" and not case.conv_dim:
        kinds.discard("conv 1x1")  # SDXL's proj_in/out are Linear; its 1x1 convs are ResNet shortcuts
    if case.text_encoder:
        kinds |= {"text encoder", "text encoder 2"} if family == "sdxl" else {"text encoder"}
    return kinds


@pytest.mark.parametrize(("family", "label"), FAMILY_LABELS + [("sd1", "lora"), ("sdxl", "lora")])
def test_every_kind_of_module_and_the_variant_parts_are_sampled(family: str, label: str) -> None:
    run = run_of(family, label)
    assert set(run.samples) == expected_kinds(family, run.case)
    parts = {part for sample in run.samples.values() for part in run.parts(sample.name)}
    assert run.case.must_have <= parts, sorted(parts)


# LyCORIS' own loader ---------------------------------------------------------------------------------

# make_module_from_state_dict of the installed LyCORIS (3.1.1 and 4.x alike) fails on these files.
LYCORIS_LOADER_FAILS = {
    # LokrModule takes the rank from lokr_w2_a's second axis, which Tucker stores as [rank, b]: it
    # builds a whole w2 and finds no lokr_w2_a to copy into.
    "lokr-tucker": AttributeError,
    # IA3Module.make_module_from_state_dict takes `weight` only, extract_state_dict gives `on_input` too.
    "ia3": TypeError,
}
DORA_LABELS = ("dora", "dora-output-axis")


@pytest.mark.parametrize(
    ("family", "label"),
    [
        (f, label)
        for f, label in FAMILY_LABELS
        if label not in LYCORIS_LOADER_FAILS and label not in DORA_LABELS
    ],
)
def test_lycoris_loader_computes_the_trained_delta(family: str, label: str) -> None:
    run = run_of(family, label)
    for kind, sample in run.samples.items():
        assert_same_delta(lycoris_delta(run, sample), sample, run.case.tolerance, f"LyCORIS' loader ({kind})")


@pytest.mark.parametrize("label", list(LYCORIS_LOADER_FAILS))
def test_lycoris_loader_fails_on_files_it_writes(label: str) -> None:
    run = run_of("sd1", label)
    sample = run.samples["conv 3x3" if label == "lokr-tucker" else "attention"]
    with pytest.raises(LYCORIS_LOADER_FAILS[label]):
        lycoris_delta(run, sample)


@pytest.mark.parametrize("label", DORA_LABELS)
def test_lycoris_loader_reads_dora_in_its_default_axis_only(label: str) -> None:
    """make_module_from_state_dict builds DoRA with the class default wd_on_out (3.1.1: input columns,
    4.x: output rows) whatever the file's dora_scale shape; the other layout does not fit."""
    run = run_of("sd1", label)
    default = inspect.signature(LoConModule.__init__).parameters["wd_on_out"].default
    for sample in run.samples.values():
        if run.case.kind.options["wd_on_out"] == default:
            assert_same_delta(lycoris_delta(run, sample), sample, run.case.tolerance, "LyCORIS' loader")
        else:
            with pytest.raises(RuntimeError, match="shape"):
                lycoris_delta(run, sample)


# A1111, ComfyUI and Forge (the formulas of lora-format.md §2) ---------------------------------------

# (consumer, label) pairs where the consumer computes something else; the tests below pin what.
DIVERGES = {
    ("a1111", "ia3"): "test_a1111_applies_ia3_to_linear_layers_only",
    ("a1111", "glora"): "test_a1111_applies_no_lycoris_glora",
    ("comfyui", "diag-oft-constraint"): "test_comfyui_caps_an_oft_constraint_at_alpha",
    ("comfyui", "boft-constraint"): "test_comfyui_caps_an_oft_constraint_at_alpha",
}
CONSUMER_CASES = [
    pytest.param(
        family,
        label,
        consumer,
        id=f"{family}-{label}-{consumer}",
    )
    for family, label in [*FAMILY_LABELS, ("sd1", "dylora-unit-2")]
    for consumer in CONSUMERS
    if NETWORK_ALGORITHM[CASES[label].kind.algo] in SUPPORTED[consumer] and (consumer, label) not in DIVERGES
]


@pytest.mark.parametrize(("family", "label", "consumer"), CONSUMER_CASES)
def test_consumers_compute_the_trained_delta(family: str, label: str, consumer: str) -> None:
    run = run_of(family, label)
    for kind, sample in run.samples.items():
        assert_same_delta(
            consumer_delta(run, sample, consumer), sample, run.case.tolerance, f"{consumer} ({kind})"
        )


def test_a1111_applies_ia3_to_linear_layers_only() -> None:
    """network_ia3 reshapes the output-axis weight to a column [n, 1]; LyCORIS stores a convolution's as
    [1, out, 1, 1], so n is 1 and the product does not fit the weight: A1111 logs an error and leaves
    every convolution of an (IA)³ file unpatched."""
    run = run_of("sd1", "ia3")
    for kind, sample in run.samples.items():
        if isinstance(sample.module, nn.Conv2d):
            with pytest.raises(NotApplied):
                consumer_delta(run, sample, "a1111")
        else:
            assert_same_delta(
                consumer_delta(run, sample, "a1111"), sample, run.case.tolerance, f"a1111 ({kind})"
            )


def test_a1111_applies_no_lycoris_glora() -> None:
    """network_glora computes b2 @ b1 + W @ a2 @ a1, the layout of LyCORIS before 2.0; LyCORIS' GLoRA
    (a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in]) does not multiply that way: every module fails."""
    run = run_of("sd1", "glora")
    for sample in run.samples.values():
        with pytest.raises(NotApplied):
            consumer_delta(run, sample, "a1111")


@pytest.mark.parametrize("label", ["diag-oft-constraint", "boft-constraint"])
def test_comfyui_caps_an_oft_constraint_at_alpha(label: str) -> None:
    """LyCORIS trains with Q's norm capped at constraint × out and saves the constraint as alpha; ComfyUI
    caps at alpha itself (A1111 multiplies by out, as LyCORIS). With the cap binding, ComfyUI's rotation
    is out times smaller; without a constraint (the default, tested above) every consumer agrees."""
    run = run_of("sd1", label)
    for sample in run.samples.values():
        parts = run.parts(sample.name)
        skew = parts["oft_blocks"] - parts["oft_blocks"].transpose(-1, -2)
        cap = parts["alpha"].item() * sample.module.weight.shape[0]
        assert torch.linalg.vector_norm(skew) > cap, (
            "the cap must bind in training for this test to mean much"
        )
        assert relative_error(consumer_delta(run, sample, "comfyui"), sample) > MISAPPLIED


# DoRA's axis (lora-format.md §2.1) --------------------------------------------------------------------

DORA_RULES = ("a1111", "comfyui", "forge", "comfyui-2024")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_dora_as_loracraft_writes_it_is_the_trained_delta_under_every_rule(family: str) -> None:
    """dora_scale per input column [1, in(, 1, 1)]: A1111, the 2024 ComfyUI/Forge (input column always)
    and the newest ComfyUI/Forge (axis from the shape) all rebuild the trained weight; the oracles agree."""
    run = run_of(family, "dora")
    for rule in DORA_RULES:
        for kind, sample in run.samples.items():
            assert_same_delta(
                consumer_delta(run, sample, rule), sample, run.case.tolerance, f"{rule} ({kind})"
            )
    base = base_model(family, run.models[0], run.models[1:])
    for consumer in CONSUMERS:
        assert not resolve(consumer, run.state, base).misapplied


def test_lycoris_default_dora_is_misapplied_where_the_oracles_say() -> None:
    """LyCORIS' default dora_scale per output row [out, 1(, 1, 1)]: A1111 and the 2024 copies normalise
    per input column anyway (broadcasting into a wrong weight), the newest ComfyUI/Forge normalise by the
    unpatched W; each oracle marks every dora_scale misapplied, and each rule computes another delta."""
    run = run_of("sd1", "dora-output-axis")
    base = base_model("sd1", run.models[0], run.models[1:])
    dora_keys = {key for key in run.state if key.endswith(".dora_scale")}
    for consumer in CONSUMERS:
        assert set(resolve(consumer, run.state, base).misapplied) == dora_keys, consumer
    for rule in DORA_RULES:
        for kind, sample in run.samples.items():
            assert relative_error(consumer_delta(run, sample, rule), sample) > MISAPPLIED, f"{rule} ({kind})"


# diffusers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("label", ["lora", "locon"])
def test_diffusers_fuses_the_trained_delta(tmp_path: Path, family: str, label: str) -> None:
    """load_lora_weights converts the kohya file (LoCon's 3x3 convolutions included) and fuse_lora adds
    exactly the trained delta to each sampled module's weight."""
    run = run_of(family, label)
    pipe = tiny_pipeline(family)  # the same seeded tiny modules the network was trained on
    weights = {kind: pipe_module(pipe, sample).weight for kind, sample in run.samples.items()}
    for kind, sample in run.samples.items():
        assert torch.equal(weights[kind].double(), sample.module.weight), (
            f"{kind}: not the trained base model"
        )
    before = {kind: weight.detach().clone() for kind, weight in weights.items()}
    save_lora_file(run.state, tmp_path / "network.safetensors")
    with load_messages() as messages:
        pipe.load_lora_weights(tmp_path, weight_name="network.safetensors", adapter_name="trained")
    assert bad_messages(messages) == []
    pipe.fuse_lora(components=["unet", *text_encoder_components(pipe)], lora_scale=1.0)
    pipe.unload_lora_weights()
    for kind, sample in run.samples.items():
        change = Delta(pipe_module(pipe, sample).weight.detach() - before[kind])
        fused = output_change(sample.module, sample.inputs, change)
        assert_same_delta(fused, sample, run.case.tolerance, f"diffusers ({kind})")


def pipe_module(pipe, sample: Sample) -> nn.Module:
    component, path = sample.location
    return getattr(pipe, component).get_submodule(path)
