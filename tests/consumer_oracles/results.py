"""What a consumer makes of a file (Resolution), and of one module's parts (Verdict)."""

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple


@dataclass(frozen=True)
class ModuleMatch:
    consumer_name: str
    """The consumer's own name: A1111's layer name, ComfyUI's/Forge's weight key."""
    algorithm: str | None
    """What the consumer builds from the module's parts; None when nothing is applied."""
    keys: tuple[str, ...]


@dataclass
class Resolution:
    consumer: str
    by_module: dict[str, ModuleMatch]
    unresolved: list[str]
    ignored: dict[str, str]
    misapplied: dict[str, str]
    refusal: str | None

    @property
    def loads(self) -> bool:
        return self.refusal is None

    @property
    def fully_applied(self) -> bool:
        return self.loads and not self.unresolved and not self.ignored and not self.misapplied

    def algorithm_of(self, module: str) -> str | None:
        match = self.by_module.get(module)
        return match.algorithm if match else None

    def module_of(self, key: str) -> str | None:
        return self._module_by_key.get(key)

    @cached_property
    def _module_by_key(self) -> dict[str, str]:
        return {key: name for name, match in self.by_module.items() for key in match.keys}


class Verdict(NamedTuple):
    """What one consumer makes of one module's parts."""

    algorithm: str | None
    ignored: dict[str, str]  # part -> why
    misapplied: dict[str, str]  # part -> why
    unread: set[str]  # parts never read (Forge counts them)


class Abort(Exception):
    """The consumer fails on the whole file; the message says on what."""
