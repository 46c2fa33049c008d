"""Atomic file writes: a reader never sees half a file, and a crash never destroys the old one."""

import glob
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it is renamed over `target`.

    The temporary file lives in the same folder so the final `os.replace` is a rename on one file
    system (atomic on POSIX and Windows). On any exception the temporary file is removed and the
    previous `target`, if any, is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # The data reaches the disk before the rename makes it the file: after a power cut the old file
        # or the new one is there, never an empty one under the final name.
        with tmp.open("rb+") as written:
            os.fsync(written.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def leftover_temp_files(target: str | os.PathLike) -> list[Path]:
    """The temporary files `atomic_path` made for `target` that were never renamed (a killed writer's)."""
    target = Path(target)
    return sorted(target.parent.glob(f".{glob.escape(target.name)}.*.tmp"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and move the result over `target` atomically."""
    with atomic_path(target) as tmp:
        write(tmp)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
