"""The output folder around a run: usable before any expensive work, swept of what a killed run left,
and `NAME.toml` saying whether the run finished.

A run that is killed while it saves leaves hidden temporary files (`.NAME-000002.safetensors.XXXX.tmp`,
`atomic.py`), a state folder being staged (`.NAME-000002-state.partial`, `state_folder.py`) or being
removed (`.NAME-000002-state.removed`); the next run of the same name removes them and says so. A state folder replaced at the moment of the kill waits
as `.NAME-state.old`: it is put back when the new one never arrived.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loracraft.errors import UserError
from loracraft.training.state_folder import REMOVED_SUFFIX, REPLACED_SUFFIX, STAGING_SUFFIX


def check_output_folder(output_dir: Path) -> None:
    """Create --output_dir and prove it takes a file, before the caches and the model cost any time."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise UserError(f"--output_dir {output_dir}: {write_problem(error)}") from None


def write_problem(error: OSError) -> str:
    """What an OSError of a write means to the user, and what to do."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC or error.errno == getattr(errno, "EDQUOT", None):
        return f"{reason}: the disk is full; free some space (or choose another --output_dir)"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{reason}: this folder cannot be written; choose another --output_dir or fix its permissions"
    return f"{reason}; choose another --output_dir"


def _stem_pattern(stem: str, tail: str) -> re.Pattern[str]:
    # NAME, NAME-000004 or NAME-step00000200, then `tail`: never the files of another run's name.
    return re.compile(rf"\.{re.escape(stem)}(-\d{{6}}|-step\d{{8}})?{tail}")


def clean_stale_files(output_dir: Path, stem: str, echo: Callable[[str], None]) -> None:
    """Remove what a killed run of `stem` left half-written; put back a replaced state that lost its
    replacement."""
    if not output_dir.is_dir():
        return
    temp_file = _stem_pattern(stem, r"\.[A-Za-z]+\..+\.tmp")
    staging = _stem_pattern(stem, rf"-state({re.escape(STAGING_SUFFIX)}|{re.escape(REMOVED_SUFFIX)})")
    replaced = _stem_pattern(stem, rf"-state{re.escape(REPLACED_SUFFIX)}")
    removed = []
    for path in sorted(output_dir.iterdir()):
        if temp_file.fullmatch(path.name) and path.is_file():
            path.unlink()
            removed.append(path.name)
        elif staging.fullmatch(path.name) and path.is_dir():
            shutil.rmtree(path)
            removed.append(path.name)
        elif replaced.fullmatch(path.name) and path.is_dir():
            original = path.with_name(path.name[1 : -len(REPLACED_SUFFIX)])
            if original.exists():
                shutil.rmtree(path)
                removed.append(path.name)
            else:
                os.replace(path, original)
                echo(f"note: put back {original.name}, whose replacement a stopped run never finished")
    if removed:
        echo(
            f"note: removed {len(removed)} unfinished file(s) a stopped run left in {output_dir}: {', '.join(removed)}"
        )


def run_status_line(status: str) -> str:
    """The first line of NAME.toml: a TOML comment, so the file still loads with --config_file."""
    return f"# loracraft run {status} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n"


RUNNING = "running: if this line stays, the run did not finish"
