"""An import made usable: the values for a run (with the sample prompts written to a file), the notes
`train --config_file GUI.json` prints, and the TOML `config import` writes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from loracraft.atomic import write_text_atomic
from loracraft.config.importers.kohya_gui_json import import_gui_json
from loracraft.config.importers.report import ImportReport
from loracraft.config.load import build_config, changed_config_toml
from loracraft.config.schema import TrainConfig


def gui_json_values(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """`--config_file GUI.json`: the values, with a note for every key whose value the run will not have."""
    report = import_gui_json(data, str(path))
    for line in ignored_notes(report):
        print(f"note: {line}", file=sys.stderr)
    if note := write_prompt_file(report, path.with_suffix(".prompts.txt")):
        print(f"note: {note}", file=sys.stderr)
    return report.values


def ignored_notes(report: ImportReport) -> list[str]:
    """A line per ignored key that held a value, and one line counting the others."""
    source = report.source_kind.split(": ", 1)[0]
    lost = [entry for entry in report.ignored if entry.lost]
    lines = [f"{source}: {entry.key} ignored: {entry.reason}" for entry in lost]
    if rest := len(report.ignored) - len(lost):
        lines.append(
            f"{source}: {rest} other keys ignored (off, or not used by LoRA training); "
            f"`loracraft config import {source}` lists them"
        )
    return lines


def write_prompt_file(report: ImportReport, path: Path) -> str | None:
    """The GUI's sample prompts (text in its config) as the prompt file `sample_prompts` names; a line
    saying so when the file was written (a file already holding them is used as it is)."""
    if report.sample_prompt_text is None:
        return None
    text = report.sample_prompt_text + "\n"
    report.values["sample_prompts"] = str(path)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return None
    write_text_atomic(path, text)
    return f"wrote the config's sample prompts to {path}"


def imported_config(report: ImportReport) -> TrainConfig:
    """The import validated as a run (one line naming the key's field when a value is refused)."""
    source = report.source_kind.split(": ", 1)[0]
    return build_config(report.values, {}, f"{source}: ")


def imported_toml(report: ImportReport, config: TrainConfig) -> str:
    """The TOML `config import` writes: where it came from, the keys it could not apply, then the settings
    that differ from the defaults."""
    header = [f"# Imported by `loracraft config import` from {report.source_kind}."]
    header.append(
        "# Settings at sd-scripts' defaults are left out. Train with: loracraft train --config_file THIS"
    )
    lost = [entry for entry in report.ignored if entry.lost]
    if lost:
        header.append("# Not applied (loracraft config import lists every key):")
        header.extend(f"#   {entry.key}: {entry.reason}" for entry in lost)
    return "\n".join(header) + "\n\n" + changed_config_toml(config)
