"""One process per output folder: ``fastsrnn prepare/train/generate --out DIR`` hold a lock on DIR.

The lock is an advisory ``fcntl.flock`` on ``DIR/.fastsrnn.lock``: the kernel drops it when the
process ends however it ends (SIGKILL included), so a crash never leaves a stale lock behind,
and a second process asking for the same folder is refused at once with a message that names the
holder. The lock file stays in the folder; code that asks "is this folder empty?" ignores it
(:data:`LOCK_NAME`).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, Optional, Union

LOCK_NAME = ".fastsrnn.lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; the folder is then not locked
    fcntl = None


class OutputLocked(FileExistsError):
    """Another process holds the output folder."""


@contextlib.contextmanager
def locked_output(folder: Union[str, os.PathLike], what: str = "fastsrnn") -> Iterator[Path]:
    """Hold the lock on ``folder`` (created if missing) for the duration of the ``with`` block.

    what: the command, for the message a second process sees. Raises OutputLocked naming the
    folder and the holder (pid and command) when another process holds it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: --out must be a folder, and this is a file")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    f = open(path, "a+")
    try:
        holder = try_flock(f)
        if holder is not None:
            raise OutputLocked(f"{folder} is in use by {holder}; wait for it to finish, or choose another "
                               "output folder")
        write_holder(f, f"pid {os.getpid()} ({what}: {' '.join(sys.argv[:1] + sys.argv[1:4])})")
        yield folder
    finally:
        f.close()  # closing releases the flock


def try_flock(f) -> Optional[str]:
    """Take the exclusive flock of the open file ``f`` without waiting: None when taken (or where
    there is no flock), else the holder's line written in the file."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        f.seek(0)
        return f.read().strip() or "another process"


def wait_flock(f) -> None:
    """Wait for the exclusive flock of the open file ``f`` (no-op where there is no flock)."""
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def write_holder(f, line: str) -> None:
    """Replace the lock file's text by ``line``: who holds it, for whoever finds it held."""
    f.seek(0)
    f.truncate()
    f.write(line + "\n")
    f.flush()


def is_lock_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is an output folder's lock file (to ignore when listing a folder)."""
    return Path(path).name == LOCK_NAME
