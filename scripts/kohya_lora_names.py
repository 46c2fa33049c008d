"""Write the LoRA module names kohya-ss sd-scripts creates for full-size SD1.5, SD2 and SDXL models.

The lists in tests/data/kohya_names/ are this script's output; the tests compare our network's names
with them. They come from kohya's own code, not from ours: the script copies kohya's model and network
modules out of a git checkout of sd-scripts (`library/original_unet.py`, `library/sdxl_original_unet.py`,
`library/model_util.py`, `networks/lora.py`, ...), builds kohya's U-Nets and the transformers text
encoders kohya builds, with kohya's configs, on the meta device (no weights, no download), and runs
kohya's `networks.lora.LoRANetwork` over them (rank 1, no conv_dim: the default targets). The names are
then `lora.lora_name` of every module it created, i.e. kohya's rule `prefix + "." + container + "." +
child` with `.` replaced by `_`.

Only `library/utils.py` is replaced by a stub (its `setup_logging` is the one thing kohya's modules use
from it, and the real file imports OpenCV and torchvision). The text-encoder configs are written below
from kohya's source (model_util.py load_models_from_stable_diffusion_checkpoint for SD1/SD2,
sdxl_model_util.py for SDXL), because kohya builds them inside its loading functions.

Run it with transformers 4.x, which kohya pins: transformers 5's CLIPTextModel has no `text_model`
level, so kohya's path-based names would lose `text_model_` there (the reason loracraft builds text-
encoder names from a fixed template):

    .venv-lowest/bin/python scripts/kohya_lora_names.py \
        --sd_scripts /work/.mirror/kohya-ss+sd-scripts/repo --revision HEAD --out tests/data/kohya_names
"""

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import transformers
from accelerate import init_empty_weights
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

KOHYA_FILES = (
    "library/__init__.py",
    "library/device_utils.py",
    "library/original_unet.py",
    "library/sdxl_original_unet.py",
    "library/model_util.py",
    "networks/lora.py",
)
UTILS_STUB = "def setup_logging(*args, **kwargs):\n    pass\n"

# The text encoders' shapes as kohya configures them (only the layer count changes the names).
CLIP_L = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
    projection_dim=768,
)
OPEN_CLIP_H = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    hidden_act="gelu",
    projection_dim=512,
)
OPEN_CLIP_BIG_G = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)
CLIP_COMMON = dict(
    vocab_size=49408, max_position_embeddings=77, pad_token_id=1, bos_token_id=0, eos_token_id=2
)


def copy_kohya_modules(repo: Path, revision: str, into: Path) -> str:
    """kohya's files at `revision` under `into` (importable as `library` and `networks`); the commit."""
    for name in KOHYA_FILES:
        text = subprocess.run(
            ["git", "-C", str(repo), "show", f"{revision}:{name}"], check=True, capture_output=True, text=True
        ).stdout
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    (into / "library" / "utils.py").write_text(UTILS_STUB, encoding="utf-8")
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", revision], check=True, capture_output=True, text=True
    ).stdout.strip()


def text_encoder(shape: dict, with_projection: bool = False):
    config = CLIPTextConfig(**CLIP_COMMON, **shape)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def kohya_models(family: str):
    """(text encoders, U-Net) built as kohya builds them for `family`, on the meta device."""
    model_util = importlib.import_module("library.model_util")
    if family == "sdxl":
        sdxl_unet = importlib.import_module("library.sdxl_original_unet")
        return [text_encoder(CLIP_L), text_encoder(OPEN_CLIP_BIG_G, with_projection=True)], (
            sdxl_unet.SdxlUNet2DConditionModel()
        )
    v2 = family == "sd2"
    # load_models_from_stable_diffusion_checkpoint: SD2's U-Net with Linear projections (its default)
    unet_config = model_util.create_unet_diffusers_config(v2, use_linear_projection_in_v2=True)
    unet = model_util.UNet2DConditionModel(**unet_config)
    return text_encoder(OPEN_CLIP_H if v2 else CLIP_L), unet


def kohya_names(family: str) -> dict:
    lora = importlib.import_module("networks.lora")
    with init_empty_weights():
        text_encoders, unet = kohya_models(family)
        network = lora.LoRANetwork(text_encoders, unet, lora_dim=1, alpha=1, is_sdxl=family == "sdxl")
    te_names = [module.lora_name for module in network.text_encoder_loras]
    prefixes = ("lora_te1_", "lora_te2_") if family == "sdxl" else ("lora_te_",)
    return {
        "unet": [module.lora_name for module in network.unet_loras],
        "text_encoders": [[name for name in te_names if name.startswith(prefix)] for prefix in prefixes],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd_scripts", type=Path, required=True, help="git directory of kohya-ss/sd-scripts")
    parser.add_argument("--revision", default="HEAD")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if int(transformers.__version__.split(".")[0]) >= 5:
        sys.exit(f"run with transformers 4.x as kohya does (found {transformers.__version__}): .venv-lowest")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        commit = copy_kohya_modules(args.sd_scripts, args.revision, Path(tmp))
        sys.path.insert(0, tmp)
        for family in ("sd1", "sd2", "sdxl"):
            names = kohya_names(family)
            record = {
                "about": f"LoRA module names kohya-ss/sd-scripts networks/lora.py creates for a full-size "
                f"{family} model (default targets, no conv_dim), written by scripts/kohya_lora_names.py",
                "sd_scripts_commit": commit,
                "transformers": transformers.__version__,
                **names,
            }
            path = args.out / f"{family}.json"
            path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            counts = [len(names["unet"]), *map(len, names["text_encoders"])]
            print(f"{path}: U-Net, text encoder(s): {counts}")


if __name__ == "__main__":
    main()
