"""A tool's progress in its job's progress file, so the job page draws a bar for a long tool job.

The worker names the job's progress file in LORACRAFT_PROGRESS_FILE when it starts a tool job; a tool
that counts its work (captioning a folder: images) appends `{"event": "tool_progress", "done": N,
"total": M, "unit": "images"}` lines to it. Outside a job the variable is unset and nothing is written.
Lines are appended whole and at most about once a second, so a reader never sees half a line for long.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PROGRESS_FILE_VARIABLE = "LORACRAFT_PROGRESS_FILE"
_MIN_INTERVAL_S = 1.0


class ToolProgress:
    """Counts a tool's work into the job's progress file (when it runs as a job)."""

    def __init__(self, total: int, unit: str) -> None:
        named = os.environ.get(PROGRESS_FILE_VARIABLE)
        self.path = Path(named) if named else None
        self.total, self.unit = total, unit
        self.done = 0
        self._written_at = 0.0
        self._write(force=True)

    def advance(self, count: int = 1) -> None:
        self.done += count
        self._write(force=self.done >= self.total)

    def _write(self, force: bool) -> None:
        if self.path is None or (not force and time.monotonic() - self._written_at < _MIN_INTERVAL_S):
            return
        self._written_at = time.monotonic()
        event = {"event": "tool_progress", "done": self.done, "total": self.total, "unit": self.unit}
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(event) + "\n")
