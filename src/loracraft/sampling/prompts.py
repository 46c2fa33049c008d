"""The prompts of sample images (`--sample_prompts`), read as kohya reads them (train_util.load_prompts).

- `.txt`: one prompt a line; blank lines and lines starting with `#` are skipped. A line is split on
  " --" (kohya's `line_to_prompt_dict`): the first piece is the prompt, each other piece an option:
  `--n` negative prompt, `--w`/`--h` size, `--d` seed, `--s` steps, `--l` CFG scale, `--ss` sampler.
  kohya's options for other model types (`--g` embedded guidance, `--cn` ControlNet image, `--ctr`,
  `--rcfg`, `--fs`) are read and left out with a note: they do nothing for SD1/SD2/SDXL.
- `.toml`: a `[prompt]` table of defaults and `[[prompt.subset]]` entries, each entry a prompt with
  kohya's keys (prompt, negative_prompt, width, height, seed, sample_steps, scale, sample_sampler); an
  entry's keys override the defaults (kohya fails with a TypeError when both set one).
- `.json`: a list of such tables, or of strings read as `.txt` lines.

kohya's defaults: 512x512, 30 steps, CFG 7.5, a random seed. A size is rounded down to a multiple of 8
(at least 64) and steps are clamped to 1..1000, as kohya does. Where kohya silently ignores a bad value
(`--w abc`, `--ss euler_ancestral`, a sampler it does not know becomes DDIM), loracraft stops with one
line naming the file, the line or entry, and the fix. Two other differences: kohya also reads options
from the prompt piece itself (a prompt starting "d 1girl" gets seed 1); and "--d -1", A1111's "random
seed", means a random seed here, where kohya ignores it (which is also a random seed).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loracraft.config.sample_options import SAMPLERS, SampleOptions
from loracraft.config.suggest import did_you_mean
from loracraft.errors import UserError
from loracraft.sampling.samplers import check_sampler

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_SIZE = 512
DEFAULT_STEPS = 30
DEFAULT_SCALE = 7.5
MAX_STEPS = 1000
MIN_SIDE = 64
RANDOM_SEED = -1
"""A1111's "random seed", accepted for --d / seed."""

# kohya's prompt-dict key of each .txt option.
TEXT_OPTIONS = {
    "w": "width", "h": "height", "d": "seed", "s": "sample_steps", "l": "scale", "n": "negative_prompt",
    "ss": "sample_sampler", "g": "guidance_scale", "cn": "controlnet_image", "ctr": "cfg_trunc_ratio",
    "rcfg": "renorm_cfg", "fs": "flow_shift",
}  # fmt: skip
# kohya's options for other model families: what they do there.
OTHER_FAMILIES = {
    "guidance_scale": "FLUX's embedded guidance",
    "controlnet_image": "a ControlNet image",
    "cfg_trunc_ratio": "Lumina's CFG truncation",
    "renorm_cfg": "Lumina's CFG renormalisation",
    "flow_shift": "a flow-matching shift",
}
_TEXT_NAMES = {key: name for name, key in TEXT_OPTIONS.items()}


@dataclass(frozen=True)
class SamplePrompt:
    """One sample image to draw, with kohya's defaults filled in and its size and steps made valid."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    seed: int | None
    """None: a new random seed at every drawing, as kohya does."""
    steps: int
    scale: float
    sampler: str | None
    """The prompt's own sampler (--ss); None: the run's --sample_sampler."""
    index: int
    """The prompt's place in its file, from 0: the `_00_` of kohya's file names."""


@dataclass(frozen=True)
class PromptFile:
    path: Path
    prompts: tuple[SamplePrompt, ...]
    notes: tuple[str, ...]
    """What was read but does not apply (options for other model types, unknown options), once each."""


@dataclass(frozen=True)
class _Entry:
    """One prompt as written: `values` under kohya's prompt-dict keys; `unknown_options` the .txt options
    kohya does not know (None for a TOML/JSON table, whose unknown keys are among `values`)."""

    where: str
    values: dict[str, Any]
    unknown_options: list[str] | None = None


def read_prompts(path: str | Path, flag: str = "--sample_prompts") -> PromptFile:
    """The prompts of a .txt, .toml or .json file; any problem is one UserError naming `flag` or the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[str, str], list[_Entry]]] = {
        ".txt": _text_entries,
        ".toml": _toml_entries,
        ".json": _json_entries,
    }
    if suffix not in readers:
        raise UserError(
            f"{flag} {path}: a prompt file is .txt, .toml or .json, not {suffix or 'without a suffix'}"
        )
    if not path.is_file():
        raise UserError(f"{flag} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{flag} {path} cannot be read: {err}") from None
    entries = readers[suffix](text, f"{flag} {path}")
    if not entries:
        raise UserError(
            f"{flag} {path} holds no prompts; write one prompt a line (lines starting with # are comments)"
        )
    notes: dict[str, None] = {}
    prompts = tuple(
        _sample_prompt(entry, index, f"{path} {entry.where}", notes) for index, entry in enumerate(entries)
    )
    return PromptFile(path, prompts, tuple(notes))


def check_sample_prompts(options: SampleOptions) -> PromptFile | None:
    """The run's prompt file, read and its samplers checked before training, so a bad one stops the run
    at its start (None when the run draws no samples)."""
    if not options.draws_samples:
        return None
    prompt_file = read_prompts(options.sample_prompts)
    check_prompt_samplers(options.sample_sampler, prompt_file.prompts, options.sample_prompts)
    return prompt_file


def check_prompt_samplers(
    default: str, prompts: Sequence[SamplePrompt], source: str | Path, default_flag: str = "--sample_sampler"
) -> None:
    """Every prompt's sampler (its own, or `default`, which `default_flag` chose) can draw it."""
    for prompt in prompts:
        where = f"{source} prompt {prompt.index + 1}"
        if prompt.sampler is None:
            check_sampler(default, prompt.steps, f"{default_flag} ({where})")
        else:
            check_sampler(prompt.sampler, prompt.steps, where)


def line_values(line: str) -> tuple[dict[str, str], list[str]]:
    """kohya's line_to_prompt_dict: the prompt and its options under kohya's prompt-dict keys (values as
    written), and the options kohya does not know (which it ignores)."""
    prompt, *options = line.split(" --")
    values = {"prompt": prompt.strip()}
    unknown = []
    for option in options:
        name, _, value = option.partition(" ")
        key = TEXT_OPTIONS.get(name.lower())
        if key is None:
            unknown.append(f"--{option.strip()}")
        else:
            values[key] = value.strip()
    return values, unknown


def _text_entries(text: str, source: str) -> list[_Entry]:
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            entries.append(_Entry(f"line {number}", *line_values(line)))
    return entries


def _toml_entries(text: str, source: str) -> list[_Entry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{source} cannot be read: {err}") from None
    table = data.get("prompt")
    subsets = table.get("subset") if isinstance(table, dict) else None
    if not isinstance(subsets, list) or not all(isinstance(subset, dict) for subset in subsets):
        raise UserError(
            f"{source}: a TOML prompt file holds a [prompt] table (the defaults) and one [[prompt.subset]] "
            "table per prompt"
        )
    defaults = {key: value for key, value in table.items() if key != "subset"}
    return [
        _Entry(f"[[prompt.subset]] {number}", {**defaults, **subset})
        for number, subset in enumerate(subsets, 1)
    ]


def _json_entries(text: str, source: str) -> list[_Entry]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source} cannot be read: {err}") from None
    if not isinstance(data, list):
        raise UserError(f"{source}: a JSON prompt file holds a list of prompts (strings or tables)")
    entries = []
    for number, entry in enumerate(data, start=1):
        if isinstance(entry, str):
            entries.append(_Entry(f"entry {number}", *line_values(entry.strip())))
        elif isinstance(entry, dict):
            entries.append(_Entry(f"entry {number}", entry))
        else:
            raise UserError(
                f"{source} entry {number}: {entry!r} is neither a prompt string nor a table of prompt, "
                "negative_prompt, width, height, seed, sample_steps, scale, sample_sampler"
            )
    return entries


def _sample_prompt(entry: _Entry, index: int, where: str, notes: dict[str, None]) -> SamplePrompt:
    """One entry -> a SamplePrompt; `where` names the file and the line or entry in errors and notes."""
    values = entry.values
    from_text = entry.unknown_options is not None

    def label(key: str) -> str:
        return f"--{_TEXT_NAMES[key]}" if from_text else key

    for option in entry.unknown_options or ():
        notes[
            f"{where}: {option} is not one of kohya's sample options (--n --w --h --d --s --l --ss); ignored"
        ] = None
    for key in values:
        if key in OTHER_FAMILIES:
            notes[
                f"{where}: {label(key)} sets {OTHER_FAMILIES[key]}, which SD1/SD2/SDXL do not have; ignored"
            ] = None
        elif key not in _KNOWN_KEYS:
            notes[
                f"{where}: {key!r} is not one of kohya's prompt keys{did_you_mean(key, _KNOWN_KEYS)}; ignored"
            ] = None
    sampler = values.get("sample_sampler")
    if sampler is not None and sampler not in SAMPLERS:
        raise UserError(
            f"{where}: {label('sample_sampler')} {sampler!r} is not one of kohya's samplers"
            f"{did_you_mean(str(sampler), SAMPLERS)}; use one of {', '.join(SAMPLERS)}"
        )
    seed = _whole(values.get("seed"), label("seed"), where, RANDOM_SEED, "1234")
    steps = _whole(values.get("sample_steps"), label("sample_steps"), where, 0, "30")
    negative = values.get("negative_prompt")
    return SamplePrompt(
        prompt=_text(values.get("prompt", ""), "prompt", where),
        negative_prompt=_text(negative, label("negative_prompt"), where) if negative else None,
        width=_side(_whole(values.get("width"), label("width"), where, 0, "768")),
        height=_side(_whole(values.get("height"), label("height"), where, 0, "768")),
        seed=None if seed in (None, RANDOM_SEED) else seed,
        steps=DEFAULT_STEPS if steps is None else max(1, min(MAX_STEPS, steps)),
        scale=_scale(values.get("scale"), label("scale"), where),
        sampler=sampler,
        index=index,
    )


_KNOWN_KEYS = ("prompt", *TEXT_OPTIONS.values())


def _side(value: int | None) -> int:
    # kohya: "round to divisible by 8", at least 64.
    value = DEFAULT_SIZE if value is None else value
    return max(MIN_SIDE, value - value % 8)


def _text(value: Any, label: str, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {label} must be text, not {value!r}")
    return value


def _whole(value: Any, label: str, where: str, minimum: int, example: str) -> int | None:
    """A whole number from a .txt option's text or a TOML/JSON value; None when not given."""
    if value is None:
        return None
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.removeprefix("-").isdigit():
        number = int(value)
    if number is None or not minimum <= number < 2**64:
        lowest = "-1 (random) or more" if minimum == RANDOM_SEED else f"{minimum} or more"
        raise UserError(
            f"{where}: {label} {value!r} is not a whole number of {lowest}; write e.g. {_spelt(label, example)}"
        )
    return number


def _scale(value: Any, label: str, where: str) -> float:
    if value is None:
        return DEFAULT_SCALE
    try:
        scale = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        scale = math.nan
    if not math.isfinite(scale) or scale < 0:
        raise UserError(
            f"{where}: {label} {value!r} is not a CFG scale (a number of 0 or more); write e.g. {_spelt(label, '7.5')}"
        )
    return scale


def _spelt(label: str, value: str) -> str:
    """A value as the file writes it: `--w 768` on a .txt line, `width = 768` in a table."""
    return f"{label} {value}" if label.startswith("--") else f"{label} = {value}"
