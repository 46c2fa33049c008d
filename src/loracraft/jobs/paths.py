"""Where loracraft keeps the user's data (the job queue and its job folders)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

QUEUE_FILE = "queue.sqlite"


def data_folder() -> Path:
    """$LORACRAFT_DATA, else the platform's place for an application's data: %LOCALAPPDATA%\\loracraft on
    Windows, $XDG_DATA_HOME/loracraft (~/.local/share/loracraft) elsewhere."""
    if chosen := os.environ.get("LORACRAFT_DATA"):
        return Path(chosen)
    if sys.platform == "win32" and (local := os.environ.get("LOCALAPPDATA")):
        return Path(local) / "loracraft"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "loracraft"


def default_queue_path() -> Path:
    return data_folder() / QUEUE_FILE
