"""The kohya_ss GUI's JSON configs and presets (its LoRA tab) as TrainConfig values.

The GUI saves its form: its own key names (`epoch`, `max_resolution`, `optimizer`, `LoRA_type`), numbers
written as strings, "" and 0 for "not set", and keys older versions wrote. When it trains, it turns them
into sd-scripts flags (kohya_gui/lora_gui.py, train_model); this module does the same translation, key by
key, and says for every key what became of it.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

from loracraft.config.fields import alias_names
from loracraft.config.importers.gui_keys import ignore_reason, is_off, unknown_key
from loracraft.config.importers.gui_network import NETWORK_FORM_KEYS, UNSUPPORTED, GuiNetwork, gui_network
from loracraft.config.importers.kinds import gui_json_family
from loracraft.config.importers.report import ImportReport, MappedKey
from loracraft.config.schema import TrainConfig

FIELDS = TrainConfig.model_fields
ALIASES = alias_names(TrainConfig)
# The GUI passes None (sd-scripts' default) for these when they are 0 (train_model's config_toml_data).
ZERO_IS_UNSET = frozenset({
    "clip_skip", "ip_noise_gamma", "max_timestep", "min_timestep", "max_train_epochs", "max_train_steps",
    "min_snr_gamma", "sample_every_n_epochs", "sample_every_n_steps", "save_every_n_epochs",
    "save_every_n_steps", "save_last_n_steps", "save_last_n_steps_state", "save_last_n_epochs",
    "save_last_n_epochs_state", "seed", "unet_lr", "v_pred_like_loss", "vae_batch_size",
    "adaptive_noise_scale", "noise_offset", "multires_noise_iterations", "network_dropout", "scale_weight_norms",
})  # fmt: skip
# Which noise settings the GUI passes, by its noise_offset_type selector.
NOISE_SETTINGS = {
    "Original": ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength"),
    "Multires": ("multires_noise_iterations", "multires_noise_discount"),
}
# Keys the GUI reads only when sdxl is on, and the flags they become.
SDXL_KEYS = {
    "sdxl_no_half_vae": "no_half_vae",
    "sdxl_cache_text_encoder_outputs": "cache_text_encoder_outputs",
}
LORA_TYPE_STANDARD = "Standard"
EXTRA_FLAGS_KEY = "additional_parameters"


def import_gui_json(data: dict[str, Any], source: str) -> ImportReport:
    """Every key of a kohya_ss GUI LoRA config, mapped to a field or ignored with a reason."""
    family = gui_json_family(data, source)
    network_type = _network_type(data)
    report = ImportReport(f"{source}: a kohya_ss GUI LoRA config ({family}, LoRA_type {network_type})")
    network = gui_network(data, network_type)
    if network.args:
        report.values["network_args"] = network.args
    special = _special_keys(data, network_type, network)
    # The GUI appends additional_parameters after --config_file: its flags win, so they are read last.
    ordered = sorted(data.items(), key=lambda item: item[0] == EXTRA_FLAGS_KEY)
    for key, value in ordered:
        if key in special:
            special[key](key, value, report)
        elif key in FIELDS or key in ALIASES:
            field_name = ALIASES.get(key, key)
            report.map(key, field_name, _field_value(field_name, value))
        else:
            reason, lost = ignore_reason(key, value) or unknown_key(value)
            report.ignore(key, reason, lost)
    return report


def _network_type(data: dict[str, Any]) -> str:
    lora_type = str(data.get("LoRA_type") or LORA_TYPE_STANDARD)
    return "LyCORIS/LoCon" if lora_type == "LoCon" else lora_type  # the GUI's own rename (update_my_data)


Handler = Callable[[str, Any, ImportReport], None]


def _special_keys(data: dict[str, Any], network_type: str, network: GuiNetwork) -> dict[str, Handler]:
    """The keys the GUI does not pass under their own name, each with how it becomes flags."""
    sdxl = data.get("sdxl") is True
    noise_type = str(data.get("noise_offset_type") or "Original")
    epochs = _number(data.get("epoch"))
    length_set = bool(_number(data.get("max_train_steps")) or _number(data.get("max_train_epochs")))
    te_lr = _number(data.get("text_encoder_lr")) or 0
    unet_lr = _number(data.get("unet_lr")) or 0

    def lora_type(key: str, value: Any, report: ImportReport) -> None:
        if network_type in UNSUPPORTED:
            report.ignore(key, UNSUPPORTED[network_type], True)
            return
        report.map(key, "network_module", network.module)
        if network.from_type:
            report.mapped.append(MappedKey(key, "network_args", " ".join(network.from_type)))

    def network_form_key(key: str, value: Any, report: ImportReport) -> None:
        # Its words are in network_args already (gui_network), in the GUI's order.
        if key in network.left_out:
            report.ignore(key, network.left_out[key])
        elif key in network.words:
            report.mapped.append(MappedKey(key, "network_args", " ".join(network.words[key]) or None))
        else:
            report.ignore(key, f"LoRA_type {network_type} does not pass it ({value!r})")

    def sdxl_switch(key: str, value: Any, report: ImportReport) -> None:
        report.ignore(key, "loracraft tells SDXL from the model file: nothing to set")

    def sdxl_only(key: str, value: Any, report: ImportReport) -> None:
        if sdxl:
            report.map(key, SDXL_KEYS[key], bool(value) or None)
        else:
            report.ignore(key, f"an SDXL setting and sdxl is off: the GUI does not pass it ({value!r})")

    def epoch(key: str, value: Any, report: ImportReport) -> None:
        if length_set:
            report.ignore(
                key,
                "max_train_steps or max_train_epochs sets the length; the GUI reads epoch only when both are 0",
            )
        else:  # the GUI turns it into max_train_steps = images x repeats / batch / accumulation x epoch
            report.map(key, "max_train_epochs", int(epochs) if epochs else None)

    def cycles(key: str, value: Any, report: ImportReport) -> None:
        given = _number(value)
        report.map(key, "lr_scheduler_num_cycles", int(given) if given is not None else _int_or_none(epochs))

    def warmup_percent(key: str, value: Any, report: ImportReport) -> None:
        percent = _number(value) or 0
        if _number(data.get("lr_warmup_steps")):
            report.ignore(key, "lr_warmup_steps is set and wins over the percentage")
        else:
            report.map(key, "lr_warmup_steps", f"{percent:g}%" if percent else None)

    def renamed(field_name: str) -> Handler:
        return lambda key, value, report: report.map(key, field_name, _field_value(field_name, value))

    def word_list(key: str, value: Any, report: ImportReport) -> None:
        # The GUI's text box: 'a=1 b="x"' -> ['a=1', 'b=x'] (train_model: replace('"', '').split()).
        words = value if isinstance(value, list) else str(value).replace('"', "").split()
        report.map(key, key, words or None)

    def attention(key: str, value: Any, report: ImportReport) -> None:
        choice = {True: "xformers", False: "none"}.get(value, value) if isinstance(value, bool) else value
        if choice == "xformers":
            report.map(key, "xformers", True)
        else:  # "sdpa" is loracraft's default; "none" is kohya's plain attention
            report.map(key, "sdpa", None if choice == "sdpa" else False)

    def noise_selector(key: str, value: Any, report: ImportReport) -> None:
        settings = ", ".join(NOISE_SETTINGS.get(noise_type, ()))
        report.ignore(key, f"the GUI's selector: {noise_type} passes {settings or 'no noise settings'}")

    def noise_setting(key: str, value: Any, report: ImportReport) -> None:
        if key in NOISE_SETTINGS.get(noise_type, ()):
            report.map(key, key, _field_value(key, value))
        else:
            report.ignore(key, f"noise_offset_type is {noise_type}: the GUI does not pass it ({value!r})")

    def text_encoder_rate(key: str, value: Any, report: ImportReport) -> None:
        # 0 or empty: the text encoders train at learning_rate unless unet_lr is set (train_model).
        report.map(key, "text_encoder_lr", [te_lr] if te_lr else None)
        if te_lr == 0 and unet_lr != 0:
            report.map(key, "network_train_unet_only", True)
        if te_lr != 0 and unet_lr == 0:
            report.map(key, "network_train_text_encoder_only", True)

    def stop_text_encoder(key: str, value: Any, report: ImportReport) -> None:
        percent = _number(value) or 0  # the GUI shows it as a percentage of all steps
        report.map(key, "stop_text_encoder_training", f"{percent:g}%" if percent else None)

    def old_network_weights(key: str, value: Any, report: ImportReport) -> None:
        if data.get("network_weights"):
            report.ignore(key, "the old name of network_weights, which is also given and wins")
        else:
            report.map(key, "network_weights", value or None)

    def old_8bit_adam(key: str, value: Any, report: ImportReport) -> None:
        if "optimizer" in data:
            report.ignore(key, "the old switch for AdamW8bit; optimizer is given and wins")
        else:
            report.map(key, "optimizer_type", "AdamW8bit" if value else "AdamW")

    def old_wandb(key: str, value: Any, report: ImportReport) -> None:
        if data.get("log_with"):
            report.ignore(key, "the old switch for log_with wandb; log_with is given and wins")
        else:
            report.map(key, "log_with", "wandb" if str(value) == "True" else None)

    def prompts(key: str, value: Any, report: ImportReport) -> None:
        # The GUI holds the prompts' text and writes it to a prompt file when it trains; so does the caller.
        text = str(value).strip()
        report.sample_prompt_text = text or None
        report.mapped.append(
            MappedKey(key, "sample_prompts", f"<{len(text.splitlines())} prompt lines>" if text else None)
        )

    def flux_only(key: str, value: Any, report: ImportReport) -> None:
        report.ignore(
            key, f"the GUI passes it only to Flux.1's trainer ({value!r} not applied)", not is_off(value)
        )

    def extra_flags(key: str, value: Any, report: ImportReport) -> None:
        from loracraft.config.importers.command_line import import_flag_text

        if not str(value).strip():
            report.ignore(key, "extra sd-scripts flags (none here)")
            return
        report.ignore(key, f"extra sd-scripts flags, each listed as {key}: --flag")
        extra = import_flag_text(str(value), key)
        for entry in extra.mapped:
            report.map(f"{key}: {entry.key}", entry.field, entry.value)
        for entry in extra.ignored:
            report.ignore(f"{key}: {entry.key}", entry.reason)

    handlers: dict[str, Handler] = {
        "LoRA_type": lora_type,
        **dict.fromkeys(NETWORK_FORM_KEYS, network_form_key),
        "sdxl": sdxl_switch,
        **dict.fromkeys(SDXL_KEYS, sdxl_only),
        "epoch": epoch,
        "lr_scheduler_num_cycles": cycles,
        "lr_warmup": warmup_percent,
        "max_resolution": renamed("resolution"),
        "optimizer": renamed("optimizer_type"),
        "optimizer_args": word_list,
        "lr_scheduler_args": word_list,
        "xformers": attention,
        "noise_offset_type": noise_selector,
        **{key: noise_setting for keys in NOISE_SETTINGS.values() for key in keys},
        "text_encoder_lr": text_encoder_rate,
        "stop_text_encoder_training": stop_text_encoder,
        "stop_text_encoder_training_pct": stop_text_encoder,
        "lora_network_weights": old_network_weights,
        "use_8bit_adam": old_8bit_adam,
        "use_wandb": old_wandb,
        "sample_prompts": prompts,
        EXTRA_FLAGS_KEY: extra_flags,
        "fp8_base_unet": flux_only,
    }
    return handlers


def _field_value(field_name: str, value: Any) -> Any:
    """The GUI's spelling of a value as the field takes it: "" -> default, "1e-4" -> 0.0001, 0 -> default
    where the GUI passes nothing for 0."""
    if value == "" or value is None:
        return None
    if field_name in ZERO_IS_UNSET and is_off(value):
        return None
    if isinstance(value, str) and not _takes_text(field_name):
        number = _number(value)
        return value if number is None else number
    if isinstance(value, float) and value.is_integer() and _takes_int(field_name):
        return int(value)  # "bucket_reso_steps": 1.0
    if field_name == "persistent_data_loader_workers":
        return bool(value)
    return value


def _takes_text(field_name: str) -> bool:
    annotation = FIELDS[field_name].annotation
    return (
        annotation is str
        or str in typing.get_args(annotation)
        or typing.get_origin(annotation) is typing.Literal
    )


def _takes_int(field_name: str) -> bool:
    annotation = FIELDS[field_name].annotation
    return annotation is int or int in typing.get_args(annotation)


def _number(value: Any) -> int | float | None:
    """A number from the GUI's int, float or string spelling; None for "" or anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else number


def _int_or_none(value: int | float | None) -> int | None:
    return int(value) if value else None
