"""The queue's SQLite table, and how a database made by an older loracraft gains the newer columns.

The table is created with the columns of the first release; each column added since is listed in
ADDED_COLUMNS and added by ALTER TABLE to any table that lacks it, a new one included, so every column is
defined once and an old queue keeps its jobs (an added column's default is what the old jobs were).
"""

from __future__ import annotations

import sqlite3

_FIRST_TABLE = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    position INTEGER NOT NULL UNIQUE,
    config_toml TEXT NOT NULL,
    workdir TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    output_name TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    exit_reason TEXT,
    exit_code INTEGER,
    pid INTEGER,
    pid_started REAL,
    worker_pid INTEGER,
    worker_started REAL,
    resume_next INTEGER NOT NULL DEFAULT 0
)
"""
ADDED_COLUMNS = {
    # A tool job's argv as JSON (tool_jobs.py); NULL: a training run, as every job before it was.
    "tool_argv": "TEXT DEFAULT NULL",
}
# The columns a Job is read from, in JobQueue._job's order.
JOB_COLUMNS = (
    "id, name, state, position, config_toml, output_dir, output_name, created_at, started_at, "
    "finished_at, exit_reason, pid, tool_argv"
)


def create_or_update_table(db: sqlite3.Connection) -> None:
    """Create the table, or add the columns it lacks; run inside a write transaction, so two processes
    opening one old queue at once add each column once."""
    db.execute(_FIRST_TABLE)
    present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for column, definition in ADDED_COLUMNS.items():
        if column not in present:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {definition}")
