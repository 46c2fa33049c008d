"""`loracraft merge --sd_model`: LoRAs into the tiny SD1, SD2 and SDXL models' checkpoints.

The merged single file equals diffusers' own fused weights (load_lora_weights + fuse_lora on the same
model's diffusers folder: the oracle) for a kohya LoCon, read back through loracraft's loader and through
diffusers' from_single_file; SD2's and SDXL's OpenCLIP text encoders included (their q, k and v are
thirds of one in_proj in the file). Every tensor the LoRA does not name is byte-identical, with its dtype and
the file's metadata; a diffusers folder in or out gives the same weights. Files of other types (LoHa,
Diag-OFT, full with its bias, DoRA) merged one after the other equal the base plus what A1111 adds for
each in turn (tests/consumer_math.py). LoRAs into one LoRA and the bad inputs:
test_merge_loras_command.py.
"""

from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from consumer_math import delta
from loracraft.errors import UserError
from loracraft.models.checkpoint_file import read_checkpoint, write_checkpoint
from loracraft.models.config_inference import infer_config
from loracraft.models.ldm_convert import UNET_PREFIX
from loracraft.models.ldm_keys import ldm_weights
from loracraft.models.loading import load_model_bundle
from loracraft.networks.algorithms import AdapterKind
from loracraft.networks.lora_file import read_lora_file, save_lora_file
from loracraft.networks.lora_network import build_lora_network
from loracraft.tools.merge_lora import main

RANK, ALPHA = 4, 2.0
RATIO = 0.7
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# fp32 sums in another order than diffusers': a few ulps of the weights.
FUSED_ATOL = 1e-6


def run(argv: list[str]) -> list[str]:
    lines: list[str] = []
    assert main(argv, echo=lines.append) == 0
    return "\n".join(lines).splitlines()


def lora_file(
    bundle, path: Path, seed: int, kind: AdapterKind | None = None, rank: int = RANK, **options
) -> Path:
    """A network of the bundle's model as training builds it (LoCon: 3x3 convolutions too), every
    factor random, saved as training saves it."""
    network = build_lora_network(
        bundle.unet,
        bundle.text_encoders,
        bundle.family,
        rank,
        ALPHA,
        kind=kind,
        conv_dim=rank,
        conv_alpha=ALPHA,
        **options,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(parameter * (1 + 0.05 * noise) if "dora_scale" in name else 0.1 * noise)
    save_lora_file(
        network.kohya_state_dict(), path, {"ss_base_model_version": "sd_v1", "modelspec.title": f"lora{seed}"}
    )
    return path


def state_dicts(source) -> dict[str, dict[str, torch.Tensor]]:
    """Every U-Net and text-encoder tensor of a bundle or pipeline, by component; transformers 5 names
    CLIPTextModel's tensors without `text_model.`."""
    return {
        component: {
            key.removeprefix("text_model."): t.detach().float() for key, t in model.state_dict().items()
        }
        for component in COMPONENTS
        if (model := getattr(source, component, None)) is not None
    }


def fused(tiny, lora: Path, ratio: float) -> dict[str, dict[str, torch.Tensor]]:
    """diffusers' own merge: the model's diffusers folder with the LoRA loaded and fused at `ratio`."""
    pipe = DiffusionPipeline.from_pretrained(tiny.diffusers_dir, local_files_only=True)
    pipe.load_lora_weights(lora.parent, weight_name=lora.name)
    components = [name for name in COMPONENTS if getattr(pipe, name, None) is not None]
    pipe.fuse_lora(components=components, lora_scale=ratio)
    pipe.unload_lora_weights()
    return state_dicts(pipe)


def assert_same_model(actual: dict, expected: dict, base: dict) -> None:
    """Every tensor the merge changed equals the expected one to float32 rounding; every other is equal."""
    changed = 0
    for component, tensors in expected.items():
        assert actual[component].keys() == tensors.keys()
        for key, tensor in tensors.items():
            if torch.equal(tensor, base[component][key]):
                assert torch.equal(actual[component][key], tensor), f"{component}.{key} changed"
            else:
                changed += 1
                torch.testing.assert_close(actual[component][key], tensor, rtol=0, atol=FUSED_ATOL, msg=key)
    assert changed > 0


def locations(checkpoint) -> dict:
    """Where each module's weight is in an SD1 single file."""
    unet = {
        k.removeprefix(UNET_PREFIX): v for k, v in checkpoint.tensors.items() if k.startswith(UNET_PREFIX)
    }
    config = infer_config("unet", unet, "sd1", checkpoint.metadata, checkpoint.path)
    return ldm_weights(checkpoint.tensors.keys(), config, "sd1")


def modules_of(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    tensors, _ = read_lora_file(path)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        modules.setdefault(name, {})[part] = tensor
    return modules


def load_merged(path: Path, tiny):
    return load_model_bundle(path, tokenizer_path=tiny.tokenizer_dir, tokenizer_2_path=tiny.tokenizer_2_dir)


@pytest.fixture(scope="module")
def sd1(tiny_sd1, tiny_sd1_bundle, tmp_path_factory):
    """(tiny model, its kohya LoCon, the LoRA merged into its single file, diffusers' fused weights)."""
    folder = tmp_path_factory.mktemp("sd1")
    lora = lora_file(tiny_sd1_bundle, folder / "locon.safetensors", seed=0)
    merged = folder / "merged.safetensors"
    run(
        [
            "--sd_model",
            str(tiny_sd1.single_file),
            "--models",
            str(lora),
            "--ratios",
            str(RATIO),
            "--save_to",
            str(merged),
        ]
    )
    return tiny_sd1, lora, merged, fused(tiny_sd1, lora, RATIO)


# Into a checkpoint -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_merged_single_files_equal_diffusers_fused_weights(family, request, tmp_path) -> None:
    """Their OpenCLIP text encoders too (SD2's, SDXL's second): q, k and v are thirds of one in_proj."""
    tiny, bundle = request.getfixturevalue(f"tiny_{family}"), request.getfixturevalue(f"tiny_{family}_bundle")
    lora = lora_file(bundle, tmp_path / "locon.safetensors", seed=1)
    merged = tmp_path / "merged.safetensors"
    lines = run(
        [
            "--sd_model",
            str(tiny.single_file),
            "--models",
            str(lora),
            "--ratios",
            "0.6",
            "--save_to",
            str(merged),
        ]
    )
    assert lines[-1] == f"wrote {merged}"
    assert_same_model(state_dicts(load_merged(merged, tiny)), fused(tiny, lora, 0.6), state_dicts(bundle))


def test_sd1_merged_single_file_equals_diffusers_fused_weights(sd1, tiny_sd1_bundle) -> None:
    tiny, _, merged, expected = sd1
    assert_same_model(state_dicts(load_merged(merged, tiny)), expected, state_dicts(tiny_sd1_bundle))


def test_diffusers_single_file_loader_reads_the_merged_weights(sd1, tiny_sd1_bundle) -> None:
    tiny, _, merged, expected = sd1
    pipe = StableDiffusionPipeline.from_single_file(
        str(merged), config=str(tiny.diffusers_dir), local_files_only=True
    )
    assert_same_model(state_dicts(pipe), expected, state_dicts(tiny_sd1_bundle))


def test_only_the_named_tensors_change_and_every_other_key_is_kept(sd1) -> None:
    tiny, lora, merged, _ = sd1
    base, result = read_checkpoint(tiny.single_file), read_checkpoint(merged)
    assert result.tensors.keys() == base.tensors.keys()
    modules = {key.split(".")[0] for key in read_lora_file(lora)[0]}
    where = locations(base)
    named = {where[name].key for name in modules}
    changed = {key for key, tensor in base.tensors.items() if not torch.equal(tensor, result.tensors[key])}
    assert changed == named
    # the tiny model's config metadata stays (it is how the file loads), with kohya's modelspec added
    assert {k: v for k, v in result.metadata.items() if not k.startswith("modelspec.")} == base.metadata
    assert result.metadata["modelspec.merged_from"] == "tiny-sd1, lora0"
    assert result.metadata["modelspec.architecture"] == "stable-diffusion-v1"
    assert result.metadata["modelspec.title"] == "merged"


def test_a_ckpt_output_holds_the_same_tensors(sd1, tmp_path) -> None:
    tiny, lora, merged, _ = sd1
    out = tmp_path / "merged.ckpt"
    run(
        [
            "--sd_model",
            str(tiny.single_file),
            "--models",
            str(lora),
            "--ratios",
            str(RATIO),
            "--save_to",
            str(out),
        ]
    )
    expected, written = read_checkpoint(merged).tensors, read_checkpoint(out).tensors
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[key], tensor) for key, tensor in expected.items())


def test_half_precision_file_keeps_its_dtypes_and_other_keys_byte_for_byte(sd1, tmp_path) -> None:
    """An fp16 checkpoint with EMA-like extra keys: merged in float32, cast back to fp16 per tensor."""
    tiny, lora, _, expected = sd1
    checkpoint = read_checkpoint(tiny.single_file)
    tensors = {key: tensor.half() for key, tensor in checkpoint.tensors.items()}
    tensors["model_ema.decay"] = torch.tensor(0.9999)
    tensors["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
    base = tmp_path / "half.safetensors"
    write_checkpoint(base, tensors, checkpoint.metadata)
    merged = tmp_path / "merged.safetensors"
    run(["--sd_model", str(base), "--models", str(lora), "--ratios", str(RATIO), "--save_to", str(merged)])
    result = read_checkpoint(merged).tensors
    assert result.keys() == tensors.keys()
    assert {key: t.dtype for key, t in result.items()} == {key: t.dtype for key, t in tensors.items()}
    changed = [key for key in tensors if not torch.equal(tensors[key], result[key])]
    assert changed and all(key.startswith(("model.", "cond_stage_model.")) for key in changed)
    merged_unet = load_merged(merged, tiny).unet.state_dict()
    for key, tensor in expected["unet"].items():  # fp16 of diffusers' fp32 fused weight from an fp16 base
        torch.testing.assert_close(merged_unet[key], tensor.half().float(), rtol=0, atol=2e-3, msg=key)


def test_diffusers_folder_out_loads_with_the_merged_weights(sd1, tiny_sd1_bundle, tmp_path) -> None:
    """Written as a folder: an existing one is kept without --overwrite and replaced whole with it."""
    tiny, lora, _, expected = sd1
    out = tmp_path / "merged-folder"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    argv = [
        "--sd_model",
        str(tiny.single_file),
        "--models",
        str(lora),
        "--ratios",
        str(RATIO),
        "--save_to",
        str(out),
    ]
    with pytest.raises(UserError, match="already exists"):
        main(argv, echo=lambda line: None)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    run([*argv, "--overwrite"])
    assert not (out / "mine.txt").exists()
    base = state_dicts(tiny_sd1_bundle)
    assert_same_model(state_dicts(load_model_bundle(out)), expected, base)
    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert_same_model(state_dicts(pipe), expected, base)
    assert pipe.tokenizer("a red circle").input_ids == tiny_sd1_bundle.tokenizer("a red circle").input_ids
    assert [p.name for p in tmp_path.iterdir()] == ["merged-folder"], "a temporary folder was left"


@pytest.mark.gpu
def test_merging_on_the_gpu_gives_the_cpu_result(sd1, tmp_path) -> None:
    """--device cuda: the same arithmetic in float32 (no TF32), every tensor back on the CPU."""
    tiny, lora, merged, _ = sd1
    out = tmp_path / "gpu.safetensors"
    argv = ["--sd_model", str(tiny.single_file), "--models", str(lora), "--ratios", str(RATIO)]
    run([*argv, "--save_to", str(out), "--device", "cuda"])
    cpu, gpu = read_checkpoint(merged).tensors, read_checkpoint(out).tensors
    assert cpu.keys() == gpu.keys()
    for key, tensor in cpu.items():
        torch.testing.assert_close(gpu[key], tensor, rtol=0, atol=1e-6, msg=key)


def test_diffusers_folder_in_gives_a_single_file_with_the_merged_weights(
    sd1, tiny_sd1_bundle, tmp_path
) -> None:
    tiny, lora, _, expected = sd1
    out = tmp_path / "merged.safetensors"
    run(
        [
            "--sd_model",
            str(tiny.diffusers_dir),
            "--models",
            str(lora),
            "--ratios",
            str(RATIO),
            "--save_to",
            str(out),
        ]
    )
    assert_same_model(state_dicts(load_merged(out, tiny)), expected, state_dicts(tiny_sd1_bundle))


# Types whose change depends on the weight are applied to the weight the files before them left.
TYPES_IN_ORDER = (
    ("loha", {}),
    ("diag-oft", {"constraint": 1e-3, "rescaled": True}),
    ("full", {}),
    ("locon", {"weight_decompose": True, "wd_on_out": False}),
)


def test_files_of_every_kind_merge_in_order_as_the_consumers_apply_them(
    tiny_sd1, tiny_sd1_bundle, tmp_path
) -> None:
    """LoHa, Diag-OFT, full (with its bias) and DoRA files at their ratios, a negative one too: each
    weight (and bias) is the base one plus what A1111 adds for each file in turn (tests/consumer_math.py)."""
    files = [
        lora_file(
            tiny_sd1_bundle, tmp_path / f"{algo}.safetensors", seed=2, kind=AdapterKind(algo, options=options)
        )
        for algo, options in TYPES_IN_ORDER
    ]
    ratios = [0.9, 1.0, -0.4, 1.0]
    merged = tmp_path / "merged.safetensors"
    lines = run(
        [
            "--sd_model",
            str(tiny_sd1.single_file),
            "--models",
            *map(str, files),
            "--ratios",
            *map(str, ratios),
            "--save_to",
            str(merged),
        ]
    )
    assert lines[1] == f"merged {files[1]} at ratio 1: {len(modules_of(files[1]))} modules"
    base, result = read_checkpoint(tiny_sd1.single_file), read_checkpoint(merged)
    expected = {key: tensor.double() for key, tensor in base.tensors.items()}
    places = locations(base)
    for path, ratio in zip(files, ratios, strict=True):
        for name, parts in modules_of(path).items():
            where = places[name]
            change = delta(parts, expected[where.key], "a1111")
            expected[where.key] = expected[where.key] + ratio * change.weight
            if change.bias is not None:
                expected[where.bias_key] = expected[where.bias_key] + ratio * change.bias
    changed = 0
    for key, tensor in base.tensors.items():
        if not torch.equal(expected[key].float(), tensor):
            changed += 1
            torch.testing.assert_close(result.tensors[key], expected[key].float(), rtol=0, atol=1e-5, msg=key)
        else:
            assert torch.equal(result.tensors[key], tensor), key
    assert changed > 300
