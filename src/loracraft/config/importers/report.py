"""What an import found: every key of the file either mapped to a TrainConfig field or ignored with a reason.

The kohya_ss GUI drops the keys it does not know without a word (kohya_ss #1618, #2845); an import here
never does: `mapped + ignored` holds every key of the source, in the source's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MappedKey:
    """`key` of the source sets `field` to `value`; None means the field keeps its default."""

    key: str
    field: str
    value: Any


@dataclass(frozen=True)
class IgnoredKey:
    """`lost`: the key holds a value that changes a run, and that run will not have it."""

    key: str
    reason: str
    lost: bool = False


@dataclass
class ImportReport:
    """`values`: TrainConfig field -> value, ready for `build_config`; `source_kind` says what was read."""

    source_kind: str
    values: dict[str, Any] = field(default_factory=dict)
    mapped: list[MappedKey] = field(default_factory=list)
    ignored: list[IgnoredKey] = field(default_factory=list)
    # The kohya_ss GUI keeps sample prompts as text in the config; loracraft reads them from a file.
    sample_prompt_text: str | None = None

    def map(self, key: str, field_name: str, value: Any) -> None:
        self.mapped.append(MappedKey(key, field_name, value))
        if value is not None:  # None leaves the field to its default or to another key that set it
            self.values[field_name] = value

    def ignore(self, key: str, reason: str, lost: bool = False) -> None:
        self.ignored.append(IgnoredKey(key, reason, lost))

    @property
    def keys(self) -> list[str]:
        """Every key the report accounts for."""
        return [entry.key for entry in self.mapped] + [entry.key for entry in self.ignored]


def report_lines(report: ImportReport) -> list[str]:
    """One line per key, the mapped ones first: `mapped  key -> field = value` / `ignored key: reason`."""
    width = max((len(key) for key in report.keys), default=0)
    lines = [f"read {report.source_kind}"]
    for entry in report.mapped:
        shown = "(default)" if entry.value is None else _shown(entry.value)
        target = entry.key if entry.field == entry.key else f"{entry.key.ljust(width)} -> {entry.field}"
        lines.append(f"mapped   {target.ljust(width)} = {shown}")
    for entry in report.ignored:
        lines.append(f"ignored  {entry.key.ljust(width)}   {entry.reason}")
    lines.append(f"{len(report.mapped)} keys mapped, {len(report.ignored)} ignored")
    return lines


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "[]"
    return repr(value) if isinstance(value, str) else str(value)
