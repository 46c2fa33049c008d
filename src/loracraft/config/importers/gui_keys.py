"""The kohya_ss GUI's keys that are not training settings loracraft has, each with the reason it is ignored.

Taken from bmaltais/kohya_ss (kohya_gui/lora_gui.py's save_configuration parameters and the keys of its
presets and test configs). A key the tables do not know is reported as unknown, never dropped.
"""

from __future__ import annotations

from typing import Any

ACCELERATE_LAUNCH = frozenset({
    "num_cpu_threads_per_process", "num_processes", "num_machines", "multi_gpu", "gpu_ids",
    "main_process_port", "extra_accelerate_launch_args", "dynamo_mode", "dynamo_use_dynamic",
    "dynamo_use_fullgraph",
})  # fmt: skip
GUI_STATE = frozenset({"model_list", "training_preset", "file_path", "save_as_bool"})
HUB_UPLOAD = frozenset({
    "huggingface_repo_id", "huggingface_token", "huggingface_repo_type", "huggingface_repo_visibility",
    "huggingface_path_in_repo", "resume_from_huggingface", "save_state_to_huggingface", "async_upload",
})  # fmt: skip
OTHER_FAMILY_PREFIXES = ("flux1_", "sd3_", "hunyuan_", "anima_", "lumina_")
# Settings of the Flux.1 / SD3 / DiT trainers, which the GUI writes into every config.
OTHER_FAMILY = frozenset({
    "ae", "apply_t5_attn_mask", "blocks_to_swap", "clip_g", "clip_g_dropout_rate", "clip_l",
    "cpu_offload_checkpointing", "discrete_flow_shift", "double_blocks_to_swap", "guidance_scale",
    "logit_mean", "logit_std", "mem_eff_save", "mode_scale", "model_prediction_type", "model_type",
    "pos_emb_random_crop_rate", "save_clip", "save_t5xxl", "show_timesteps", "show_timesteps_resolution",
    "single_blocks_to_swap", "split_mode", "t5xxl", "t5xxl_device", "t5xxl_dtype", "t5xxl_lr",
    "t5xxl_max_token_length", "timestep_sampling", "train_blocks", "weighting_scheme", "train_t5xxl",
    "split_qkv", "img_attn_dim", "img_mlp_dim", "img_mod_dim", "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim",
    "single_dim", "single_mod_dim", "in_dims", "train_double_block_indices", "train_single_block_indices",
    "enable_all_linear", "ggpo_beta", "ggpo_sigma", "train_lora_ggpo", "disable_mmap_load_safetensors",
})  # fmt: skip
# Keys older GUIs wrote and the GUI no longer reads.
OLD_GUI_KEYS = frozenset({"conv_dims", "conv_alphas"})
METADATA_PREFIX = "metadata_"
# Keys of the GUI's other tabs (DreamBooth, fine-tuning) or settings sd-scripts dropped.
OTHER_REASONS = {
    "learning_rate_te": "a DreamBooth-tab setting: not used by LoRA training",
    "learning_rate_te1": "a DreamBooth-tab setting: not used by LoRA training",
    "learning_rate_te2": "a DreamBooth-tab setting: not used by LoRA training",
    "no_token_padding": "a DreamBooth-tab setting: not used by LoRA training",
    "lowvram": "removed from sd-scripts; the kohya_ss GUI no longer passes it",
    "skip_cache_check": "not supported yet (loracraft checks its latent caches itself)",
    "train_inpainting": "inpainting training: not supported yet",
}
# Of those, the ones the GUI's LoRA tab never passes to sd-scripts.
NOT_PASSED = frozenset(
    {"learning_rate_te", "learning_rate_te1", "learning_rate_te2", "no_token_padding", "lowvram"}
)


def is_off(value: Any) -> bool:
    """The GUI's ways of writing "unset" or "off": such a value changes nothing when ignored."""
    return value in ("", None, False, 0, "0", "none", "None", []) or value == 0.0


def ignore_reason(key: str, value: Any) -> tuple[str, bool] | None:
    """Why `key` is not read and whether the run loses its value; None for a key these tables do not know."""
    found = _category(key)
    if found is None:
        return None
    reason, applies = found
    if is_off(value):
        return f"{reason} (off here: nothing lost)", False
    if not applies:
        return f"{reason} ({value!r})", False
    return f"{reason}: {value!r} is not applied", True


def unknown_key(value: Any) -> tuple[str, bool]:
    if is_off(value):
        return f"unknown to loracraft ({value!r}: off, nothing lost)", False
    return f"unknown to loracraft: {value!r} is not applied", True


def _category(key: str) -> tuple[str, bool] | None:
    """(reason, whether the GUI would have applied the value to this run)."""
    if key in ACCELERATE_LAUNCH:
        return "an `accelerate launch` setting: give it to accelerate launch", False
    if key in GUI_STATE:
        return "the kohya_ss GUI's own state, not a training setting", False
    if key in HUB_UPLOAD:
        return "Hugging Face Hub upload: not supported (loracraft writes local files)", True
    if key.startswith(METADATA_PREFIX):
        return "modelspec metadata text: not supported yet", True
    if key in OTHER_FAMILY or key.startswith(OTHER_FAMILY_PREFIXES):
        return "a Flux.1/SD3/DiT setting: not applicable to SD1/SD2/SDXL", False
    if key in OLD_GUI_KEYS:
        return "an older kohya_ss GUI's key, which the GUI no longer reads", False
    if key in OTHER_REASONS:
        return OTHER_REASONS[key], key not in NOT_PASSED
    return None
