"""What to tell a user whose file or folder cannot be read: the cause in words, and the fix.

Scanning folders, reading captions and opening images meet the same few causes a user can make: a
symbolic link that points at itself or at something that is gone, and permissions that keep the user
out. Each cause gets its fix here, so every message says the same thing for the same cause. Python's
own text (`[Errno 13] Permission denied: '/path'`) repeats the path the message names already.
"""

import errno
from dataclasses import dataclass
from pathlib import Path

_NO_ACCESS = frozenset({errno.EACCES, errno.EPERM})
_ACCESS_ERRNOS = frozenset({errno.ELOOP, errno.ENOENT, *_NO_ACCESS})


@dataclass(frozen=True)
class FileProblem:
    reason: str
    fix: str


def is_access_error(err: BaseException) -> bool:
    """Whether `err` says the path cannot be reached (a broken link, no permission), rather than that its
    bytes are wrong: Pillow's "cannot identify image file" is an OSError too, without an errno."""
    return isinstance(err, OSError) and err.errno in _ACCESS_ERRNOS


def describe_os_error(err: OSError, path: Path, kind: str = "file") -> FileProblem:
    """The cause of `err` on `path` and its fix; `kind` ("file" or "folder") words the fix."""
    if err.errno == errno.ELOOP:
        return FileProblem("a symbolic link that leads back to itself", "remove the broken link")
    if err.errno == errno.ENOENT and path.is_symlink():
        return FileProblem(
            "a symbolic link to something that does not exist", "remove the broken link or restore its target"
        )
    if err.errno in _NO_ACCESS:
        mode = "u+rx" if kind == "folder" else "u+r"
        return FileProblem("permission denied", f"fix the {kind}'s permissions (e.g. chmod {mode})")
    return FileProblem(err.strerror or str(err), f"check the {kind} and the disk it is on")
