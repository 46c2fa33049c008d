"""sd-scripts' own flag names, as a kohya TOML config_file or a pasted command line gives them."""

from __future__ import annotations

from typing import Any

from loracraft.config.fields import alias_names
from loracraft.config.importers.gui_keys import ignore_reason, is_off, unknown_key
from loracraft.config.importers.kinds import network_module_kind
from loracraft.config.importers.report import ImportReport
from loracraft.config.schema import TrainConfig
from loracraft.networks.network_spec import NETWORK_ARG_KEYS

FIELDS = TrainConfig.model_fields
ALIASES = alias_names(TrainConfig)
# Keys the kohya_ss GUI writes into its generated TOML for itself; sd-scripts reads the TOML without them.
GUI_TOML_EXTRAS = frozenset({"epoch", "noise_offset_type"})


def map_kohya_setting(key: str, value: Any, report: ImportReport, source: str, written: str = "") -> None:
    """One sd-scripts setting: a TrainConfig field (or kohya's old spelling of one), or ignored with why.
    `written`: the key as the report shows it (`--flag` on a command line)."""
    shown = written or key
    if key == "network_module":
        network_module_kind(str(value), source)
    if key in FIELDS or key in ALIASES:
        report.map(shown, ALIASES.get(key, key), value)
    elif key in NETWORK_ARG_KEYS:
        report.ignore(
            shown,
            f"a --network_args key, which sd-scripts does not read as a setting: give it as network_args "
            f"{key}={value}",
            not is_off(value),
        )
    elif key in GUI_TOML_EXTRAS:
        report.ignore(shown, "written by the kohya_ss GUI for itself; sd-scripts does not read it")
    else:
        reason, lost = ignore_reason(key, value) or unknown_key(value)
        report.ignore(shown, reason, lost)
