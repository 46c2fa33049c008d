"""Which kind of kohya config a file or command line is: a LoRA for SD1.x/SD2.x/SDXL is imported, any other
kind (DreamBooth, fine-tuning, Textual Inversion, Flux.1, SD3...) is refused in one line that says what it is.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from loracraft.errors import UserError

# sd-scripts' training scripts: the two LoRA trainers loracraft rebuilds, and what every other one trains.
LORA_SCRIPTS = {"train_network.py": "SD1.x/SD2.x", "sdxl_train_network.py": "SDXL"}
OTHER_SCRIPTS = {
    "train_db.py": "a DreamBooth (full model) training",
    "fine_tune.py": "a full fine-tuning",
    "sdxl_train.py": "an SDXL full fine-tuning",
    "train_textual_inversion.py": "a Textual Inversion training",
    "sdxl_train_textual_inversion.py": "an SDXL Textual Inversion training",
    "flux_train_network.py": "a Flux.1 LoRA training",
    "flux_train.py": "a Flux.1 full fine-tuning",
    "sd3_train_network.py": "an SD3 LoRA training",
    "sd3_train.py": "an SD3 full fine-tuning",
    "lumina_train_network.py": "a Lumina LoRA training",
    "hunyuan_image_train_network.py": "a HunyuanImage LoRA training",
    "anima_train_network.py": "an Anima LoRA training",
    "train_controlnet.py": "a ControlNet training",
    "sdxl_train_control_net.py": "an SDXL ControlNet training",
}
# The kohya_ss GUI's checkboxes for the other model families (each switches the LoRA tab to their trainer).
GUI_FAMILY_CHECKBOXES = {
    "flux1_checkbox": "Flux.1",
    "sd3_checkbox": "SD3",
    "hunyuan_image_checkbox": "HunyuanImage",
    "anima_checkbox": "Anima",
    "lumina_checkbox": "Lumina",
}
GUI_FAMILY_LORA_TYPES = {"Flux1": "Flux.1", "Flux1 OFT": "Flux.1", "Anima": "Anima", "Lumina": "Lumina",
                         "HunyuanImage-2.1": "HunyuanImage"}  # fmt: skip
TEXTUAL_INVERSION_KEYS = ("token_string", "init_word", "num_vectors_per_token")
FINE_TUNE_KEYS = ("image_folder", "train_dir", "dataset_repeats", "caption_metadata_filename",
                  "latent_metadata_filename", "use_latent_files", "create_caption", "create_buckets")  # fmt: skip
# kohya's --network_module values for other families' LoRA.
OTHER_NETWORK_MODULES = {
    "networks.lora_flux": "a Flux.1 LoRA config",
    "networks.oft_flux": "a Flux.1 OFT config",
    "networks.lora_sd3": "an SD3 LoRA config",
    "networks.lora_lumina": "a Lumina LoRA config",
    "networks.lora_hunyuan_image": "a HunyuanImage LoRA config",
    "networks.lora_anima": "an Anima LoRA config",
}


def refuse(source: str, what: str) -> UserError:
    return UserError(
        f"{source} is {what}, not a LoRA for SD1.x/SD2.x/SDXL: loracraft trains only those "
        "(a kohya_ss GUI LoRA-tab config or train_network.py / sdxl_train_network.py flags)"
    )


def gui_json_family(data: dict[str, Any], source: str) -> str:
    """'SDXL' or 'SD1.x/SD2.x' for a kohya_ss GUI LoRA config; UserError naming any other kind."""
    if _is_metadata_file(data):
        raise UserError(
            f"{source} is a kohya fine-tuning metadata file (captions per image), not a training config"
        )
    for checkbox, family in GUI_FAMILY_CHECKBOXES.items():
        if data.get(checkbox) is True:
            raise refuse(source, f"a kohya_ss GUI {family} config ({checkbox} is on)")
    if (family := GUI_FAMILY_LORA_TYPES.get(str(data.get("LoRA_type")))) is not None:
        raise refuse(source, f"a kohya_ss GUI {family} LoRA config (LoRA_type {data['LoRA_type']})")
    if any(key in data for key in TEXTUAL_INVERSION_KEYS):
        raise refuse(source, "a kohya_ss GUI Textual Inversion config")
    if "LoRA_type" not in data and "network_dim" not in data:
        if any(key in data for key in FINE_TUNE_KEYS):
            raise refuse(source, "a kohya_ss GUI fine-tuning config")
        raise refuse(source, "a kohya_ss GUI DreamBooth config (it has no LoRA_type or network_dim)")
    return "SDXL" if data.get("sdxl") is True else "SD1.x/SD2.x"


def _is_metadata_file(data: dict[str, Any]) -> bool:
    return bool(data) and all(
        isinstance(value, dict) and ("caption" in value or "tags" in value) for value in data.values()
    )


def script_family(script: str, source: str) -> str:
    """'SDXL' or 'SD1.x/SD2.x' for sd-scripts' LoRA trainers; UserError naming any other script."""
    name = PurePath(script.replace("\\", "/")).name
    if name in LORA_SCRIPTS:
        return LORA_SCRIPTS[name]
    what = OTHER_SCRIPTS.get(name, f"a run of {name}")
    raise refuse(source, f"{what} ({name})")


def network_module_kind(module: str, source: str) -> None:
    """Refuse a kohya TOML or command line whose --network_module trains another family."""
    if module in OTHER_NETWORK_MODULES:
        raise refuse(source, f"{OTHER_NETWORK_MODULES[module]} (network_module {module})")
