"""A folder of files that appears whole or not at all, with a manifest of checksums.

`write_state_folder` writes every file into a hidden staging folder beside the target, then the
manifest (each file's size and SHA-256) last, then swaps the staging folder in by renames. A kill at any
moment leaves either the old folder or the new one complete under the target's name, except between
the two renames of a replacement, when the old one waits under `.NAME.old` and the next run's start puts
it back (`output_folder.clean_stale_files`). A folder being removed goes to `.NAME.removed` first. `verify_state_folder` checks a folder against its manifest:
a folder without one was never finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from loracraft.errors import UserError

MANIFEST = "manifest.json"
STATE_FORMAT = 1
STAGING_SUFFIX = ".partial"
REPLACED_SUFFIX = ".old"
REMOVED_SUFFIX = ".removed"


def staging_path(target: Path) -> Path:
    return target.parent / f".{target.name}{STAGING_SUFFIX}"


def replaced_path(target: Path) -> Path:
    return target.parent / f".{target.name}{REPLACED_SUFFIX}"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    # A rename is only as durable as the data behind it; directories cannot be opened on Windows.
    if path.is_dir() and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_state_folder(target: Path, writers: Mapping[str, Callable[[Path], None]]) -> None:
    """Create `target` holding one file per `writers` entry (name -> function writing that path), plus
    the manifest; an existing `target` is replaced only once the new folder is complete."""
    staging = staging_path(target)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        files = {}
        for name, write in writers.items():
            path = staging / name
            write(path)
            _fsync(path)
            files[name] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        manifest = staging / MANIFEST
        manifest.write_text(json.dumps({"format": STATE_FORMAT, "files": files}, indent=1), encoding="utf-8")
        _fsync(manifest)
        _fsync(staging)
        _swap_in(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
    else:
        old = replaced_path(target)
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    _fsync(target.parent)


def removed_path(target: Path) -> Path:
    return target.parent / f".{target.name}{REMOVED_SUFFIX}"


def remove_state_folder(target: Path) -> None:
    """Remove a state folder: renamed to a hidden name first, so a removal cut short never leaves half a
    state under a state's name (the next run's start sweeps the hidden one away)."""
    doomed = removed_path(target)
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(target, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def verify_state_folder(folder: Path, flag: str) -> None:
    """A UserError naming what is wrong unless `folder` is a complete state whose files match the
    manifest. `flag` names where the folder came from in messages (e.g. "--resume")."""
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such state folder")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserError(
            f"{flag} {folder}: this state is incomplete (no {MANIFEST}: its save was cut off); resume from "
            "an older state, or delete it"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        version = manifest["format"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{flag} {folder}: {MANIFEST} is damaged ({error}); resume from another state"
        ) from None
    if version != STATE_FORMAT:
        raise UserError(
            f"{flag} {folder}: a state of format {version}, this loracraft reads format {STATE_FORMAT}; "
            "resume it with the loracraft that saved it"
        )
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{flag} {folder}: {name} is missing; this state cannot be resumed")
        if path.stat().st_size != expected["bytes"] or file_digest(path) != expected["sha256"]:
            raise UserError(
                f"{flag} {folder}: {name} does not match its checksum (the file was changed or damaged); "
                "resume from another state"
            )
