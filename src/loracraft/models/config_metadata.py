"""Hyperparameters that tensor shapes cannot reveal, carried in a single-file checkpoint's metadata.

Head counts, GroupNorm group counts, default sample sizes and the VAE scaling factor leave no trace in
weight shapes. A real SD1.5, SD2 or SDXL file needs none of them (its values are the defaults in
`configs/<family>/`); a file with other values (our tiny models) stores them as safetensors metadata
`loracraft.<component>_<field>`, JSON-encoded, so loading it gives back the model that was saved.
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any

# metadata key -> (component, config field)
METADATA_FIELDS: dict[str, tuple[str, str]] = {
    "loracraft.unet_attention_head_dim": ("unet", "attention_head_dim"),
    "loracraft.unet_norm_num_groups": ("unet", "norm_num_groups"),
    "loracraft.unet_sample_size": ("unet", "sample_size"),
    "loracraft.vae_norm_num_groups": ("vae", "norm_num_groups"),
    "loracraft.vae_sample_size": ("vae", "sample_size"),
    "loracraft.vae_scaling_factor": ("vae", "scaling_factor"),
    "loracraft.text_encoder_num_attention_heads": ("text_encoder", "num_attention_heads"),
    "loracraft.text_encoder_hidden_act": ("text_encoder", "hidden_act"),
    "loracraft.text_encoder_2_num_attention_heads": ("text_encoder_2", "num_attention_heads"),
    "loracraft.text_encoder_2_hidden_act": ("text_encoder_2", "hidden_act"),
}


def config_metadata(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Metadata entries for `configs` ({"unet": ..., "vae": ..., "text_encoder": ..., "text_encoder_2": ...}
    as plain dicts)."""
    return {
        key: json.dumps(configs[component][field])
        for key, (component, field) in METADATA_FIELDS.items()
        if field in configs.get(component, {})
    }


def models_config_metadata(unet: Any, vae: Any, text_encoders: Sequence[Any]) -> dict[str, str]:
    """config_metadata of a model's own modules (text encoders in kohya's TE1, TE2 order)."""
    configs = {"unet": dict(unet.config), "vae": dict(vae.config)}
    configs |= {
        name: model.config.to_dict()
        for name, model in zip(("text_encoder", "text_encoder_2"), text_encoders, strict=False)
    }
    return config_metadata(configs)


def overrides_from_metadata(metadata: Mapping[str, str], component: str) -> dict[str, Any]:
    """The config fields of `component` that `metadata` carries."""
    return {
        field: json.loads(metadata[key])
        for key, (owner, field) in METADATA_FIELDS.items()
        if owner == component and key in metadata
    }
