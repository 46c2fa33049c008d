"""The tiny model's build script: a shortened recipe runs every stage and is deterministic to the byte.

The full recipe takes ~26 minutes (models/tiny/README.md); a few steps of each stage prove the pipeline
(tokenizer -> VAE -> latents -> U-Net + text encoder -> SD single file) and its determinism in seconds.
"""

from dataclasses import replace

from safetensors import safe_open

from loracraft.models.loading import load_model_bundle
from loracraft.models.tiny.build import TOKENIZER_NAME, Recipe, build_tiny_model, save_checkpoint
from loracraft.models.tiny.shipped import CHECKPOINT

SHORT = replace(Recipe(), vae_images=24, vae_steps=2, vae_batch=4, base_images=24, unet_steps=3, unet_batch=4)


def build(out_dir):
    lines: list[str] = []
    model = build_tiny_model(out_dir, SHORT, lines.append)
    return save_checkpoint(model, out_dir), lines


def keys_and_metadata(path):
    with safe_open(str(path), framework="pt") as file:
        return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}, file.metadata()


def test_short_build_is_byte_identical_and_loads_like_the_shipped_model(tmp_path):
    first, log = build(tmp_path / "a")
    second, _ = build(tmp_path / "b")

    assert first.read_bytes() == second.read_bytes()
    assert any(line.startswith("vae step 2/2") for line in log)
    assert any(line.startswith("unet step 3/3") for line in log)
    assert (tmp_path / "a" / TOKENIZER_NAME / "vocab.json").is_file()
    # Same architecture as the shipped file: same tensor names and shapes, same kind of metadata.
    shapes, metadata = keys_and_metadata(first)
    shipped_shapes, shipped_metadata = keys_and_metadata(CHECKPOINT)
    assert shapes == shipped_shapes
    assert set(metadata) == set(shipped_metadata)
    assert metadata["loracraft.model"] == "loracraft-tiny"
    bundle = load_model_bundle(first)
    assert bundle.vae.config.scaling_factor == float(metadata["loracraft.vae_scaling_factor"]) != 1.0
